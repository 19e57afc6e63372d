"""The layering of kyc-sync's packages: imports go down, never up, and never in a cycle.

Layers, low to high. A module may import modules of its own package and of lower layers; the
packages sharing a layer do not import each other.

0. ``schemas``: the column contract, the Avro schema, the error roots;
   ``consumer`` (the package's ``__init__`` only, which imports nothing).
1. ``batcher``: offset ranges, the window policy, the latest-per-key reducer.
2. ``warehouse``: the writers (DuckDB, Snowflake), their tables, SQL and errors.
3. ``consumer.settings``: the settings (they validate identifiers with ``warehouse``).
4. ``consumer.decode``: Avro decoding and validation;
   ``consumer.source``: the Kafka clients, the dead-letter topic, topic checks.
5. ``consumer.run``: the run loop, retries, partition ownership, the ``Observer`` hooks.
6. ``consumer.telemetry``: the flush log line and the metrics, observers of the loop.
7. ``consumer.app``: the composition root (builds decoder, warehouse and loop from settings).
8. ``consumer.ops``: the operations commands (lag, check, replay, rebuild, ...).
9. ``consumer.cli``: the command line.

So, among others: ``schemas`` imports none of the others; ``batcher`` imports nothing of
``warehouse`` or ``consumer``; ``warehouse`` nothing of ``consumer``; ``consumer.run`` neither
``consumer.ops`` nor ``consumer.cli`` (nor the telemetry it reports to through ``Observer``);
``consumer.decode`` and ``consumer.source`` neither ``consumer.run`` nor ``consumer.ops``.

Every import counts: at module level, inside functions, under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "batcher", "warehouse", "consumer")

LAYERS: tuple[tuple[str, ...], ...] = (
    ("schemas", "consumer"),
    ("batcher",),
    ("warehouse",),
    ("consumer.settings",),
    ("consumer.decode", "consumer.source"),
    ("consumer.run",),
    ("consumer.telemetry",),
    ("consumer.app",),
    ("consumer.ops",),
    ("consumer.cli",),
)
INIT_ONLY = frozenset({"consumer"})
"""Components that are one package ``__init__``, not the package's modules."""

NAMED_RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "schemas imports none of the others": ("schemas", ("batcher", "warehouse", "consumer")),
    "batcher imports nothing of warehouse or consumer": ("batcher", ("warehouse", "consumer")),
    "warehouse imports nothing of consumer": ("warehouse", ("consumer",)),
    "consumer.run imports neither consumer.ops nor consumer.cli": (
        "consumer.run", ("consumer.ops", "consumer.cli", "consumer.app", "consumer.telemetry"),
    ),
    "consumer.decode imports neither consumer.run nor consumer.ops": (
        "consumer.decode", ("consumer.run", "consumer.ops", "consumer.source"),
    ),
    "consumer.source imports neither consumer.run nor consumer.ops": (
        "consumer.source", ("consumer.run", "consumer.ops", "consumer.decode"),
    ),
}


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name."""
    found = {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert found, f"no modules found under {ROOT}"
    return found


def imported_names(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every name an import statement of ``source`` brings in, anywhere in the module (in
    functions, under ``TYPE_CHECKING``), made absolute: ``import a.b`` gives ``a.b``, ``from a
    import b`` gives ``a.b`` (module ``a.b``, or name ``b`` of module ``a``: see ``resolve``)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            yield from (f"{base}.{alias.name}" for alias in node.names)


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours an imported name lives in (its longest known prefix), or None."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module -> the other modules of ours it imports."""
    known = modules()
    edges: dict[str, frozenset[str]] = {}
    for module, path in known.items():
        names = imported_names(path.read_text("utf-8"), module, path.name == "__init__.py")
        targets = {resolve(name, known) for name in names}
        edges[module] = frozenset(t for t in targets if t is not None and t != module)
    return edges


def component(module: str) -> str | None:
    best: str | None = None
    for layer in LAYERS:
        for name in layer:
            hit = module == name if name in INIT_ONLY else within(module, name)
            if hit and (best is None or len(name) > len(best)):
                best = name
    return best


def layer_of(component_name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if component_name in layer)


def cycles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            scc = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                scc.append(top)
                if top == node:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


# -- the checker itself ---------------------------------------------------------------------


def test_the_parser_sees_every_kind_of_import() -> None:
    source = '''
from __future__ import annotations
import os, batcher.window as w
from typing import TYPE_CHECKING
from consumer.run import loop
from . import sibling
from ..decode.decoder import Decoder
if TYPE_CHECKING:
    from warehouse.base import Batch
def late():
    import schemas.columns
    from consumer.ops import commands
'''
    known = dict.fromkeys((
        "batcher.window", "consumer.run", "consumer.run.loop", "consumer.run.sibling",
        "consumer.decode.decoder", "warehouse.base", "schemas.columns", "consumer.ops",
        "consumer.ops.commands",
    ), ROOT)
    names = imported_names(source, "consumer.run.loop", is_package=False)
    assert {resolve(name, known) for name in names} - {None} == {
        "batcher.window", "consumer.run.loop", "consumer.run.sibling", "consumer.decode.decoder",
        "warehouse.base", "schemas.columns", "consumer.ops.commands",
    }


def test_tarjan_finds_a_cycle() -> None:
    edges = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}),
             "d": frozenset({"a"})}
    assert cycles(edges) == [["a", "b", "c"]]


# -- the rules ------------------------------------------------------------------------------


def test_every_module_has_a_layer_and_every_layer_a_module() -> None:
    unplaced = sorted(m for m in modules() if component(m) is None)
    assert unplaced == [], f"place these modules in LAYERS: {unplaced}"
    used = {component(m) for m in modules()}
    empty = sorted(name for layer in LAYERS for name in layer if name not in used)
    assert empty == [], f"LAYERS names packages that have no module: {empty}"


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_go_down(module: str) -> None:
    mine = component(module)
    assert mine is not None
    upward = []
    for target in sorted(graph()[module]):
        theirs = component(target)
        assert theirs is not None
        if layer_of(theirs) > layer_of(mine) or (
            layer_of(theirs) == layer_of(mine) and theirs != mine
        ):
            upward.append(f"{target} ({theirs}, layer {layer_of(theirs)})")
    assert upward == [], f"{module} ({mine}, layer {layer_of(mine)}) imports {upward}"


@pytest.mark.parametrize("rule", sorted(NAMED_RULES))
def test_named_rule(rule: str) -> None:
    importer, forbidden = NAMED_RULES[rule]
    broken = sorted(
        f"{module} -> {target}"
        for module, targets in graph().items() if within(module, importer)
        for target in targets if any(within(target, f) for f in forbidden)
    )
    assert broken == []
