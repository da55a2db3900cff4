"""Parsing dataset code without noise: `ast.parse` that returns None on a syntax error.

Old dataset code (MBPP) has invalid string escapes (a backslash before a dot) that Python warns about on every
parse; those warnings say nothing about our loaders, so they are silenced here. This module
does not run code.
"""

from __future__ import annotations

import ast
import warnings


def parse_module(source: str) -> ast.Module | None:
    """The module AST of `source`, or None when it is not valid Python."""
    parsed = _parse(source, "exec")
    return parsed if isinstance(parsed, ast.Module) else None


def parse_expression(source: str) -> ast.expr | None:
    """The expression AST of `source` (surrounding blanks ignored), or None if it is not one."""
    parsed = _parse(source.strip(), "eval")
    return parsed.body if isinstance(parsed, ast.Expression) else None


def _parse(source: str, mode: str) -> ast.AST | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return ast.parse(source, mode=mode)
        except (SyntaxError, ValueError):
            return None
