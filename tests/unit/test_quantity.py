from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orch.quantity import (
    QuantityError,
    format_cpu,
    format_duration,
    format_memory,
    parse_cpu,
    parse_duration,
    parse_memory,
)


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        ("250m", 250),
        ("0.5", 500),
        ("2", 2000),
        (1, 1000),
        (0.25, 250),
        (0.1, 100),
        (".5", 500),
        ("0.001", 1),
        ("0", 0),
        (" 100m ", 100),
    ],
)
def test_parse_cpu(value: str | int | float, millis: int) -> None:
    assert parse_cpu(value) == millis


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", 'CPU must not be negative, got "-1"'),
        (-0.5, 'CPU must not be negative, got "-0.5"'),
        ("250M", '"250M" is not a CPU quantity; did you mean 250m?'),
        ("0.0005", '"0.0005" has more than 3 decimal places; the smallest CPU unit is 1m (0.001)'),
        ("1.5m", '"1.5m" is not a CPU quantity; use cores like 0.5 or millicores like 500m'),
        ("two", '"two" is not a CPU quantity; use cores like 0.5 or millicores like 500m'),
        ("", '"" is not a CPU quantity; use cores like 0.5 or millicores like 500m'),
        (True, "expected a quantity, got true"),
        ("99999999999999999999", '"99999999999999999999" is too large'),
    ],
)
def test_parse_cpu_rejects(value: str | int | float, message: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_cpu(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (512, 512),
        ("512", 512),
        ("1Ki", 1024),
        ("64Mi", 64 * 2**20),
        ("1.5Gi", 3 * 2**29),
        ("2Ti", 2 * 2**40),
        ("1Pi", 2**50),
        ("1Ei", 2**60),
        ("1k", 1000),
        ("1M", 10**6),
        ("1G", 10**9),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),
        ("0.5Ki", 512),
        ("1.1Ki", 1127),  # rounded up, as Kubernetes does
        ("0", 0),
    ],
)
def test_parse_memory(value: str | int, size: int) -> None:
    assert parse_memory(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("64Mb", '"64Mb" is not a quantity; did you mean 64Mi?'),
        ("64MB", '"64MB" is not a quantity; did you mean 64Mi?'),
        ("64m", '"64m" is not a quantity; did you mean 64Mi?'),
        ("64mi", '"64mi" is not a quantity; did you mean 64Mi?'),
        ("1GB", '"1GB" is not a quantity; did you mean 1Gi?'),
        ("1.5gib", '"1.5gib" is not a quantity; did you mean 1.5Gi?'),
        ("64K", '"64K" is not a quantity; did you mean 64Ki?'),
        ("64 Mi", '"64 Mi" is not a quantity; did you mean 64Mi?'),
        ("100B", '"100B" is not a quantity; did you mean 100?'),
        ("-64Mi", 'memory must not be negative, got "-64Mi"'),
        (-1, 'memory must not be negative, got "-1"'),
        ("lots", '"lots" is not a quantity; use bytes or a number with a suffix: Ki, Mi, Gi, Ti, Pi, Ei'),
        ("64X", '"64X" is not a quantity; use bytes or a number with a suffix: Ki, Mi, Gi, Ti, Pi, Ei'),
        ("16Ei", '"16Ei" is too large'),
        (False, "expected a quantity, got false"),
    ],
)
def test_parse_memory_rejects(value: str | int, message: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_memory(value)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("10s", 10_000),
        ("500ms", 500),
        ("1m30s", 90_000),
        ("2m", 120_000),
        ("1h", 3_600_000),
        ("1h2m3s4ms", 3_723_004),
        ("1.5s", 1_500),
        ("0", 0),
        ("30", 30_000),
        (10, 10_000),
        (0, 0),
    ],
)
def test_parse_duration(value: str | int, ms: int) -> None:
    assert parse_duration(value) == ms


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10sec", '"10sec" is not a duration; did you mean 10s?'),
        ("5 minutes", '"5 minutes" is not a duration; did you mean 5m?'),
        ("2H", '"2H" is not a duration; did you mean 2h?'),
        ("3d", '"3d" is not a duration; use e.g. 10s, 500ms, 1m30s or 1h'),
        ("s", '"s" is not a duration; use e.g. 10s, 500ms, 1m30s or 1h'),
        ("-5s", 'duration must not be negative, got "-5s"'),
        ("1.0005s", '"1.0005s" is not a whole number of milliseconds'),
        (True, "expected a quantity, got true"),
    ],
)
def test_parse_duration_rejects(value: str | int, message: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_duration(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("formatter", "value", "text"),
    [
        (format_cpu, 250, "250m"),
        (format_cpu, 2000, "2"),
        (format_cpu, 0, "0"),
        (format_cpu, 1500, "1500m"),
        (format_memory, 64 * 2**20, "64Mi"),
        (format_memory, 2**30, "1Gi"),
        (format_memory, 1536, "1536"),
        (format_memory, 1000, "1000"),
        (format_memory, 0, "0"),
        (format_duration, 500, "500ms"),
        (format_duration, 0, "0ms"),
        (format_duration, 10_000, "10s"),
        (format_duration, 90_000, "1m30s"),
        (format_duration, 1_500, "1.5s"),
        (format_duration, 3_600_000, "1h"),
        (format_duration, 3_630_000, "1h30s"),
    ],
)
def test_format(formatter: Callable[[int], str], value: int, text: str) -> None:
    assert formatter(value) == text


def test_quantity_error_is_a_value_error() -> None:
    assert issubclass(QuantityError, ValueError)


_INT64 = st.integers(min_value=0, max_value=2**63 - 1)


@given(_INT64)
def test_memory_round_trip(size: int) -> None:
    assert parse_memory(format_memory(size)) == size


@given(_INT64)
def test_cpu_round_trip(millis: int) -> None:
    assert parse_cpu(format_cpu(millis)) == millis


@given(st.integers(min_value=0, max_value=10**12))
def test_duration_round_trip(ms: int) -> None:
    assert parse_duration(format_duration(ms)) == ms


@given(st.integers(min_value=0, max_value=2**20), st.sampled_from(["Ki", "Mi", "Gi", "Ti"]))
def test_memory_format_is_canonical(number: int, unit: str) -> None:
    # A whole number of a binary unit prints back in the largest exact unit.
    assert parse_memory(format_memory(parse_memory(f"{number}{unit}"))) == parse_memory(f"{number}{unit}")
    if number % 1024:
        assert format_memory(parse_memory(f"{number}{unit}")) == f"{number}{unit}"
