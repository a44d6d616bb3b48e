"""Self-fencing (`onNodeLost: Stop`, issue 10 item 6): the agent's pure decision, what it
counts from (LeaseWatch), what it leaves the next agent process, and what the agent and
its workers do with it. The scheduler's side is in test_lease_renewals.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node import fencing
from node.agent import Agent, AgentConfig
from node.fencing import FENCE_MARGIN, HOLD_MARGIN, LeaseWatch, must_fence
from node.worker import FENCED_REASON, InstanceWorker
from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb

TTL = 1.0


@pytest.mark.parametrize(
    ("renewed_at", "now", "fence"),
    [
        (None, 0.0, True),  # never renewed (a new agent with containers of a previous one)
        (100.0, 100.0, False),
        (100.0, 100.0 + TTL - FENCE_MARGIN - 0.01, False),
        (100.0, 100.0 + TTL - FENCE_MARGIN, True),  # the lease may expire within the margin
        (100.0, 100.0 + TTL, True),
        (100.0, 99.0, False),  # renewed "later" than now: a heartbeat queued just now
    ],
)
def test_fence_once_the_lease_may_expire_within_the_margin(renewed_at, now, fence):
    assert must_fence(renewed_at, TTL, now) is fence


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def watch(clock: Clock, valid_until: float | None = 100.5) -> tuple[LeaseWatch, list[float]]:
    """A watch that knows the lease ran until valid_until (a new agent knows nothing: None)."""
    w = LeaseWatch(clock, valid_until)
    lapses: list[float] = []
    w.on_lapse = lambda: lapses.append(clock.now)
    return w, lapses


def test_a_renewal_counts_from_when_its_heartbeat_was_queued_not_from_when_it_was_heard():
    clock = Clock()
    w, _ = watch(clock)
    w.registered(sent_at=99.9, ttl=TTL)
    assert w.valid_until == pytest.approx(100.9)
    first = w.heartbeat()  # queued at 100.0
    clock.now = 100.3
    second = w.heartbeat()
    clock.now = 100.6
    w.renewed(first, TTL)  # heard at 100.6: the lease was renewed after 100.0, so it runs until 101.0 at least
    assert w.valid_until == pytest.approx(101.0)
    w.renewed(second, TTL)
    assert w.valid_until == pytest.approx(101.3)
    w.renewed(first, TTL)  # a repeat, or an older one late: never shortens, never lengthens
    w.renewed(12345, TTL)  # not ours (another process's numbering)
    assert w.valid_until == pytest.approx(101.3)


def test_a_lapse_is_fenced_once_and_before_a_late_renewal_extends_the_bound():
    clock = Clock()
    w, lapses = watch(clock)
    w.registered(sent_at=100.0, ttl=TTL)
    seq = w.heartbeat()
    clock.now = 100.0 + TTL - FENCE_MARGIN + 0.1  # cut off: no renewal heard in time
    w.check()
    w.check()
    assert lapses == [clock.now] and w.lapsed()
    # The renewal of a heartbeat queued before the lapse (or a new lease after the old one expired)
    # comes back: the bound moves on, but what was fenced stays fenced; the next lapse fences again.
    w.renewed(seq, TTL)
    assert w.lapsed()  # that heartbeat's bound had passed as well
    clock.now = 101.0
    w.registered(sent_at=101.0, ttl=TTL)
    assert not w.lapsed() and lapses == [100.0 + TTL - FENCE_MARGIN + 0.1]
    clock.now = 102.0
    w.check()
    assert len(lapses) == 2


def test_a_renewal_after_an_unnoticed_lapse_still_fences_first():
    clock = Clock()
    w, lapses = watch(clock)
    w.registered(sent_at=100.0, ttl=TTL)
    clock.now = 103.0  # the loop was late: nothing checked during the lapse
    w.registered(sent_at=102.9, ttl=TTL)  # re-registered: a new lease, the old one has expired
    assert lapses == [103.0] and not w.lapsed()


def test_a_new_agent_knows_nothing_and_fences_what_it_found():
    clock = Clock()
    w, lapses = watch(clock, valid_until=None)
    assert w.lapsed()
    w.check()
    assert lapses == [100.0]


def test_a_restart_hold_counts_from_the_goodbye_less_a_margin_for_the_schedulers_clocks():
    clock = Clock()
    w, _ = watch(clock)
    w.registered(sent_at=100.0, ttl=TTL)
    w.held(sent_at=100.2, hold=30.0)
    assert w.valid_until == pytest.approx(100.2 + 30.0 - HOLD_MARGIN)


def test_run_fences_on_time_and_waits_again_after_a_renewal():
    async def scenario() -> list[float]:
        w = LeaseWatch(valid_until=asyncio.get_running_loop().time() + 0.3)
        lapses: list[float] = []
        w.on_lapse = lambda: lapses.append(asyncio.get_running_loop().time())
        start = asyncio.get_running_loop().time()
        w.registered(sent_at=w._clock(), ttl=FENCE_MARGIN + 0.2)
        task = asyncio.create_task(w.run())
        await asyncio.sleep(0.1)
        assert not lapses
        w.registered(sent_at=w._clock(), ttl=FENCE_MARGIN + 0.2)  # renewed: the deadline moves
        await asyncio.sleep(0.5)
        task.cancel()
        return [t - start for t in lapses]

    [at] = asyncio.run(scenario())
    assert at >= 0.3  # not at the first deadline (0.2), at the second (0.1 + 0.2)


def test_the_bound_is_kept_for_the_next_process_of_the_same_boot_only(tmp_path: Path):
    path = tmp_path / "fencing.json"
    fencing.save(path, 123.5, ["web-b", "web-a"], boot="boot-1")
    assert fencing.load(path, boot="boot-1") == fencing.Saved(123.5, frozenset({"web-a", "web-b"}))
    # After a reboot the monotonic clock started again (and the containers are gone anyway).
    assert fencing.load(path, boot="boot-2") == fencing.Saved(None, frozenset({"web-a", "web-b"}))
    assert fencing.load(tmp_path / "missing.json") == fencing.Saved(None, frozenset())
    path.write_text("{not json")
    assert fencing.load(path, boot="boot-1") == fencing.Saved(None, frozenset())


# -- the agent and its workers ------------------------------------------------------


def app_instance(name: str, action: pb.NodeLostAction.ValueType) -> pb.Instance:
    return pb.Instance(name=name, app=name.rpartition("-")[0], spec=pb.AppSpec(image="x", on_node_lost=action))


def make_agent(tmp_path: Path, monkeypatch) -> tuple[Agent, list[str]]:
    started: list[str] = []

    async def fake_run(self: InstanceWorker) -> None:
        started.append(self.instance.name)
        await self._stop.wait()
        await self._teardown()  # the real one: no container here, so only the final report

    monkeypatch.setattr(InstanceWorker, "_run", fake_run)
    agent = Agent(AgentConfig(name="n1", state_dir=tmp_path))
    agent._swept = True
    return agent, started


def desired(*insts: pb.Instance) -> apb.DesiredSet:
    return apb.DesiredSet(instances=list(insts))


def test_a_lapse_kills_the_stop_apps_instances_for_good_and_reports_them_node_lost(tmp_path, monkeypatch):
    agent, started = make_agent(tmp_path, monkeypatch)
    solo = app_instance("solo-a", pb.NODE_LOST_ACTION_STOP)
    web = app_instance("web-a", pb.NODE_LOST_ACTION_UNSPECIFIED)

    async def scenario() -> None:
        agent.lease.registered(sent_at=agent.lease._clock(), ttl=TTL)
        await agent.apply_desired(desired(solo, web))
        assert fencing.load(tmp_path / "fencing.json").instances == {"solo-a"}  # for a restart
        agent.lease.valid_until = 0.0  # no renewal heard for a lease
        agent.lease.check()
        task = agent.workers["solo-a"].task
        assert task is not None
        await task
        assert not agent.workers["web-a"].fenced  # the default keeps running
        # The scheduler still wants it here (it had not heard of the lapse): it is not run again.
        agent.lease.registered(sent_at=agent.lease._clock(), ttl=TTL)
        await agent.apply_desired(desired(solo, web))
        agent.workers["web-a"].request_stop()

    asyncio.run(scenario())
    assert started == ["solo-a", "web-a"]
    status = agent.workers["solo-a"].status
    assert status.state == pb.INSTANCE_STATE_FAILED and status.reason == FENCED_REASON
    assert "onNodeLost: Stop" in status.message
    report = {r.name: r.status.reason for r in agent._full_report().instances}
    assert report["solo-a"] == FENCED_REASON


def test_a_stop_apps_instance_is_not_started_while_the_lease_has_lapsed(tmp_path, monkeypatch):
    agent, _ = make_agent(tmp_path, monkeypatch)

    async def scenario() -> None:
        await agent.apply_desired(desired(app_instance("solo-a", pb.NODE_LOST_ACTION_STOP)))
        task = agent.workers["solo-a"].task
        assert task is not None
        await task

    asyncio.run(scenario())
    assert agent.workers["solo-a"].status.reason == FENCED_REASON


def test_a_restarted_agent_fences_unclaimed_containers_of_stop_apps_once_the_saved_bound_passed(tmp_path, monkeypatch):
    fencing.save(tmp_path / "fencing.json", 1.0, ["solo-a"])  # long past on this boot
    agent, _ = make_agent(tmp_path, monkeypatch)
    killed: list[str] = []
    monkeypatch.setattr(agent.runtime, "kill", lambda name, sig: killed.append(name))
    agent._adoptable = {"solo-a": None, "web-a": None}  # type: ignore[dict-item]
    agent.lease.check()
    assert killed == ["solo-a"] and set(agent.fenced) == {"solo-a"}
