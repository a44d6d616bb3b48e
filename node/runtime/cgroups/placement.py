"""Where a node's cgroups go, decided once when the agent starts (and kept in a file for
`orch node --cleanup`, which runs from a shell).

    cgroupfs: no systemd, `orch up`, tests, or --cgroup-parent given
        <parent>/<id>                      parent from the hierarchy's root, default orch/<node>;
                                           the zygote and the shims stay in the agent's cgroup
    systemd: cgroup v2, the agent runs in a unit with Delegate=yes, no --cgroup-parent
        <slice>/orch-node-<node>.scope/                 cpu memory pids enabled; no process
        <slice>/orch-node-<node>.scope/supervisors      the zygote and the shims
        <slice>/orch-node-<node>.scope/containers/<id>  the containers

Why a scope beside the agent's unit, not <unit>/containers: systemd puts every new main
process of a service into the unit's own cgroup, and a cgroup that enables controllers
for its children refuses processes (cgroup v2's no-internal-processes rule). With the
containers (and their shims, KillMode=process) living on below it, `systemctl restart
orch-node` would fail with status 219/CGROUP (systemd#24064; DelegateSubgroup= came
only in systemd 254). The scope is what conmon and `runc --systemd-cgroup` use too: a
unit of its own, created once with systemd-run around the zygote, delegated to us, left
alone by the agent's restarts, and stopped by systemd once nothing runs in it.

Either way, if the containers' parent lies below the agent's own cgroup (say, an agent
in a container with its own cgroup namespace), the agent first moves itself into the
leaf <own>/agent: that cgroup may then enable controllers for the containers' cgroups.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from node.runtime.cgroups import detect
from node.runtime.cgroups.common import own_cgroup, read_pids, write
from node.runtime.errors import ContainerError
from orch.files import write_json_atomic

__all__ = [
    "AGENT_LEAF",
    "RECORD",
    "Placement",
    "Supervisors",
    "delegated",
    "detect_placement",
    "move_self",
    "place_agent",
    "placement_for_cleanup",
    "plan",
    "scope_command",
]

AGENT_LEAF = "agent"
RECORD = "cgroups.json"  # in the agent's state dir: the placement its last run used
_SYSTEMD_RUNNING = Path("/run/systemd/system")  # sd_booted(): systemd is PID 1


@dataclass(frozen=True, slots=True)
class Supervisors:
    """The cgroup of the zygote and the shims, inside a systemd scope made for them."""

    path: str  # from the hierarchy's root: <slice>/<scope>/supervisors
    scope: str  # the unit: orch-node-<node>.scope
    slice: str  # the slice it goes in: the agent's own

    @property
    def scope_path(self) -> str:
        return self.path.rpartition("/")[0]


@dataclass(frozen=True, slots=True)
class Placement:
    containers: str  # the containers' parent cgroup, from the hierarchy's root, no leading "/"
    supervisors: Supervisors | None = None  # None: the zygote and the shims stay with the agent
    agent_leaf: str = ""  # the leaf the agent moves itself into first; "" = it stays where it is

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Placement:
        sup = doc.get("supervisors")
        return cls(
            containers=str(doc["containers"]),
            supervisors=Supervisors(**sup) if isinstance(sup, dict) else None,
            agent_leaf=str(doc.get("agent_leaf", "")),
        )


def _below(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor + "/")


def plan(node: str, parent: str, own: str | None, *, own_is_root: bool, delegated: bool) -> Placement:
    """Where the cgroups of `node` go (pure).

    parent: --cgroup-parent ("" = choose); own: the agent's cgroup in the v2 hierarchy
    ("/system.slice/orch-node.service"; None on a v1 host, which has no such rule);
    own_is_root: own is the hierarchy's real root (exempt from the rule); delegated: own is
    a systemd unit with Delegate=yes."""
    own_rel = (own or "").strip("/")
    if not parent and own is not None and delegated and own_rel:
        slice_path, _, _ = own_rel.rpartition("/")
        scope = f"orch-node-{re.sub(r'[^A-Za-z0-9_.-]', '_', node)}.scope"
        scope_path = f"{slice_path}/{scope}".lstrip("/")
        slice_name = slice_path.rpartition("/")[2] or "-.slice"
        return Placement(f"{scope_path}/containers", Supervisors(f"{scope_path}/supervisors", scope, slice_name))
    containers = parent.strip("/") or f"orch/{node}"
    inner = own is not None and not own_is_root and (not own_rel or _below(containers, own_rel))
    return Placement(containers, None, f"{own_rel}/{AGENT_LEAF}".lstrip("/") if inner else "")


def delegated(cgroup_dir: Path) -> bool:
    """systemd marks the cgroup of a unit with Delegate=yes (systemd >= 251: trusted.delegate;
    unprivileged managers: user.delegate); older ones are asked."""
    for attr in ("trusted.delegate", "user.delegate"):
        with contextlib.suppress(OSError):
            if os.getxattr(cgroup_dir, attr) == b"1":
                return True
    unit = cgroup_dir.name
    if not _SYSTEMD_RUNNING.is_dir() or not unit.endswith((".service", ".scope")) or not shutil.which("systemctl"):
        return False
    try:
        out = subprocess.run(
            ["systemctl", "show", "--property=Delegate", "--value", unit], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == "yes"


def detect_placement(node: str, parent: str, driver: str, root: Path = Path("/sys/fs/cgroup")) -> Placement:
    """plan() for this process, on this host."""
    if driver != "v2":
        return plan(node, parent, None, own_is_root=True, delegated=False)
    own = own_cgroup("") or "/"
    own_dir = root / own.lstrip("/")
    # The real root has no cgroup.type; the root of a cgroup namespace (a container's) has.
    own_is_root = not (own_dir / "cgroup.type").exists()
    is_delegated = not parent and own != "/" and _SYSTEMD_RUNNING.is_dir() and delegated(own_dir)
    return plan(node, parent, own, own_is_root=own_is_root, delegated=is_delegated)


def place_agent(node: str, parent: str, state_dir: Path, root: Path = Path("/sys/fs/cgroup")) -> Placement:
    """The agent's placement: detected, the agent moved into its leaf if it needs one, and
    recorded in <state_dir>/cgroups.json for `orch node --cleanup`."""
    placement = detect_placement(node, parent, detect(root), root)
    if placement.agent_leaf:
        move_self(root, placement.agent_leaf)
    write_json_atomic(state_dir / RECORD, placement.to_json())
    return placement


def placement_for_cleanup(node: str, parent: str, state_dir: Path, root: Path = Path("/sys/fs/cgroup")) -> Placement:
    """--cgroup-parent if given, else what the last agent recorded, else what it would choose."""
    if not parent:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return Placement.from_json(json.loads((state_dir / RECORD).read_text()))
    return detect_placement(node, parent, detect(root), root)


def move_self(root: Path, leaf: str) -> None:
    """Move this process (all its threads) into the leaf cgroup `leaf`, made if missing.

    Raises ContainerError if other processes stay in the cgroup left: it could then
    not enable controllers for the containers' cgroups below it."""
    own = own_cgroup("") or "/"
    target = root / leaf
    if own.strip("/") == leaf:
        return
    target.mkdir(exist_ok=True)
    write(target / "cgroup.procs", str(os.getpid()))
    if others := read_pids(root / own.lstrip("/") / "cgroup.procs"):
        raise ContainerError(
            f"cgroup {own} still holds processes {others[:5]} besides the agent (now in /{leaf}): cgroup v2 "
            f"lets no cgroup both hold processes and enable controllers for the containers' cgroups below it; "
            f"run the agent in a cgroup of its own, or pass --cgroup-parent outside {own}"
        )


def scope_command(supervisors: Supervisors) -> list[str]:
    """The prefix that runs a command in a new delegated scope (systemd-run execs it there,
    same pid). --collect: a failed scope is unloaded too, and the name can be used again.
    TasksMax: the containers' own pids limits apply, not systemd's default for a unit."""
    return [
        "systemd-run", "--scope", "--quiet", "--collect", f"--unit={supervisors.scope}",
        f"--slice={supervisors.slice}", "--property=Delegate=yes", "--property=TasksMax=infinity",
        f"--description=orch containers of {supervisors.scope.removeprefix('orch-node-').removesuffix('.scope')}",
        "--",
    ]  # fmt: skip
