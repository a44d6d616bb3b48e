"""The CLI's exit codes: 1 from the cluster, 2 for a wrong command line, 3 for a bug."""

from __future__ import annotations

import pytest

from cli import commands
from cli import main as cli_main
from cli.client import UsageError


def exit_code(*argv: str) -> int:
    with pytest.raises(SystemExit) as e:
        cli_main.main(list(argv))
    return int(e.value.code or 0)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code("apply") == 2
    assert "apply needs a manifest file" in capsys.readouterr().err
    assert exit_code("get", "apps", "-l", "=x") == 2
    assert exit_code("get", "nosuchkind") == 2  # click's own usage error
    assert exit_code("delete", "app") == 2


def test_an_unreachable_scheduler_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code("--scheduler", "127.0.0.1:1", "--timeout", "2", "get", "apps") == 1
    assert "Traceback" not in capsys.readouterr().err


def test_a_bug_exits_3(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*_: object, **__: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(commands, "get", broken)
    monkeypatch.delenv("ORCH_DEBUG", raising=False)
    assert exit_code("--scheduler", "127.0.0.1:1", "get", "apps") == 3
    assert "internal error: ZeroDivisionError: boom" in capsys.readouterr().err


def test_since_is_a_duration_or_a_time() -> None:
    assert commands.since_of("5m", "", now=1000.0) == 700.0
    assert commands.since_of("", "2026-11-29T14:00:00Z", now=0.0) == 1795960800.0
    assert commands.since_of("", "2026-11-29T15:00:00+01:00", now=0.0) == 1795960800.0
    assert commands.since_of("", "", now=5.0) == 0.0
    for args in (("5 minutes", ""), ("", "yesterday"), ("", "2026-11-29T14:00:00"), ("5m", "2026-11-29T14:00:00Z")):
        with pytest.raises(UsageError):
            commands.since_of(*args, now=0.0)
