"""Quantities in manifests: CPU, memory and durations, parsed to integers.

- CPU is stored in millicores: ``"250m"`` → 250, ``"0.5"`` → 500, ``2`` → 2000.
- Memory is stored in bytes and uses Kubernetes suffixes: ``Ki Mi Gi Ti Pi Ei``
  (powers of 1024) and ``k M G T P E`` (powers of 1000); ``"1.5Gi"`` is fine
  and a fraction of a byte is rounded up, as Kubernetes does.
- Durations are stored in milliseconds and use Go's units ``ms s m h``
  (``"1m30s"``); a bare number means seconds.

Errors raise `QuantityError`, whose message describes the value but not the
field: the caller knows the field path and prefixes it.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal

__all__ = [
    "QuantityError",
    "format_cpu",
    "format_duration",
    "format_memory",
    "parse_cpu",
    "parse_duration",
    "parse_memory",
]

_INT64_MAX = 2**63 - 1

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
_MEMORY_UNITS = {**{u: 1024**e for u, e in _BINARY.items()}, **{u: 1000**e for u, e in _DECIMAL.items()}}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_MEMORY_RE = re.compile(rf"({_NUMBER})(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")
_LOOSE_MEMORY_RE = re.compile(rf"({_NUMBER})\s*([A-Za-z]+)")
# Common spellings from other tools (and "m", which means milli to
# Kubernetes: 64m of memory is 0.064 bytes, never what anyone meant).
_MEMORY_HINTS = {
    spelling: binary
    for binary in _BINARY
    for spelling in (binary[0].lower(), binary.lower(), binary[0].lower() + "b", binary.lower() + "b")
}

_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_DURATION_RE = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h))+")
_DURATION_PART_RE = re.compile(rf"({_NUMBER})(ms|s|m|h)")
_DURATION_HINTS = {
    **dict.fromkeys(("msec", "msecs", "millis", "millisecond", "milliseconds"), "ms"),
    **dict.fromkeys(("sec", "secs", "second", "seconds", "S"), "s"),
    **dict.fromkeys(("min", "mins", "minute", "minutes", "M"), "m"),
    **dict.fromkeys(("hr", "hrs", "hour", "hours", "H"), "h"),
}
_DURATION_EXAMPLES = "use e.g. 10s, 500ms, 1m30s or 1h"


class QuantityError(ValueError):
    """A value that is not a valid CPU, memory or duration quantity."""


def _reject_bool(value: object) -> None:
    # bool is an int subclass: True must not silently mean 1 core.
    if isinstance(value, bool):
        raise QuantityError(f"expected a quantity, got {str(value).lower()}")


def _check_range(result: int, text: str) -> int:
    if result > _INT64_MAX:
        raise QuantityError(f'"{text}" is too large')
    return result


def parse_cpu(value: str | int | float) -> int:
    """CPU as millicores: ``"250m"`` → 250, ``"0.5"`` or ``0.5`` → 500, ``1`` → 1000."""
    _reject_bool(value)
    text = str(value).strip()
    if text.startswith("-"):
        raise QuantityError(f'CPU must not be negative, got "{text}"')
    if re.fullmatch(r"\d+m", text):
        return _check_range(int(text[:-1]), text)
    if re.fullmatch(r"\d+M", text):
        raise QuantityError(f'"{text}" is not a CPU quantity; did you mean {text[:-1]}m?')
    if not re.fullmatch(_NUMBER, text):
        raise QuantityError(f'"{text}" is not a CPU quantity; use cores like 0.5 or millicores like 500m')
    millis = Decimal(text) * 1000
    if millis != millis.to_integral_value():
        raise QuantityError(f'"{text}" has more than 3 decimal places; the smallest CPU unit is 1m (0.001)')
    return _check_range(int(millis), text)


def parse_memory(value: str | int) -> int:
    """Memory as bytes: ``"64Mi"`` → 67108864, ``"1G"`` → 10**9, ``512`` → 512."""
    _reject_bool(value)
    text = str(value).strip()
    if text.startswith("-"):
        raise QuantityError(f'memory must not be negative, got "{text}"')
    match = _MEMORY_RE.fullmatch(text)
    if match is None:
        raise QuantityError(_memory_hint(text))
    number, unit = match.groups()
    exact = Decimal(number) * _MEMORY_UNITS.get(unit or "", 1)
    return _check_range(int(exact.to_integral_value(rounding=ROUND_CEILING)), text)


def _memory_hint(text: str) -> str:
    loose = _LOOSE_MEMORY_RE.fullmatch(text)
    if loose is not None:
        number, unit = loose.groups()
        fixed = unit if unit in _MEMORY_UNITS else _MEMORY_HINTS.get(unit.lower())
        if unit.lower() == "b":
            fixed = ""
        if fixed is not None:
            return f'"{text}" is not a quantity; did you mean {number}{fixed}?'
    return (
        f'"{text}" is not a quantity; use bytes or a number with a suffix: '
        "Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) or k, M, G, T, P, E (powers of 1000)"
    )


def parse_duration(value: str | int) -> int:
    """Duration as milliseconds: ``"1m30s"`` → 90000, ``"500ms"`` → 500, ``10`` → 10000."""
    _reject_bool(value)
    text = str(value).strip()
    if text.startswith("-"):
        raise QuantityError(f'duration must not be negative, got "{text}"')
    if re.fullmatch(_NUMBER, text):
        text_ms = Decimal(text) * 1000  # a bare number means seconds, as in k8s' *Seconds fields
    elif _DURATION_RE.fullmatch(text):
        text_ms = sum((Decimal(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text)), Decimal(0))
    else:
        raise QuantityError(_duration_hint(text))
    if text_ms != text_ms.to_integral_value():
        raise QuantityError(f'"{text}" is not a whole number of milliseconds')
    return _check_range(int(text_ms), text)


def _duration_hint(text: str) -> str:
    loose = re.fullmatch(rf"({_NUMBER})\s*([A-Za-z]+)", text)
    if loose is not None:
        number, unit = loose.groups()
        fixed = unit if unit in _DURATION_UNITS else _DURATION_HINTS.get(unit, _DURATION_HINTS.get(unit.lower()))
        if fixed is not None:
            return f'"{text}" is not a duration; did you mean {number}{fixed}?'
    return f'"{text}" is not a duration; {_DURATION_EXAMPLES}'


def format_cpu(millis: int) -> str:
    """``250`` → ``"250m"``, ``2000`` → ``"2"``."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_memory(size: int) -> str:
    """The largest binary unit that divides exactly: ``"64Mi"``, ``"1Gi"``, else plain bytes."""
    if size != 0:
        for unit, power in sorted(_BINARY.items(), key=lambda item: -item[1]):
            if size % 1024**power == 0:
                return f"{size // 1024**power}{unit}"
    return str(size)


def format_duration(ms: int) -> str:
    """Go-style, without zero parts: ``"500ms"``, ``"1m30s"``, ``"1.5s"``, ``"1h"``."""
    if ms < 0:
        return f"-{format_duration(-ms)}"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if rest:
        seconds = Decimal(rest) / 1000
        parts.append(f"{seconds.normalize():f}s")
    return "".join(parts)
