"""The package as installed from a wheel: twistd finds the plugin, and the
wheel ships neither dropin.cache nor a twisted/plugins/__init__.py."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

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


def test_wheel_contents_and_plugin_discovery_from_a_fresh_install(tmp_path):
    wheel = build_wheel(tmp_path)
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
