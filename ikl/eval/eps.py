"""The perturbation radius ε: exact parsing and a guard against truncated k/255 values.

AutoAttack's leaderboard radius for CIFAR L∞ is ε = 8/255 = 0.0313725…. The TRADES code uses
``epsilon=0.031`` and many scripts write 0.03 or 0.03137; each is a *different* threat model
(0.031 is 1.2 % smaller), so a result at 0.031 is not comparable to one at 8/255.

Choice (documented deviation from a plain float option): ``check_eps`` refuses, by default, a value
that looks like k/255 (k = 1..16) written with too few digits, namely one that

* equals k/255 rounded or truncated to the number of decimals the user typed (0.03, 0.031,
  0.0314, 0.03137) and is within 5 % of it (so 0.1 is not taken for a rounded 16/255), or
* lies within 1e-3 relative of k/255 (a float32 round trip, say),

without being exactly k/255. Pass ε as the string ``"8/255"`` (parsed exactly with
``fractions.Fraction``) or set ``allow_inexact_eps=true`` to evaluate at the typed value anyway.
"""

from __future__ import annotations

import math
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from fractions import Fraction

from ikl.errors import ConfigError

DENOMINATOR = 255
MAX_NUMERATOR = 16
RELATIVE_TOLERANCE = 1e-3
SHORTENED_TOLERANCE = 0.05


def parse_eps(value: str | float | int | Fraction) -> float:
    """ε as a float: ``"8/255"`` exactly (``float(Fraction(8, 255)) == 8 / 255``), ``"0.03137"``, numbers.

    Raises ``ConfigError`` for text that is not a number or fraction and for ε outside [0, 1].
    """
    if isinstance(value, bool):
        raise ConfigError(f"eps={value!r} is not a number; pass e.g. eps=8/255")
    try:
        exact = Fraction(value.replace(" ", "")) if isinstance(value, str) else Fraction(value)
    except (ValueError, ZeroDivisionError, TypeError, OverflowError) as exc:
        raise ConfigError(f"eps={value!r} is not a number or fraction; pass e.g. eps=8/255") from exc
    eps = float(exact)
    if not math.isfinite(eps) or not 0.0 <= eps <= 1.0:
        raise ConfigError(f"eps={value!r} is outside [0, 1] (inputs live in [0, 1]); pass e.g. eps=8/255")
    return eps


def _decimals(eps: float) -> int:
    exponent = Decimal(repr(eps)).as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def eps_looks_mistyped(eps: float) -> int | None:
    """The numerator k if ``eps`` looks like k/255 written inexactly (see module docstring), else None."""
    if eps <= 0 or any(eps == k / DENOMINATOR for k in range(1, MAX_NUMERATOR + 1)):
        return None
    typed = Decimal(repr(eps))
    quantum = Decimal(1).scaleb(-_decimals(eps))
    for k in sorted(range(1, MAX_NUMERATOR + 1), key=lambda k: abs(eps - k / DENOMINATOR)):
        relative = abs(eps - k / DENOMINATOR) / (k / DENOMINATOR)
        exact = Decimal(k) / Decimal(DENOMINATOR)
        shortened = {exact.quantize(quantum, ROUND_HALF_EVEN), exact.quantize(quantum, ROUND_DOWN)}
        if relative <= RELATIVE_TOLERANCE or (typed in shortened and relative <= SHORTENED_TOLERANCE):
            return k
    return None


def format_eps(eps: float) -> str:
    """``"8/255"`` when ε is exactly k/255 (any k), else the shortest decimal."""
    k = eps * DENOMINATOR
    if 0 < k < DENOMINATOR and k == round(k) and round(k) / DENOMINATOR == eps:
        return f"{round(k)}/{DENOMINATOR}"
    return repr(eps)


def check_eps(value: str | float | int | Fraction, *, allow_inexact: bool = False) -> float:
    """Parse ε and refuse a truncated k/255 unless ``allow_inexact`` (one ``ConfigError`` line)."""
    eps = parse_eps(value)
    k = eps_looks_mistyped(eps)
    if k is not None and not allow_inexact:
        raise ConfigError(
            f"eps={value} is not {k}/{DENOMINATOR}={k / DENOMINATOR:.7f}…; pass eps={k}/{DENOMINATOR} "
            "(a string) or set allow_inexact_eps=true"
        )
    return eps
