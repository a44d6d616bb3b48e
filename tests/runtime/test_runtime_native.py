"""orch-shim and orch-init (node/runtime/native/*.c), run on the host without a container: the
build, the CRI log and its rotation, exit.json's facts, and orch-init's PATH search, reports,
signal forwarding and the command's signal state. No root needed; gcc is (install-deps.sh).

Real containers run them in test_runtime_containers.py, test_runtime_pid1.py and
test_runtime_lean.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.runtime import native
from node.runtime.exits import normalized
from node.runtime.logs import MAX_LINE, parse_log_line, read_logs
from tests.fixtures.signals import ignore_libc_signals, signal_mask

# Forks the "container" (argv after "--"), then execs orch-shim in its place, as shim.py does;
# with --init, the child is orch-init and its first report line is read here first.
DRIVER = r"""
import json, os, sys
spec = json.loads(sys.argv[1])
out_r, out_w = os.pipe()
err_r, err_w = os.pipe()
rep_r, rep_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    argv = spec["argv"]
    if spec["init"]:
        os.set_inheritable(rep_w, True)
        argv = [spec["init"], str(rep_w), *argv]
    os.execvp(argv[0], argv)
for fd in (out_w, err_w, rep_w):
    os.close(fd)
reports = -1
if spec["init"]:
    line = b""
    while not line.endswith(b"\n"):
        line += os.read(rep_r, 1)
    assert line == b"{}\n", line
    reports = rep_r
for fd in (out_r, err_r, rep_r):
    os.set_inheritable(fd, True)
os.execv(spec["shim"], ["orch-shim test", "--pid", str(pid), "--stdout", str(out_r), "--stderr", str(err_r),
    "--reports", str(reports), "--log", spec["log"], "--log-max-bytes", str(spec["max_bytes"]),
    "--log-max-files", "3", "--oom-file", spec["oom"], "--exit", spec["exit"]])
"""


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> native.NativeBinaries:
    return native.build(tmp_path_factory.mktemp("native"))


def supervise(
    binaries: native.NativeBinaries, tmp: Path, *argv: str, init: bool = False, max_bytes: int = 10 << 20
) -> dict[str, object]:
    """Runs argv under orch-shim (and orch-init); returns exit.json."""
    spec = {
        "shim": str(binaries.shim),
        "init": str(binaries.init) if init else "",
        "argv": list(argv),
        "log": str(tmp / "c.log"),
        "oom": str(tmp / "memory.events"),
        "exit": str(tmp / "exit.json"),
        "max_bytes": max_bytes,
    }
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec)], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    exit_json = json.loads((tmp / "exit.json").read_text())
    assert isinstance(exit_json, dict)
    return exit_json


def lines(path: Path) -> list[tuple[str, str, bool]]:
    return [(ln.stream, ln.text, ln.partial) for ln in read_logs(path)]


def test_build_is_cached_by_digest_and_hardened(binaries: native.NativeBinaries) -> None:
    assert binaries.shim.parent.name == native.digest()
    assert native.build(binaries.shim.parent.parent) == binaries  # no second compile
    for flag in ("-Werror", "-Wall", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong", "-Wl,-z,relro,-z,now"):
        assert flag in native.CFLAGS
    dynamic = subprocess.run(["readelf", "-d", str(binaries.shim)], capture_output=True, text=True).stdout
    assert "BIND_NOW" in dynamic or ("FLAGS_1" in dynamic and "NOW" in dynamic)
    header = subprocess.run(["readelf", "-h", str(binaries.init)], capture_output=True, text=True).stdout
    assert "DYN" in header  # static-pie
    interp = subprocess.run(["readelf", "-l", str(binaries.init)], capture_output=True, text=True).stdout
    assert "INTERP" not in interp  # static: nothing of the container's libc


def test_a_missing_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(native.NativeBuildError, match=r"gcc not found.*install-deps\.sh"):
        native.build(tmp_path / "cache")
    assert not (tmp_path / "cache" / native.digest()).exists()


def test_the_sealed_image_cannot_be_changed(binaries: native.NativeBinaries) -> None:
    fd = native.sealed_copy(binaries.init)
    try:
        with pytest.raises(PermissionError):
            os.write(fd, b"x")
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
        assert os.pread(fd, 4, 0) == b"\x7fELF"
    finally:
        os.close(fd)


def test_log_lines_partials_and_the_last_unterminated_line(binaries: native.NativeBinaries, tmp_path: Path) -> None:
    long = "x" * (MAX_LINE + 5)
    script = f"printf 'one\\n'; printf 'err\\n' >&2; printf '{long}'"
    record = supervise(binaries, tmp_path, "sh", "-c", script)
    got = lines(tmp_path / "c.log")
    assert [x for x in got if x[0] == "stderr"] == [("stderr", "err", False)]
    assert [x for x in got if x[0] == "stdout"] == [
        ("stdout", "one", False),
        ("stdout", "x" * MAX_LINE, True),
        ("stdout", "xxxxx", False),
    ]
    stamp = (tmp_path / "c.log").read_text().split(" ", 1)[0]
    assert parse_log_line(f"{stamp} stdout F x").timestamp == pytest.approx(time.time(), abs=60)
    assert (record["wait_status"], record["oom_kills"]) == (0, 0)


def test_log_rotation_keeps_max_files_and_order(binaries: native.NativeBinaries, tmp_path: Path) -> None:
    supervise(
        binaries, tmp_path, "sh", "-c", "i=0; while [ $i -lt 100 ]; do echo line $i; i=$((i+1)); done", max_bytes=1000
    )
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("c.log"))
    assert files == ["c.log", "c.log.1", "c.log.2"]
    assert all((tmp_path / name).stat().st_size <= 1000 for name in files)
    texts = [text for _, text, _ in lines(tmp_path / "c.log")]
    assert texts == [f"line {i}" for i in range(100 - len(texts), 100)]  # the oldest gone, order kept


@pytest.mark.parametrize(
    ("script", "oom", "expected"),
    [
        ("exit 3", "", (3, "Error", False)),
        ("kill -KILL $$", "", (137, "Killed", False)),
        ("kill -KILL $$", "low 0\noom 1\noom_kill 1\noom_group_kill 0\n", (137, "OOMKilled", True)),
        ("true", "oom_kill 2\n", (0, "Completed", True)),
    ],
)
def test_exit_json_holds_facts_and_python_reads_their_meaning(
    binaries: native.NativeBinaries, tmp_path: Path, script: str, oom: str, expected: tuple[int, str, bool]
) -> None:
    if oom:
        (tmp_path / "memory.events").write_text(oom)
    record = supervise(binaries, tmp_path, "sh", "-c", script)
    assert set(record) == {"wait_status", "oom_kills", "finished_at"}
    assert abs(float(str(record["finished_at"])) - time.time()) < 60
    meaning = normalized(record)
    assert (meaning["exit_code"], meaning["reason"], meaning["oom_killed"]) == expected
    assert oct(os.stat(tmp_path / "exit.json").st_mode & 0o777) == "0o600"


def test_under_orch_init_the_commands_status_is_reported(binaries: native.NativeBinaries, tmp_path: Path) -> None:
    record = supervise(binaries, tmp_path, "sh", "-c", "echo hi; exit 5", init=True)
    assert normalized(record)["exit_code"] == 5
    assert lines(tmp_path / "c.log") == [("stdout", "hi", False)]


def run_init(binaries: native.NativeBinaries, *argv: str, env: dict[str, str] | None = None) -> list[dict[str, int]]:
    """orch-init's report lines for argv."""
    r, w = os.pipe()
    proc = subprocess.Popen([str(binaries.init), str(w), *argv], pass_fds=(w,), env=env, stdout=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as reports:
        out = [json.loads(line) for line in reports]
    proc.wait(10)
    return out


def test_orch_init_searches_path_as_execvpe_does(binaries: native.NativeBinaries, tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a program\n")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    assert run_init(binaries, "true", env=env) == [{}, {"status": 0, "alone": True}]
    assert run_init(binaries, "no-such-command", env=env) == [{"stage": "exec", "errno": 2}]
    assert run_init(binaries, "data", env=env) == [{"stage": "exec", "errno": 13}]  # found, not executable: wins
    assert run_init(binaries, "/no/such") == [{"stage": "exec", "errno": 2}]


def test_orch_init_forwards_signals_to_the_command(binaries: native.NativeBinaries, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    r, w = os.pipe()
    script = f"trap 'exit 7' TERM; touch {ready}; while :; do sleep 0.05; done"
    proc = subprocess.Popen([str(binaries.init), str(w), "sh", "-c", script], pass_fds=(w,))
    os.close(w)
    with os.fdopen(r) as reports:
        assert json.loads(reports.readline()) == {}
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert json.loads(reports.readline())["status"] == 7 << 8
    assert proc.wait(10) == 0


def test_the_command_starts_with_default_signals_whatever_orch_init_inherited(
    binaries: native.NativeBinaries, tmp_path: Path
) -> None:
    # The zygote ignores HUP and INT, Python PIPE, a parent may leave glibc's own 32 and 33
    # ignored, and ignored signals survive exec: not into the command.
    out = tmp_path / "status"
    script = f"trap '' HUP INT PIPE; exec {binaries.init} 3 sh -c 'cat /proc/self/status > {out}' 3>/dev/null"
    subprocess.run(["sh", "-c", script], check=True, timeout=10, preexec_fn=ignore_libc_signals)
    status = dict(line.split(":\t", 1) for line in out.read_text().splitlines())
    assert signal_mask(status["SigBlk"]) == set()
    assert signal_mask(status["SigIgn"]) == set()
