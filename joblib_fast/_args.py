"""Parsing of ``Parallel``'s size and count arguments (no package imports).

Used by ``parallel`` to check arguments when a ``Parallel`` is made, and by
``_run`` to evaluate ``pre_dispatch`` with each call's effective n_jobs.
"""
from __future__ import annotations

import ast
import functools
import math
import sys
from numbers import Integral, Real
from typing import Any

VALID_RETURN_AS = ("list", "generator", "generator_unordered")
_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def memstr_to_bytes(text: Any, name: str = "max_nbytes") -> int | float | None:
    """``"1M"`` -> 1048576; numbers pass through (joblib compares
    ``a.nbytes > max_nbytes``: a float such as ``1e6`` is fine, and a
    negative number memmaps every array); None stays None."""
    if text is None:
        return None
    if isinstance(text, Real) and not isinstance(text, bool):
        if text != text:
            raise ValueError(f"{name} must be a number of bytes, got nan")
        return int(text) if isinstance(text, Integral) else float(text)
    if isinstance(text, str):
        value = text.strip().lower()
        unit = 1
        if value and value[-1] in _SIZE_UNITS:
            unit = _SIZE_UNITS[value[-1]]
            value = value[:-1]
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if number >= 0:
            return int(number * unit)
    raise ValueError(
        f"{name} must be None, a number of bytes or a string like "
        f"'1M', '200k', '2G'; got {text!r}")


def eval_pre_dispatch(value: Any, n_jobs: int) -> int:
    """``'all'``, a positive int, or an expression of ``n_jobs``."""
    if isinstance(value, str):
        if value.strip() == "all":
            return sys.maxsize
        try:
            number = _eval_expr(_parsed(value.strip()), n_jobs)
        except (SyntaxError, ValueError, ZeroDivisionError, OverflowError,
                RecursionError, MemoryError) as exc:
            raise ValueError(
                "pre_dispatch must be 'all', a positive integer or an "
                f"expression such as '2*n_jobs'; got {_short(value)} ({exc})"
            ) from None
    elif isinstance(value, Real) and not isinstance(value, bool):
        number = value
    else:
        raise ValueError(
            "pre_dispatch must be 'all', a positive integer or an "
            f"expression such as '2*n_jobs'; got {value!r}")
    if not number >= 1:  # also nan
        raise ValueError(f"pre_dispatch must be at least 1, got {value!r}")
    if number == math.inf:
        raise ValueError(f"pre_dispatch must be finite, got {value!r}")
    return min(int(number), sys.maxsize)


@functools.lru_cache(maxsize=64)
def _parsed(text: str) -> ast.AST:
    """The expression's tree, parsed once per text (every call and every
    Parallel() evaluates it; parsing costs more than a short call's
    dispatch).  Read only."""
    return ast.parse(text, mode="eval").body


def _short(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(value)} characters)"


def _eval_expr(node: ast.AST, n_jobs: int) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Name) and node.id == "n_jobs":
        return n_jobs
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _eval_expr(node.operand, n_jobs)
        return operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.BinOp):
        left = _eval_expr(node.left, n_jobs)
        right = _eval_expr(node.right, n_jobs)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right
        if isinstance(node.op, ast.FloorDiv):
            return left // right
    raise ValueError("only numbers, n_jobs and + - * / are allowed")


def known_length(iterable: Any) -> int:
    """len(iterable) for sized inputs (lists, tuples), else -1."""
    if isinstance(iterable, (list, tuple)):
        return len(iterable)
    return -1
