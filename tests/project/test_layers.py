"""The package's layering rule (written in ``joblib_fast/__init__.py``):
imports point down the layers, never up, never in a cycle, and never at
another module's private names.  Read from the source files (AST for
Python, import lines for Cython), not from the installed copy."""
from __future__ import annotations

import ast
import os
import re

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "joblib_fast")

# Lowest first.  A module may import modules of its own layer or below;
# longest prefix wins (``backends.processes.worker`` is in the processes
# layer).
LAYERS = [
    ("_cpu", "_gc", "_progress", "_args", "errors"),
    ("_context",),
    ("_threads",),
    ("_native_threads",),
    ("_core", "_kernels"),
    ("backends.native",),
    ("_push",),
    ("backends.base",),
    ("backends.user", "backends.processes", "backends.dask"),
    ("backends",),
    ("config",),
    ("_run",),
    ("parallel", "joblib_backend"),
    ("",),  # joblib_fast/__init__.py
]

# The one import that points up, inside a function: SequentialBackend's
# nested backend is "whatever backend is active here", which only config
# can tell (as in joblib).
ALLOWED_UPWARD = {("backends.base", "config")}


def _module_files():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith((".py", ".pyx")):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, PACKAGE)
                mod = rel.rsplit(".", 1)[0].replace(os.sep, ".")
                if mod.endswith("__init__"):
                    mod = mod[: -len("__init__")].rstrip(".")
                yield mod, path


def _resolve(module: str, level: int, name: str | None, is_pkg: bool) -> str:
    """The package-relative name of ``from <level dots><name> import``."""
    parts = module.split(".") if module else []
    if not is_pkg:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    if name:
        parts += name.split(".")
    return ".".join(parts)


def _imports(module: str, path: str):
    """(target module, imported names, at module level?) for every import
    of joblib_fast itself in ``path``."""
    is_pkg = path.endswith("__init__.py")
    source = open(path, encoding="utf-8").read()
    if path.endswith(".pyx"):
        for m in re.finditer(r"^\s*(?:from\s+(\.+)(\S*)\s+c?import\s+(.+)|"
                             r"import\s+joblib_fast\.(\S+))", source, re.M):
            if m.group(1):
                target = _resolve(module, len(m.group(1)), m.group(2), is_pkg)
                names = [n.strip() for n in m.group(3).split(",")]
                yield target, names, not m.group(0).startswith((" ", "\t"))
        return
    tree = ast.parse(source)
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = _resolve(module, node.level, node.module, is_pkg)
            elif node.module and node.module.startswith("joblib_fast"):
                target = node.module[len("joblib_fast"):].lstrip(".")
            else:
                continue
            yield target, [a.name for a in node.names], id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("joblib_fast."):
                    yield (alias.name[len("joblib_fast."):], [],
                           id(node) in top)


def _layer(module: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if module == prefix or (prefix and module.startswith(prefix + ".")):
                if len(prefix) > best:
                    best, rank = len(prefix), i
    if rank is None:
        if module == "":
            return len(LAYERS) - 1
        raise AssertionError(f"joblib_fast.{module} is in no layer: add it "
                             "to LAYERS (and to the rule in __init__.py)")
    return rank


MODULES = dict(_module_files())


def _graph():
    graph = {}
    for module, path in MODULES.items():
        edges = graph.setdefault(module, [])
        for target, names, top in _imports(module, path):
            # `from . import x` imports the submodule x.
            submodules = [f"{target}.{n}".lstrip(".") for n in names
                          if f"{target}.{n}".lstrip(".") in MODULES]
            for dest in submodules or [target]:
                edges.append((dest, [] if submodules else names, top))
    return graph


GRAPH = _graph()


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = _layer(module)
    for dest, _, _ in GRAPH[module]:
        if dest == module or dest not in MODULES:
            continue
        if _layer(dest) > mine and (module, dest) not in ALLOWED_UPWARD:
            raise AssertionError(
                f"joblib_fast.{module} (layer {mine}) imports "
                f"joblib_fast.{dest} (layer {_layer(dest)}): imports must "
                "point down the layers")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_package_imports_are_at_module_level(module):
    """Function-level imports are for optional third-party packages; the
    only exception inside the package is ALLOWED_UPWARD."""
    for dest, _, top in GRAPH[module]:
        if not top and dest in MODULES and (module, dest) not in ALLOWED_UPWARD:
            raise AssertionError(
                f"joblib_fast.{module} imports joblib_fast.{dest} inside a "
                "function: import it at the top (or fix the layering)")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_from_other_modules(module):
    for dest, names, _ in GRAPH[module]:
        if dest == module or dest not in MODULES:
            continue
        private = [n for n in names if n.startswith("_") and n != "*"]
        assert not private, (
            f"joblib_fast.{module} imports private names {private} from "
            f"joblib_fast.{dest}: make them public or move them")


def test_no_import_cycle():
    edges = {m: {d for d, _, top in GRAPH[m] if d in MODULES and d != m
                 and (m, d) not in ALLOWED_UPWARD}
             for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(
                    f"joblib_fast.{x}".rstrip(".") for x in cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_the_rule_is_written_where_the_package_starts():
    doc = open(os.path.join(PACKAGE, "__init__.py"), encoding="utf-8").read()
    assert "Layers" in doc and "ALLOWED_UPWARD" not in doc
    for names in LAYERS[:-1]:
        for name in names:
            assert name in doc, f"{name} is missing from the rule in __init__"
