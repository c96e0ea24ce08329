"""The code a saved checkpoint carries, so that ``trust_remote_code=True`` loads it without effzoo.

Transformers' dynamic-module loader copies a checkpoint's Python files into its module cache
and imports them as one flat package. It follows only same-folder relative imports
(``from .name import X``, found by a regular expression), so the export:

1. finds the effzoo modules the variant's classes need by walking, with ``ast``, the relative
   imports that run at import time, from the modules defining the config and model classes
   (the variant's modeling and config modules, the shared backbone and heads, the base config,
   the mechanism and its helpers: whatever they import, nothing listed by hand);
2. copies each into the checkpoint as one file named after its dotted path
   (``effzoo.attention.full`` -> ``effzoo_attention_full.py``), its relative imports rewritten
   to those names;
3. writes the entry module ``effzoo_remote.py`` that the config's ``auto_map`` names, which
   re-exports the config and model classes.

The registry (``variants.register_all``) makes the backbone's ``save_pretrained`` call
:func:`write_remote_code`; the copies inside a checkpoint are never registered, so a model loaded
from them saves as any remote-code model does (Transformers copies the code it was loaded from).
Relative imports made inside a function run only when it is called and are not followed; in the
copy such an import of a module outside the export becomes an absolute ``effzoo.…`` import.

This module imports nothing of effzoo at run time, so the registry can import it.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .variants import Variant

#: The package whose modules are exported: "effzoo".
PACKAGE = __name__.split(".")[0]

#: Module holding the shim that ``trust_remote_code=True`` loads from a saved checkpoint.
REMOTE_CODE_MODULE = "effzoo_remote"


def write_remote_code(directory: str | Path, variant: "Variant") -> Path:
    """Write the variant's code into ``directory``; returns the entry module ``effzoo_remote.py``.

    The files depend on torch and transformers only, so ``AutoModel.from_pretrained(directory,
    trust_remote_code=True)`` works where effzoo is not installed.
    """
    directory = Path(directory)
    classes = [variant.config_class, *variant.model_classes.values()]
    modules = exported_modules({cls.__module__ for cls in classes})
    for module in modules:
        (directory / f"{flat_name(module)}.py").write_bytes(_flattened_source(module, set(modules)))

    names_by_module: dict[str, list[str]] = {}
    for cls in classes:
        names_by_module.setdefault(cls.__module__, []).append(cls.__name__)
    imports = "".join(
        f"from .{flat_name(module)} import {', '.join(sorted(names))}\n"
        for module, names in sorted(names_by_module.items())
    )
    entry = directory / f"{REMOTE_CODE_MODULE}.py"
    entry.write_text(
        f'"""Classes of the effzoo `{variant.name}` variant, for trust_remote_code=True loading '
        f'(written by {__name__})."""\n\n'
        f"{imports}\n__all__ = {sorted(cls.__name__ for cls in classes)!r}\n"
    )
    return entry


def exported_modules(roots: set[str]) -> list[str]:
    """The ``roots`` and every effzoo module they import at import time, transitively, sorted."""
    found: set[str] = set()
    pending = sorted(roots)
    while pending:
        module = pending.pop()
        if module not in found:
            found.add(module)
            pending += [target for _, target, deferred in _relative_imports(module) if not deferred]
    return sorted(found)


def flat_name(module: str) -> str:
    """The file stem a module gets in the checkpoint: ``effzoo.attention.full`` -> ``effzoo_attention_full``."""
    return module.replace(".", "_")


def _source_file(module: str) -> tuple[Path, str]:
    """The module's source file and the package its relative imports start from."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not module.startswith(f"{PACKAGE}."):
        raise ValueError(f"Cannot export {module!r}: it is not a module of the {PACKAGE} package with a source file.")
    is_package = spec.submodule_search_locations is not None
    return Path(spec.origin), module if is_package else module.rpartition(".")[0]


def _relative_imports(module: str) -> list[tuple[ast.ImportFrom, str, bool]]:
    """Each relative import of ``module``: its node, the absolute module it names, and whether it is
    deferred (made inside a function, so it runs only when that function is called)."""
    path, package = _source_file(module)
    tree = ast.parse(path.read_bytes(), filename=str(path))
    in_functions = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
    }
    return [
        (node, importlib.util.resolve_name("." * node.level + (node.module or ""), package), id(node) in in_functions)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]


def _flattened_source(module: str, exported: set[str]) -> bytes:
    """The module's source with each relative import rewritten: ``from .<flat name> import …`` for an
    exported module, ``from effzoo.<module> import …`` (absolute) for any other one.

    Statements are replaced in place (by their ``ast`` positions, which count bytes), so the rest
    of the file, comments and docstrings included, stays as it is.
    """
    path, _ = _source_file(module)
    lines = path.read_bytes().splitlines(keepends=True)
    imports = sorted(_relative_imports(module), key=lambda item: (item[0].lineno, item[0].col_offset))
    for node, target, _ in reversed(imports):  # from the end, so that earlier positions stay valid
        _refuse_submodule_import(module, node, target)
        source = f".{flat_name(target)}" if target in exported else target
        names = ", ".join(alias.name + (f" as {alias.asname}" if alias.asname else "") for alias in node.names)
        first, last = node.lineno - 1, node.end_lineno - 1
        statement = f"from {source} import {names}".encode()
        lines[first : last + 1] = [lines[first][: node.col_offset] + statement + lines[last][node.end_col_offset :]]
    header = f"# {module}, exported by {__name__} for trust_remote_code=True loading; edit the source, not this copy.\n"
    return header.encode() + b"".join(lines)


def _refuse_submodule_import(module: str, node: ast.ImportFrom, target: str) -> None:
    """Raise for ``from . import submodule``: Transformers' loader finds only ``from .name import``
    lines, so the flat copy could not import a module object; import the names instead."""
    if importlib.util.find_spec(target).submodule_search_locations is None:
        return  # a module, not a package: its names cannot be submodules
    for alias in node.names:
        if importlib.util.find_spec(f"{target}.{alias.name}") is not None:
            raise ValueError(
                f"Cannot export {module!r}: line {node.lineno} imports the module {target}.{alias.name} itself, "
                f"which trust_remote_code=True loading cannot follow. Write `from .{alias.name} import <names>` instead."
            )
