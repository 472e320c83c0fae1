"""The package as installed from a wheel: twistd finds the plugin, the
wheel ships neither dropin.cache nor a twisted/plugins/__init__.py, and it
holds no test harness: no ``harness/``, only the public doubles in
``siprecd/testing/``, and no shipped module imports a test-only package."""

import ast
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

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
