"""The first self-contained assert of a HumanEval `check(candidate)` function.

Used where a prompt's docstring has no example we can check: the official suite's first
assert that calls `candidate` and needs nothing but the prompt's own definitions and the
builtins (not the loop variables or helpers of the test), rewritten to call the entry point
(`candidate(` -> `entry_point(`), without its message. This module does not run anything.
"""

from __future__ import annotations

import ast
import builtins
import copy

from mucode.data.python_source import parse_module


def first_check_assert(test_source: str, entry_point: str, prompt: str) -> str | None:
    """`assert <expr>` from `check` with the candidate renamed to `entry_point`, or None."""
    check = _check_function(test_source)
    if check is None or not check.args.args:
        return None
    candidate = check.args.args[0].arg
    known = set(dir(builtins)) | _top_level_names(prompt) | {entry_point}
    asserts = sorted(
        (node for node in ast.walk(check) if isinstance(node, ast.Assert)),
        key=lambda node: (node.lineno, node.col_offset),
    )
    for node in asserts:
        if candidate not in _loaded_names(node.test):
            continue
        renamed = _RenameName(candidate, entry_point).visit(copy.deepcopy(node.test))
        if not _loaded_names(renamed) - _stored_names(renamed) - known:
            return f"assert {ast.unparse(renamed)}"
    return None


def _check_function(test_source: str) -> ast.FunctionDef | None:
    tree = parse_module(test_source)
    if tree is None:
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            return node
    return None


def _top_level_names(prompt: str) -> set[str]:
    tree = parse_module(prompt)
    if tree is None:
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign):
            names.update(_stored_names(node))
    return names


def _loaded_names(node: ast.AST) -> set[str]:
    return {child.id for child in ast.walk(node) if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load)}


def _stored_names(node: ast.AST) -> set[str]:
    # Comprehension targets inside the assert are bound by the assert itself.
    return {child.id for child in ast.walk(node) if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store)}


class _RenameName(ast.NodeTransformer):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(id=self.new, ctx=node.ctx) if node.id == self.old else node
