"""The code a stage runs, reduced to one digest that goes into its cache key and manifests.

`stage_code(module)` walks the imports of a stage's module statically (`ast`), transitively,
over the project's packages, also imports inside functions and import paths written as
strings (`"package.module:Name"`), and hashes every module reached,
with the parent packages Python runs on import. The sandbox worker runs as its own program
in a subprocess, so reaching any of its modules includes all of them. Each module is hashed
as the dump of its syntax tree: comments and formatting do not count, every statement and
docstring does (a stage whose comment changed stays cached; one whose logic changed does
not). A tree dump differs across Python minor versions, so a new interpreter recomputes too.
Digests are computed once per process.

It does not see third-party library versions, non-Python files the code reads (accelerate
YAMLs, the sandbox Dockerfile), or imports by a computed name; `COMPUTED_IMPORTS` lists the
reviewed ones and a test fails when a new one appears.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import functools
import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every package of the project: pyproject's `packages` (a test keeps the two equal).
PROJECT_PACKAGES = ("mucode", "mucode.sandbox", "mucode.sandbox.worker", "mucode.engines", "mucode.data",
                    "mucode.tasks", "mucode.flows")
# Packages run as a program of their own (not through the host's imports): hashed whole.
SUBPROCESS_PACKAGES = ("mucode.sandbox.worker",)
# Modules that import by a computed name, and why the walk may ignore it.
COMPUTED_IMPORTS = {
    "mucode.tasks": "the stage registry; flows use it, a stage imports what it runs by name",
    "mucode.sandbox.worker.main": "preloads standard-library modules by name; the worker is hashed whole anyway",
}
WHOLE_PROJECT = "mucode (all modules)"


@dataclass(frozen=True)
class CodeDigest:
    """sha256 over (module name, syntax-tree hash) of every module in `modules` (sorted)."""

    scope: str
    digest: str
    modules: tuple[str, ...]

    def manifest_entry(self) -> dict[str, Any]:
        return {"scope": self.scope, "digest": self.digest, "modules": list(self.modules)}


@functools.lru_cache(maxsize=1)
def project_modules() -> dict[str, Path]:
    """Module name → source file of every module in PROJECT_PACKAGES, wherever they are installed."""
    modules = {}
    for package in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"cannot find the project package {package}: reinstall mucode (pip install -e .)")
        for path in sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _import_call_name(node: ast.Call) -> str:
    function = node.func
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")


def referenced_names(tree: ast.AST, module: str, path: Path) -> tuple[set[str], bool]:
    """Module names `tree` may import (a superset), and whether it imports by a computed name."""
    names: set[str] = set()
    computed = False
    package = _package_of(module, path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from package import module`
        elif isinstance(node, ast.Call) and _import_call_name(node) in ("import_module", "__import__") and node.args:
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                names.add(argument.value)
            else:
                computed = True
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ":" in node.value:
            names.add(node.value.partition(":")[0])  # "package.module:attribute" import paths
    return names, computed


@functools.lru_cache(maxsize=None)
def parsed_module(module: str, path: Path) -> tuple[str, frozenset[str], bool]:
    """(syntax-tree sha256, project modules it references, imports by a computed name) of one file."""
    source = path.read_bytes()
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError:  # it cannot run either; its bytes still name it
        return hashlib.sha256(source).hexdigest(), frozenset(), False
    names, computed = referenced_names(tree, module, path)
    known = project_modules()
    reached = set()
    for name in names | {module}:  # with the module's own parent packages, which run first
        parts = name.split(".")
        reached.update(prefix for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if prefix in known)
    reached.discard(module)
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest(), frozenset(reached), computed


def _module_file(module: str) -> Path:
    known = project_modules()
    if module in known:
        return known[module]
    loaded = sys.modules.get(module)
    if loaded is None or not getattr(loaded, "__file__", None):
        raise ImportError(f"cannot hash the code of {module}: it is not an imported module with a source file")
    return Path(loaded.__file__)


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def code_of(roots: tuple[str, ...], scope: str) -> CodeDigest:
    """The digest of `roots` and every project module they reach."""
    known = project_modules()
    pending, seen = list(roots), set(roots)
    while pending:
        module = pending.pop()
        reached = set(parsed_module(module, _module_file(module))[1])
        for package in SUBPROCESS_PACKAGES:
            if any(_inside(name, package) for name in reached | {module}):
                reached.update(name for name in known if _inside(name, package))
        for name in reached - seen:
            seen.add(name)
            pending.append(name)
    hashes = [(name, parsed_module(name, _module_file(name))[0]) for name in sorted(seen)]
    digest = hashlib.sha256(json.dumps(hashes).encode()).hexdigest()
    return CodeDigest(scope=scope, digest=digest, modules=tuple(sorted(seen)))


@functools.lru_cache(maxsize=None)
def stage_code(module: str) -> CodeDigest:
    """The code a stage defined in `module` runs (its module and all it imports), once per process."""
    return code_of((module,), scope=module)


@functools.lru_cache(maxsize=1)
def project_code() -> CodeDigest:
    """Every project module: what an artifact written outside a stage names."""
    return code_of(tuple(project_modules()), scope=WHOLE_PROJECT)


def computed_import_modules() -> set[str]:
    """Project modules that import by a computed name (to compare with COMPUTED_IMPORTS)."""
    return {name for name, path in project_modules().items() if parsed_module(name, path)[2]}


# -- the code of the running stage, for artifact manifests -------------------------------------

_running: contextvars.ContextVar[CodeDigest | None] = contextvars.ContextVar("mucode_stage_code", default=None)


@contextlib.contextmanager
def running_code(code: CodeDigest) -> Iterator[None]:
    token = _running.set(code)
    try:
        yield
    finally:
        _running.reset(token)


def current_code() -> CodeDigest:
    """The running stage's code, else the whole project's (an artifact written outside a stage)."""
    return _running.get() or project_code()


def run_as_stage(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` with the artifacts it writes naming the code of fn's module.

    Module-level, so it also works in the fresh process of a GPU stage.
    """
    with running_code(stage_code(fn.__module__)):
        return fn(*args, **kwargs)
