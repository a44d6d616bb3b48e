"""Unit (no root): where a node's cgroups go (placement.plan), what the zygote is started
with, and that a v2 create writes subtree_control only where a controller is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.runtime import Runtime
from node.runtime.cgroups import Limits, V2Driver
from node.runtime.cgroups.placement import Placement, Supervisors, placement_for_cleanup, plan, scope_command
from node.runtime.shim_client import Zygote

UNIT = "/system.slice/orch-node.service"
SCOPE = "system.slice/orch-node-n1.scope"
SUPERVISORS = Supervisors(f"{SCOPE}/supervisors", "orch-node-n1.scope", "system.slice")


@pytest.mark.parametrize(
    ("parent", "own", "own_is_root", "delegated", "expected"),
    [
        # a delegated systemd unit, no --cgroup-parent: a scope of the node's own beside the unit
        ("", UNIT, False, True, Placement(f"{SCOPE}/containers", SUPERVISORS)),
        # not delegated (a login session, `orch up`, tests): orch/<node> from the root, as always
        ("", "/user.slice/user-0.slice/session-1.scope", False, False, Placement("orch/n1")),
        # --cgroup-parent wins, even in a delegated unit
        ("/orch/x/", UNIT, False, True, Placement("orch/x")),
        # ... and below the agent's own cgroup it needs a leaf for the agent first
        (f"{UNIT}/containers", UNIT, False, True, Placement(f"{UNIT[1:]}/containers", None, f"{UNIT[1:]}/agent")),
        # the root of a cgroup namespace (an agent in a container) is an inner node like any other
        ("", "/", False, False, Placement("orch/n1", None, "agent")),
        # the real root is exempt from the no-internal-processes rule
        ("", "/", True, False, Placement("orch/n1")),
        # cgroup v1 (no v2 hierarchy of ours): no rule, no scope
        ("", None, True, False, Placement("orch/n1")),
    ],
)
def test_plan(parent: str, own: str | None, own_is_root: bool, delegated: bool, expected: Placement) -> None:
    assert plan("n1", parent, own, own_is_root=own_is_root, delegated=delegated) == expected


def test_plan_keeps_unit_names_valid() -> None:
    placed = plan("a b/c", "", UNIT, own_is_root=False, delegated=True)
    assert placed.supervisors is not None and placed.supervisors.scope == "orch-node-a_b_c.scope"


def test_placement_round_trips_through_json() -> None:
    for placed in (Placement(f"{SCOPE}/containers", SUPERVISORS), Placement("orch/n1", None, "x/agent")):
        assert Placement.from_json(placed.to_json()) == placed


def test_cleanup_uses_the_recorded_placement(tmp_path: Path) -> None:
    placed = Placement(f"{SCOPE}/containers", SUPERVISORS)
    (tmp_path / "cgroups.json").write_text(json.dumps(placed.to_json()))
    assert placement_for_cleanup("n1", "", tmp_path) == placed
    assert placement_for_cleanup("n1", "orch/other", tmp_path).containers == "orch/other"  # the flag wins


def test_the_first_zygote_makes_the_scope(tmp_path: Path) -> None:
    zygote = Zygote(tmp_path / "state", SUPERVISORS, tmp_path)
    cmd = ["python", "-m", "node.runtime.zygote"]
    wrapped = zygote._placed(cmd)
    assert wrapped == [*scope_command(SUPERVISORS), *cmd, str(tmp_path / SCOPE / "supervisors")]
    assert "--property=Delegate=yes" in wrapped and "--unit=orch-node-n1.scope" in wrapped
    (tmp_path / SCOPE).mkdir(parents=True)  # the scope lives on (its shims, its containers)
    assert zygote._placed(cmd) == [*cmd, str(tmp_path / SCOPE / "supervisors")]
    assert Zygote(tmp_path / "state")._placed(cmd) == cmd  # cgroupfs: stays with the agent


def test_supervisors_need_the_zygote(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the zygote"):
        Runtime(tmp_path / "state", f"{SCOPE}/containers", use_zygote=False, supervisors=SUPERVISORS)


def test_v2_create_writes_only_missing_controllers(tmp_path: Path) -> None:
    """Above a delegated scope systemd has enabled them: nothing may be written there."""
    path = f"{SCOPE}/containers/c1"
    cg = tmp_path
    for part in ["", *Path(path).parts[:-1]]:
        cg = cg / part if part else cg
        cg.mkdir(exist_ok=True)
        (cg / "cgroup.controllers").write_text("cpu io memory pids\n")
    for systemds in (tmp_path, tmp_path / "system.slice"):
        (systemds / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    V2Driver(tmp_path, attach_devices=lambda _: None).create(path, Limits())
    for systemds in (tmp_path, tmp_path / "system.slice"):
        assert (systemds / "cgroup.subtree_control").read_text() == "cpu io memory pids\n"  # untouched
    for ours in (tmp_path / SCOPE, tmp_path / SCOPE / "containers"):
        assert (ours / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
