"""Imports point down the data path, never up and never in a circle.

Every module of the shipped package is parsed (``ast``: imports inside
functions count as much as those at the top) and each import between two
parts of siprecd becomes an edge between their *groups*: a subpackage
(``siprecd.sip``), a top-level module (``siprecd.numbers``), or the
command layer. A package's ``cli.py`` is a subcommand, an entry point
above every layer, so it belongs to the command layer with ``siprecd.cli``
and ``siprecd.clitools``; ``siprecd.testing`` holds doubles for tests and
is not part of the running node.

Checked: the layers of the data path import only layers below them in
LAYERS; the graph of all groups has no cycle; and the specific
directions ARCHITECTURE.md forbids never occur.
"""

import ast
import collections
from pathlib import Path

import siprecd

PACKAGE = Path(siprecd.__file__).parent

# The data path's layers, bottom first: each may import only those before it.
LAYERS = ("sip", "media", "asr", "redact", "storage", "siprec", "transcribe", "webhooks",
          "live", "export", "api")
COMMANDS = {"cli", "clitools"}
NOT_IN_NODE = {"testing"}
FORBIDDEN = {
    "sip": {"api", "storage", "transcribe", "media"},
    "media": {"api", "storage", "sip", "transcribe"},
    "siprec": {"api", "storage", "transcribe"},
    "asr": {"sip", "storage", "api", "transcribe", "redact"},
    "redact": {"storage", "webhooks", "api", "transcribe"},
    "storage": {"api", "webhooks", "transcribe", "redact"},
    "webhooks": {"api", "sip", "transcribe"},
    "live": {"api", "sip", "media", "siprec", "storage", "transcribe", "webhooks"},
    "simulator": {"testing"},
}


def _module_name(path, package=PACKAGE):
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group_of(module):
    """The group of a dotted module name inside siprecd, or None."""
    parts = module.split(".")
    if parts[0] != "siprecd" or len(parts) < 2:
        return None
    if parts[1] in COMMANDS or (len(parts) > 2 and parts[2] == "cli"):
        return "commands"
    return parts[1]


def imports_of(path, package=PACKAGE):
    """(line, dotted name) of every import in *path*, relative ones resolved."""
    module = _module_name(path, package)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:
                yield node.lineno, f"{name}.{alias.name}"


def group_edges(package=PACKAGE):
    """{(from group, to group): [where, ...]} over the shipped package."""
    edges = collections.defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        source = group_of(_module_name(path, package))
        if source is None or source in NOT_IN_NODE:
            continue
        for line, name in imports_of(path, package):
            target = group_of(name)
            # "from siprecd import __version__" names no group.
            if target is not None and target != source and (
                    target == "commands" or (package / target).exists()
                    or (package / f"{target}.py").exists()):
                where = f"{_module_name(path, package)}:{line}"
                if where not in edges[(source, target)]:
                    edges[(source, target)].append(where)
    return edges


def _shown(edges, pairs):
    return "\n".join(f"{a} -> {b} ({', '.join(edges[(a, b)][:3])})" for a, b in pairs)


def test_the_data_path_layers_import_only_downward():
    edges = group_edges()
    upward = [(a, b) for a, b in edges if a in LAYERS and b in LAYERS
              and LAYERS.index(b) > LAYERS.index(a)]
    assert not upward, "imports up the data path:\n" + _shown(edges, upward)


def test_no_layer_imports_a_command_or_the_node_assembly():
    edges = group_edges()
    top = {"commands", "tap", "node", "metrics", "service"}
    wrong = [(a, b) for a, b in edges if b in top and a in LAYERS]
    assert not wrong, "layers importing what assembles or drives them:\n" + _shown(edges, wrong)


def test_the_directions_the_architecture_forbids():
    edges = group_edges()
    wrong = [(a, b) for a, b in edges if b in FORBIDDEN.get(a, ())]
    assert not wrong, _shown(edges, wrong)


def test_the_groups_form_no_cycle():
    edges = group_edges()
    graph = collections.defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles between groups:\n" + "\n".join(
        " -> ".join(c) + "  (" + "; ".join(
            edges[(c[i], c[i + 1])][0] for i in range(len(c) - 1)) + ")" for c in cycles)


def test_the_checker_sees_late_and_relative_imports(tmp_path):
    # A layer reaching up from inside a function, and a relative import of
    # a command, are both found: the checker itself can fail.
    package = tmp_path / "siprecd"
    for folder in ("sip", "api", "storage"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "clitools.py").write_text("")
    (package / "sip" / "late.py").write_text(
        "def handler():\n    from siprecd.api import app\n    return app\n")
    (package / "storage" / "relative.py").write_text("from .. import clitools\n")
    edges = group_edges(package)
    assert edges[("sip", "api")] == ["siprecd.sip.late:2"]
    assert edges[("storage", "commands")] == ["siprecd.storage.relative:1"]
    assert group_of("siprecd.storage.cli") == "commands"
