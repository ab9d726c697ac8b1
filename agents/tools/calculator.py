"""A safe arithmetic evaluator: an ``ast`` walk over a whitelist, never ``eval``.

The expression is parsed with :func:`ast.parse` and only these nodes are evaluated: numbers,
``+ - * / // % **``, unary ``-``/``+``, parentheses, the constants ``pi`` and ``e``, and the
functions ``sqrt abs round min max log``. Anything else (names, attributes, subscripts,
strings, calls of other functions, keyword arguments) is refused with
:class:`CalculationError`, which is a :class:`~schemas.ToolRejected`, so the model gets a
clear error back. Work is bounded: the expression length, the exponent, and the size of
every intermediate integer are limited, so ``9**9**9`` fails fast instead of eating a CPU.
``^`` means power, as people write it (``(2+3)^2`` is 25).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from agentstream.schemas import ToolRejected

__all__ = ["MAX_EXPONENT", "MAX_LENGTH", "CalculationError", "evaluate", "format_number"]

MAX_LENGTH = 200
MAX_EXPONENT = 1000
_MAX_INT_BITS = 4096

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


class CalculationError(ToolRejected):
    """The expression is not allowed or cannot be computed."""


def evaluate(expression: str) -> Number:
    """The value of ``expression``; :class:`CalculationError` says why when there is none."""
    text = expression.strip().replace("^", "**").replace("\u00d7", "*").replace("\u00f7", "/")
    if not text:
        raise CalculationError("empty expression")
    if len(text) > MAX_LENGTH:
        raise CalculationError(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculationError(f"not an arithmetic expression: {expression!r}") from None
    try:
        return _check(_eval(tree.body))
    except ZeroDivisionError:
        raise CalculationError("division by zero") from None
    except OverflowError:
        raise CalculationError("result too large") from None
    except (ValueError, TypeError) as exc:
        raise CalculationError(f"cannot compute {expression!r}: {exc}") from None


def format_number(value: Number) -> str:
    """``value`` as a person would write it: ``3600``, ``2.5``, ``0.333333333333``."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.12g}"
    return str(value)


def _check(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise CalculationError("result too large")
    return value


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculationError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalculationError(f"unknown name {node.id!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _check(_power(left, right))
        op = _BINARY.get(type(node.op))
        if op is None:
            raise CalculationError(f"operator {type(node.op).__name__} is not allowed")
        return _check(op(left, right))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            raise CalculationError(
                f"only the functions {', '.join(sorted(_FUNCTIONS))} are allowed"
            )
        if node.keywords:
            raise CalculationError("keyword arguments are not allowed")
        if not node.args or len(node.args) > 10:
            raise CalculationError(f"{node.func.id} takes between 1 and 10 arguments")
        args = [_eval(arg) for arg in node.args]
        if node.func.id == "round" and len(args) == 2 and not isinstance(args[1], int):
            raise CalculationError("round's second argument must be an integer")
        return _check(_FUNCTIONS[node.func.id](*args))
    raise CalculationError(f"{type(node).__name__} is not allowed in an expression")


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculationError(f"exponent larger than {MAX_EXPONENT}")
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and abs(base) > 1
        and (abs(base).bit_length() - 1) * exponent > _MAX_INT_BITS
    ):
        raise CalculationError("result too large")
    result = base**exponent
    if isinstance(result, complex):
        raise CalculationError("the result is not a real number")
    return result
