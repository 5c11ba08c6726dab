"""The package's shape, checked: data flows one way, no cycles, small modules, a true map.

The layers, lowest first (a module may import its own package and anything lower;
packages of one layer do not import each other):

    0  errors, backoff, config, config_table, redact what everything may use
    1  source/   convert/                            the two inputs: rows, and records -> JSON
    2  objects/                                      records -> application objects (graph, parts, place)
    3  documents                                     converted records and objects -> actions
    4  sink, transforms/                             the protocol actions go through; shipped transforms
    5  opensearch/                                   OpenSearch's client and mapping dialect (below
                                                     es/: the Elasticsearch sink drives OpenSearch
                                                     through them, so the sink is written once)
    5  es/                                           the sink (Elasticsearch, and OpenSearch)
    6  observe/                                      metrics, poller, HTTP endpoints
    7  pipeline/                                     the service
    8  ops/                                          operator commands
    9  cli, __main__, the package root               entry points
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "esindexer"

LAYERS = {
    "errors": 0, "backoff": 0, "config": 0, "config_table": 0, "redact": 0,
    "source": 1, "convert": 1, "objects": 2,
    "documents": 3, "sink": 4, "transforms": 4,
    # OpenSearch is driven by the es/ sink through its own client and mapping dialect:
    # a layer below es/, not beside it, so that es/ may use it and no sink code is written twice.
    "opensearch": 5, "es": 6, "observe": 7, "pipeline": 8, "ops": 9,
    "cli": 10, "__main__": 10, "": 10,
}
MAX_LINES = 400
#: The one exception, and why: the pure-Python pre-scan is a single loop over opcodes
#: (a function call per opcode would halve its speed), the reference the C twin is
#: checked against; its tables and helpers already live in convert/opcodes.py.
LONGER = {"esindexer.convert.scan": 470}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("esindexer", *parts)).removesuffix(".__init__")
        found[name] = path
    return found


MODULES = _modules()


def _imports(path: pathlib.Path) -> set[str]:
    """esindexer modules imported by ``path`` (at any depth of the file)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "esindexer":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                out.add(candidate if candidate in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "esindexer")
    return {name for name in out if name in MODULES}


def _part(module: str) -> str:
    """The layer key of a module: its subpackage or top-level module name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    assert {_part(m) for m in MODULES} <= set(LAYERS), {_part(m) for m in MODULES} - set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_upwards_or_sideways(module):
    mine = _part(module)
    for target in _imports(MODULES[module]):
        theirs = _part(target)
        if theirs == mine or target == "esindexer" and module == "esindexer.observe.metrics":
            continue  # its own package; metrics reads __version__ from the root
        if LAYERS[theirs] == LAYERS[mine] in (0, 10):
            continue  # the base modules use each other, and so do the entry points
        assert LAYERS[theirs] < LAYERS[mine], f"{module} (layer {LAYERS[mine]}) imports {target} (layer {LAYERS[theirs]})"


def test_no_import_cycles():
    # The root only names the public API, loaded lazily (no import runs at its import).
    graph = {m: _imports(p) - {m, "esindexer"} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state and module != "esindexer":  # the root only names, lazily
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module):
    lines = len(MODULES[module].read_text().splitlines())
    limit = LONGER.get(module, MAX_LINES)
    assert lines <= limit, f"{module} has {lines} lines; split it by job"


def test_the_architecture_table_maps_one_to_one_onto_the_package():
    """docs/architecture.md's table names each folder and top-level module exactly once."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("| step |"):]
    table = table[: table.index("\n\n")]
    named = re.findall(r"`esindexer/([a-z_]+/?)`", table)
    actual = sorted({p.name + "/" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
                    | {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")})
    assert sorted(named) == actual
