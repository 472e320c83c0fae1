# Two commands do everything (see README.rst):
#   make run    set up a virtualenv and run the daemon with etc/siprecd.yaml
#   make test   install what the tests need (Debian packages too) and run them
# Other targets: make install, make deps, make bench, make clean.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= etc/siprecd.yaml
PYTEST_ARGS ?=

.PHONY: run test install deps bench clean check-config

# The project is installed editable in "compat" mode: that mode puts the
# source tree on sys.path, which is how twistd's plugin finder sees
# twisted/plugins/siprecd_plugin.py during development.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/twistd -n siprecd -c $(CONFIG)

check-config: install
	$(VENV)/bin/siprecd check-config -c $(CONFIG)

# Debian packages and services the tests use (needs root or sudo).
deps:
	bash scripts/test-deps

# The PostgreSQL cases of the storage tests need a real server: unless
# SIPRECD_TEST_POSTGRES_DSN names one, a throwaway server is started on
# 127.0.0.1 (scripts/test-postgres; data under /tmp, reused across runs).
test: deps install
	@dsn="$${SIPRECD_TEST_POSTGRES_DSN:-}"; \
	if [ -z "$$dsn" ]; then dsn="$$(bash scripts/test-postgres)" || exit 1; fi; \
	echo "PostgreSQL for the tests: $$dsn"; \
	SIPRECD_TEST_POSTGRES_DSN="$$dsn" $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	@for b in bench/*_bench; do [ -e "$$b" ] && $(PY) "$$b" || true; done

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -name dropin.cache -delete
