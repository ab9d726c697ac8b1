"""The calculator evaluates arithmetic over a whitelist and never runs code."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from agentstream.agents.tools import calculator
from agentstream.agents.tools.calculator import (
    MAX_LENGTH,
    CalculationError,
    evaluate,
    format_number,
)
from agentstream.schemas import ToolRejected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("12 * 7 + 3", 87),
        ("(2+3)^2", 25),
        ("(2+3)**2", 25),
        ("2 ^ 3 * 2", 16),  # ^ is power, with power's precedence
        ("-5 + 3", -2),
        ("--4", 4),
        ("7 // 2", 3),
        ("7 % 3", 1),
        ("1 / 4", 0.25),
        ("sqrt(144)", 12.0),
        ("abs(-3) + max(1, 2, 3) - min(4, 5)", 2),
        ("round(2.567, 2)", 2.57),
        ("log(e)", 1.0),
        ("2 * pi", 2 * math.pi),
        ("1200 * 3", 3600),
        ("6 \u00d7 7", 42),
        ("10 \u00f7 4", 2.5),
    ],
)
def test_evaluates_arithmetic(expression: str, expected: float) -> None:
    assert evaluate(expression) == pytest.approx(expected)


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "__import__('os').system('echo pwned')",
        "os.system('ls')",
        "open('/etc/passwd')",
        "x + 1",
        "(1).__class__",
        "[1, 2][0]",
        "'a' * 3",
        "lambda: 1",
        "1 if 1 else 2",
        "sqrt(x=4)",
        "True + 1",
        "1 < 2",
        "1 & 3",
        "exec('1')",
        "eval('1')",
    ],
)
def test_rejects_everything_but_arithmetic(expression: str) -> None:
    with pytest.raises(CalculationError):
        evaluate(expression)


def test_source_has_no_eval() -> None:
    source = Path(calculator.__file__).read_text()
    assert not re.search(r"(?<![\w.])(eval|exec|compile|__import__)\(", source)


def test_never_calls_eval_or_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the calculator must not eval")

    # Module globals shadow builtins: any eval/exec/compile in the module now fails.
    for name in ("eval", "exec", "compile", "__import__"):
        monkeypatch.setattr(calculator, name, forbidden, raising=False)
    assert evaluate("(1 + 2) * 3") == 9
    with pytest.raises(CalculationError):
        evaluate("__import__('os')")


@pytest.mark.parametrize(
    "expression", ["9**9**9", "2 ** 100000", "10 ** 5000", "(10**1000) * (10**1000) * (10**1000)"]
)
def test_huge_results_fail_fast(expression: str) -> None:
    with pytest.raises(CalculationError, match=r"too large|exponent"):
        evaluate(expression)


def test_float_overflow_is_an_error() -> None:
    with pytest.raises(CalculationError, match="too large"):
        evaluate("10.0 ** 400")


def test_long_expressions_are_refused() -> None:
    with pytest.raises(CalculationError, match="longer than"):
        evaluate("1+" * MAX_LENGTH + "1")


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("sqrt(-1)", "cannot compute"),
        ("(-8) ** 0.5", "not a real number"),
        ("", "empty"),
        ("2 +", "not an arithmetic expression"),
    ],
)
def test_errors_say_why(expression: str, message: str) -> None:
    with pytest.raises(CalculationError, match=message):
        evaluate(expression)


def test_errors_are_tool_rejections() -> None:
    assert issubclass(CalculationError, ToolRejected)


@pytest.mark.parametrize(
    ("value", "text"), [(3600, "3600"), (3600.0, "3600"), (2.5, "2.5"), (1 / 3, "0.333333333333")]
)
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text
