"""Run a siprecd command as if some packages were not installed.

    python -m harness.without psycopg,autobahn -- siprecd check-config -c FILE
    python -m harness.without @hidden.txt -- twistd -n siprecd -c FILE

The named top-level modules (comma-separated, or one per line in a file
given as ``@FILE``) cannot be imported: an import hook placed first on
``sys.meta_path`` answers them with ``ModuleNotFoundError`` exactly as
Python does for a package that is not there. Then the command runs in the
same process: ``siprecd`` (the console script), ``twistd``, or
``python -c CODE``. It is how the tests see siprecd with only its base
install, or without one optional extra, in the environment that has
everything.
"""

import importlib.abc
import sys

__all__ = ["Hide", "main"]


class Hide(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".", 1)[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def _names(text):
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return [name for name in text.split(",") if name]


def main(argv):
    hidden, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: python -m harness.without NAMES -- siprecd|twistd|-c ...")
    for name in _names(hidden):
        sys.modules.pop(name, None)
    sys.meta_path.insert(0, Hide(_names(hidden)))
    program, *args = command
    if program == "siprecd":
        from siprecd.cli import main as siprecd_main

        sys.argv = ["siprecd", *args]
        return siprecd_main(args)
    if program == "twistd":
        from twisted.scripts.twistd import run

        sys.argv = ["twistd", *args]
        return run()
    if program == "-c":
        sys.argv = ["-c", *args[1:]]
        exec(compile(args[0], "<harness.without>", "exec"), {"__name__": "__main__"})  # noqa: S102
        return 0
    raise SystemExit(f"unknown program {program!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
