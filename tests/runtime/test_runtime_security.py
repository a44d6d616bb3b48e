"""Root: the security defaults and their knobs, checked from inside the container."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, ContainerStatus, Runtime, RuntimeStartError
from node.runtime.security import cap_mask
from tests.fixtures.rootfs import build_busybox_rootfs
from tests.runtime.conftest import log_text
from tests.runtime.test_runtime_containers import run, sections, wait_exit, wait_for_output

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]


def status_field(out: list[str], name: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in out if line.startswith(name + ":"))


def test_default_security_from_inside(runtime: Runtime, make_config: MakeConfig) -> None:
    script = (
        "echo '#status'; cat /proc/self/status;"
        "echo '#procsys'; (echo x > /proc/sys/kernel/hostname) 2>/dev/null && echo WROTE;"
        "echo '#mount'; mount -t tmpfs x /tmp 2>/dev/null && echo MOUNTED;"
        "echo '#ping'; ping -c1 -W1 127.0.0.1 2>&1;"
        "echo '#masked'; cat /proc/kcore /proc/keys /proc/timer_list 2>/dev/null | wc -c;"
        "echo '#firmware'; ls /sys/firmware | wc -l;"
        "echo '#hosts'; cat /etc/hosts; echo '#hostname'; cat /etc/hostname;"
        "echo '#etcro'; (echo x >> /etc/hosts) 2>/dev/null && echo WROTE;"
        "echo '#rootfs'; touch /written && echo TOUCHED;"
        "echo '#nofile'; ulimit -n; ulimit -Hn;"
        "echo '#dev'; ls /dev; ls -l /dev/stdout /dev/fd; echo '#end'"
    )
    state, text = run(runtime, make_config("sec", "sh", "-c", script, hostname="box-1"))
    out = sections(text)
    assert status_field(out["status"], "CapEff") == f"{cap_mask():016x}"
    for name in ("CapPrm", "CapBnd", "CapInh"):
        assert status_field(out["status"], name) == f"{cap_mask():016x}"
    assert status_field(out["status"], "CapAmb") == "0" * 16
    assert status_field(out["status"], "NoNewPrivs") == "1"
    assert "WROTE" not in out["procsys"] and "MOUNTED" not in out["mount"]
    assert any("permission denied" in line for line in out["ping"]), out["ping"]  # no CAP_NET_RAW
    assert out["masked"] == ["0"] and out["firmware"] == ["0"]
    assert "127.0.0.1\tlocalhost" in out["hosts"] and any(line.endswith("\tbox-1") for line in out["hosts"])
    assert out["hostname"] == ["box-1"]
    assert "WROTE" not in out["etcro"]
    assert out["rootfs"] == ["TOUCHED"]  # writable by default (the overlay's upper)
    assert out["nofile"][0] == "1024"
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx"} <= set(
        " ".join(out["dev"]).split()
    )
    assert state.exit_code == 0


def test_user_numeric_and_by_name(runtime: Runtime, make_config: MakeConfig) -> None:
    script = "id; grep -E '^(CapEff|CapBnd)' /proc/self/status"
    _, text = run(runtime, make_config("u1", "sh", "-c", script, user="1000:1000"))
    lines = text.splitlines()
    assert lines[0].startswith("uid=1000 gid=1000"), lines
    assert status_field(lines, "CapEff") == "0" * 16  # a non-root user keeps only the bounding set
    _, text = run(runtime, make_config("u2", "id", user="app"))
    assert text.startswith("uid=1001(app) gid=1002(app) groups=1002(app),1003(extra)"), text


def test_unknown_user_or_capability_is_a_start_error(runtime: Runtime, make_config: MakeConfig) -> None:
    with pytest.raises(RuntimeStartError, match="nobody"):
        runtime.start(make_config("u3", "true", user="nobody"))
    with pytest.raises(RuntimeStartError, match="capability"):
        runtime.start(make_config("u4", "true", cap_add=("CAP_FLY",)))
    assert runtime.list() == []


def test_cap_add_and_drop(runtime: Runtime, make_config: MakeConfig) -> None:
    script = "ip link set lo up && ping -c1 -W1 127.0.0.1"
    _, text = run(runtime, make_config("raw", "sh", "-c", script, cap_add=("CAP_NET_RAW", "net_admin")))
    assert "1 packets received" in text, text
    _, text = run(runtime, make_config("none", "grep", "CapEff", "/proc/self/status", cap_drop=("ALL",)))
    assert text.split() == ["CapEff:", "0" * 16]


def test_read_only_rootfs_and_rlimits(runtime: Runtime, make_config: MakeConfig) -> None:
    script = "touch /written 2>/dev/null || echo REFUSED; ulimit -n; ulimit -Hn; echo ok > /dev/shm/x && echo SHM"
    config = make_config("ro", "sh", "-c", script, read_only_rootfs=True, rlimits={"NOFILE": (100, 200)})
    _, text = run(runtime, config)
    assert text.splitlines()[-4:] == ["REFUSED", "100", "200", "SHM"], text


def test_on_netns_ip_goes_into_etc_hosts(runtime: Runtime, make_config: MakeConfig) -> None:
    config = make_config("hosty", "cat", "/etc/hosts", hostname="web", hosts={"db": "10.0.0.9"})
    _, text = run_with_ip(runtime, config, "10.1.2.3")
    assert "10.1.2.3\tweb" in text and "10.0.0.9\tdb" in text


def run_with_ip(runtime: Runtime, config: ContainerConfig, ip: str) -> tuple[object, str]:
    runtime.start(config, on_netns=lambda pid: ip)
    state = wait_exit(runtime, config.id)
    return state, log_text(config.log_path)


def test_init_reaps_zombies_and_forwards_sigterm(runtime: Runtime, make_config: MakeConfig) -> None:
    # The inner shell exits at once; its background sleep is re-parented to PID 1 and must be reaped.
    script = "sh -c 'sleep 0.1 &'; sleep 0.5; ps -o stat,comm | grep -c '^Z' ; echo ready; exec sleep 1000"
    config = make_config("reaper", "sh", "-c", script, init=True)
    runtime.start(config)
    out = wait_for_output(config, "ready")
    assert out.splitlines()[0] == "0", out  # no zombie
    t0 = time.monotonic()
    state = runtime.stop("reaper", 10)
    assert time.monotonic() - t0 < 2  # sleep got the SIGTERM through the reaper
    assert (state.exit_code, state.reason) == (143, "Killed")


def test_without_init_the_command_is_pid_1(runtime: Runtime, make_config: MakeConfig) -> None:
    _, text = run(runtime, make_config("bare", "sh", "-c", "echo $$", init=False))
    assert text == "1\n"


def test_stats_report_working_set_and_oom_kills(runtime: Runtime, make_config: MakeConfig) -> None:
    runtime.start(make_config("st", "sleep", "1000", memory_bytes=64 << 20))
    stats = runtime.stats("st")
    assert 0 < stats.memory_working_set_bytes <= stats.memory_bytes
    assert stats.oom_kills == 0 and stats.pids == 1  # sleep is PID 1
    assert runtime.stop("st", 0).status is ContainerStatus.EXITED


def test_cpu_quota_holds_a_busy_loop(runtime: Runtime, make_config: MakeConfig) -> None:
    runtime.start(make_config("busy", "sh", "-c", "while :; do :; done", cpu_millis=200))
    before = runtime.stats("busy").cpu_usage_ns
    time.sleep(2.0)
    used = (runtime.stats("busy").cpu_usage_ns - before) / 1e9
    runtime.stop("busy", 0)
    assert 0.25 <= used <= 0.6, used  # 200m over 2 s = 0.4 s of CPU


def test_memory_stats_and_oom_kill(runtime: Runtime, make_config: MakeConfig) -> None:
    config = make_config("oom2", "sh", "-c", "x=a; while true; do x=$x$x; done", memory_bytes=16 << 20)
    state, _ = run(runtime, config)
    assert (state.exit_code, state.reason) == (137, "OOMKilled")
    assert runtime.stats("oom2").oom_kills >= 1


def test_remove_unknown_removes_exited_and_orphaned(
    runtime: Runtime, make_config: MakeConfig, cgroup_parent: str
) -> None:
    run(runtime, make_config("gone", "true"))
    run(runtime, make_config("kept", "true"))
    runtime.start(make_config("live", "sleep", "1000"))
    cg = runtime._cg
    cg.create(f"{cgroup_parent}/stray", __import__("node.runtime").runtime.Limits())
    removed = runtime.remove_unknown({"kept"})
    assert sorted(removed) == ["gone", "stray"]
    assert sorted(s.id for s in runtime.list()) == ["kept", "live"]
    assert cg.children(cgroup_parent) == ["kept", "live"]


def test_an_image_symlink_cannot_make_setup_touch_host_files(runtime: Runtime, tmp_path: Path) -> None:
    # Setup runs as host root before pivot_root: /etc -> a host dir must not get hosts/hostname files there.
    host_dir = tmp_path / "host-etc"
    host_dir.mkdir()
    image = build_busybox_rootfs(tmp_path / "evil")
    shutil.rmtree(image / "etc")
    (image / "etc").symlink_to(host_dir)
    config = ContainerConfig(id="evil", rootfs=image, argv=("true",), env={}, log_path=tmp_path / "evil.log")
    with pytest.raises(RuntimeStartError, match="/etc/hostname is a symlink in the image"):
        runtime.start(config)
    assert list(host_dir.iterdir()) == []


def layered(config: ContainerConfig, *layers: Path) -> ContainerConfig:
    """`config` on an image of `layers` (top first), as the agent builds it from an ImageStore."""
    return dataclasses.replace(config, rootfs=layers[0], lower_dirs=layers)


def test_user_of_a_lower_layer_and_passwd_resolved_inside_the_image(
    runtime: Runtime, make_config: MakeConfig, rootfs: Path, tmp_path: Path
) -> None:
    # Issue 9 item 7: /etc/passwd is looked up across every layer, inside the image.
    top = tmp_path / "top"
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "motd").write_text("top layer\n")
    _, text = run(runtime, layered(make_config("lower", "id", user="app"), top, rootfs))
    assert text.startswith("uid=1001(app) gid=1002(app)"), text

    # passwd -> the host's /etc/shadow: read on the host it would make "root" uid <days since 1970>.
    evil = tmp_path / "evil"
    (evil / "etc").mkdir(parents=True)
    (evil / "etc" / "passwd").symlink_to("/etc/shadow")
    config = layered(make_config("shadow", "id", user="root"), evil, rootfs)
    with pytest.raises(RuntimeStartError, match="user 'root' not found in the image's /etc/passwd"):
        runtime.start(config)

    # A FIFO would hang the agent's thread.
    (evil / "etc" / "passwd").unlink()
    os.mkfifo(evil / "etc" / "passwd")
    with pytest.raises(RuntimeStartError, match="the image's /etc/passwd is a FIFO, not a regular file"):
        runtime.start(layered(make_config("fifo", "id"), evil, rootfs))
    assert [s.id for s in runtime.list()] == ["lower"]  # nothing left of the refused starts


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv], capture_output=True, text=True
    )


def test_state_is_private_to_root(cgroup_parent: str, rootfs: Path, tmp_path: Path) -> None:
    # Issue 9 item 8: spec.json holds the app's env (its secrets). The parent here is world-readable
    # on purpose (pytest's own tmp dirs are 0700, which would hide a leak).
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    parent = Path(tempfile.mkdtemp(prefix="orch-modes-"))
    os.chmod(parent, 0o755)
    (parent / "control").write_text("readable\n")
    runtime = Runtime(parent / "state", cgroup_parent)
    try:
        env = {"DB_PASSWORD": "hunter2"}
        config = ContainerConfig("secret", rootfs, ("sleep", "1000"), env, tmp_path / "secret.log")
        runtime.start(config)
        cdir = parent / "state" / "secret"
        assert "hunter2" in (cdir / "spec.json").read_text()
        assert as_nobody("cat", str(parent / "control")).stdout == "readable\n"  # the harness can read
        denied = as_nobody("cat", str(cdir / "spec.json"))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        assert "hunter2" not in denied.stdout
        # Each level on its own, so that no one of them depends on another to stay private.
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (parent / "state", cdir, cdir / "spec.json")}
        assert modes == {"state": 0o700, "secret": 0o700, "spec.json": 0o600}
    finally:
        runtime.cleanup_all()
        shutil.rmtree(parent)
