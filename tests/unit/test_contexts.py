"""`orch config` contexts and how the CLI picks its scheduler and certificate with them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import contexts
from cli.client import CliError, scheduler_addresses, tls_files
from cli.main import cli


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cfg" / "config.yaml"
    monkeypatch.setenv("ORCH_CONFIG", str(path))
    for var in ("ORCH_SCHEDULER", "ORCH_TLS_DIR", "ORCH_TLS_USER", "ORCH_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_set_use_and_list(config: Path) -> None:
    assert "created" in run("config", "set-context", "prod", "--scheduler", "m1:7070,m2:7070", "--tls-dir", "/p")
    run("config", "set-context", "lab", "--scheduler", "10.0.0.1:7070", "--use")
    assert run("config", "current-context").strip() == "lab"
    assert "modified" in run("config", "set-context", "prod", "--tls-user", "viewer")
    prod = contexts.load().get("prod")
    assert prod == contexts.Context("prod", "m1:7070,m2:7070", "/p", "viewer")  # the rest kept
    assert "Switched" in run("config", "use-context", "prod")
    listing = run("config", "get-contexts").splitlines()
    assert listing[0].split() == ["CURRENT", "NAME", "SCHEDULER", "TLS", "DIR", "USER"]
    assert listing[2].startswith("*") and "prod" in listing[2]
    assert os.stat(config).st_mode & 0o777 == 0o600 and os.stat(config.parent).st_mode & 0o777 == 0o700
    run("config", "delete-context", "prod")
    assert contexts.load().current == "" and [c.name for c in contexts.load().contexts] == ["lab"]


def test_flags_then_environment_then_context(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run("config", "set-context", "prod", "--scheduler", "m1:7070", "--tls-dir", "/ctx", "--tls-user", "viewer", "--use")
    ctx = contexts.active(None)
    assert ctx is not None
    assert scheduler_addresses(None, ctx.scheduler) == ["m1:7070"]
    assert scheduler_addresses("flag:1", ctx.scheduler) == ["flag:1"]
    files = tls_files(None, ["m1:7070"], None, ctx.tls_dir, ctx.tls_user)
    assert files is not None and files.cert == Path("/ctx/viewer.crt")
    monkeypatch.setenv("ORCH_SCHEDULER", "env:1")
    monkeypatch.setenv("ORCH_TLS_USER", "admin")
    assert scheduler_addresses(None, ctx.scheduler) == ["env:1"]
    files = tls_files(None, ["env:1"], None, ctx.tls_dir, ctx.tls_user)
    assert files is not None and files.cert == Path("/ctx/admin.crt")


def test_unknown_or_broken_is_a_clear_error(config: Path) -> None:
    with pytest.raises(CliError, match='no context "nope"'):
        contexts.active("nope")
    config.parent.mkdir(parents=True)
    config.write_text("contexts:\n  - name: a\n    schedular: x\n")
    with pytest.raises(CliError, match=r"contexts\[0\]: unknown field schedular"):
        contexts.load()
    config.write_text("contexts: [\n")
    with pytest.raises(CliError, match=str(config)):
        contexts.load()
