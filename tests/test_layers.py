"""The package layers cleanly: each part imports only the parts below it, and no import circle exists.

Imports are read with ``ast`` from every module of effzoo, those inside functions included (an import
deferred into a function is still a dependency), those under ``if TYPE_CHECKING:`` excluded (they
never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import effzoo

PACKAGE_DIR = Path(effzoo.__file__).parent

#: The parts of effzoo in layers, lowest first: a part imports only from parts in lower layers.
LAYERS: list[set[str]] = [
    {"attention"},
    {"configs"},
    {"modeling"},
    {"remote_code"},
    {"variants"},
    {"arguments", "checkpoints", "corpora", "output_folders"},
    {"conversion"},
    {"hub"},
    {"training"},
    {"__init__"},
    {"bench"},
    {"cli"},
]
LAYER_OF = {part: index for index, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    parts = ["effzoo", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            continue
        yield node
        yield from _runtime_nodes(node)


def imported_modules(module: str) -> set[str]:
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            target = ".".join(part for part in (base, node.module or "") if part)
            candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in candidates if name in MODULES and name != module}
    return found


GRAPH = {module: imported_modules(module) for module in MODULES}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_every_part_has_a_layer():
    assert {part(module) for module in MODULES} == set(LAYER_OF)


def test_each_part_imports_only_the_parts_below_it():
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items() for target in targets
        if part(target) != part(module) and LAYER_OF[part(target)] >= LAYER_OF[part(module)]
    )
    assert not upward, "\n".join(upward)


def test_modeling_imports_nothing_above_it():
    above = {module for module in MODULES if LAYER_OF[part(module)] > LAYER_OF["modeling"]}
    assert not {target for module in MODULES if part(module) == "modeling" for target in GRAPH[module]} & above


def test_no_import_circle():
    index, low, on_stack, stack, circles = {}, {}, set(), [], []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while not component or member != module:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles, circles


def test_shared_attention_operations_know_no_mechanism():
    """``attention/ops`` lies below the mechanisms: nothing it reaches, directly or not, is one of them."""
    reached, todo = set(), [module for module in MODULES if module.startswith("effzoo.attention.ops")]
    while todo:
        for target in GRAPH[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    assert "effzoo.attention.base" not in reached, sorted(reached)


def test_the_graph_sees_imports():
    """The reader is not blind: known edges are found (a relative one, one inside a function)."""
    assert "effzoo.attention.base" in GRAPH["effzoo.attention.full"]
    assert "effzoo.attention.ops.layout" in GRAPH["effzoo.attention.local"]
    assert "effzoo.modeling.backbone" in GRAPH["effzoo.variants"]
    assert "effzoo" in GRAPH["effzoo.bench.harness"]  # `from .. import __version__` inside a function
