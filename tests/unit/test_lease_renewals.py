"""The scheduler's side of self-fencing: a heartbeat hears of its lease's renewal only
through a keep-alive sent after it arrived (scheduler/leases.py), an instance its agent
fenced is replaced, and `onNodeLost` in manifests (issue 10 item 6)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from pathlib import Path

import pytest

from cli.manifest import ManifestError, load_manifests
from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from orch.validation import validate_app_spec
from scheduler.contact import Contact
from scheduler.leases import LeaseKeeper
from scheduler.metrics import SchedulerMetrics
from scheduler.reconcile import reconcile
from scheduler.reconciler_loop import place_pending
from scheduler.sessions import AgentSessionService
from tests.factories import make_app, make_instance, make_node, make_snapshot, make_spec
from tests.fixtures.session_stream import as_received
from tests.unit.test_generations import FakeCache, FakeRegistry, PlaintextContext


class FakeStream:
    def __init__(self, on_response) -> None:
        self.member = "m1"
        self.sent: list[int] = []
        self.answer = on_response  # answer(lease_id, ttl), as etcd's stream thread would

    def send(self, lease_id: int) -> None:
        self.sent.append(lease_id)

    def close(self) -> None:
        pass


class FakeStore:
    def __init__(self) -> None:
        self.contact = Contact(stall=10.0)
        self.streams: list[FakeStream] = []

    def keep_alive_stream(self, on_response, on_error) -> FakeStream:
        self.streams.append(FakeStream(on_response))
        return self.streams[-1]

    def abandon(self, stream: FakeStream) -> None:
        pass


async def tick(keeper: LeaseKeeper) -> None:
    await asyncio.sleep(keeper.interval * 1.5)


def test_a_heartbeat_hears_only_of_renewals_by_keep_alives_sent_after_it_arrived():
    async def scenario() -> list[tuple[str, int]]:
        store = FakeStore()
        keeper = LeaseKeeper(store, interval=0.05)  # type: ignore[arg-type]
        heard: list[tuple[str, int]] = []
        task = asyncio.create_task(keeper.run())
        keeper.mark(7, lambda: None, lambda ttl: heard.append(("beat-1", ttl)))
        await tick(keeper)
        [stream] = store.streams
        assert stream.sent == [7]
        # beat-2 arrives after that keep-alive went out: its answer is not beat-2's renewal.
        keeper.mark(7, lambda: None, lambda ttl: heard.append(("beat-2", ttl)))
        stream.answer(7, 1)
        await asyncio.sleep(0.01)
        assert heard == [("beat-1", 1)]
        await tick(keeper)
        assert stream.sent == [7, 7]
        stream.answer(7, 1)
        await asyncio.sleep(0.01)
        task.cancel()
        return heard

    assert asyncio.run(scenario()) == [("beat-1", 1), ("beat-2", 1)]


def test_no_renewal_is_heard_from_an_expired_lease_or_a_stream_given_up():
    async def scenario() -> tuple[list[str], list[int]]:
        store = FakeStore()
        keeper = LeaseKeeper(store, interval=0.05)  # type: ignore[arg-type]
        heard: list[str] = []
        expired: list[int] = []
        task = asyncio.create_task(keeper.run())
        keeper.mark(7, lambda: expired.append(7), lambda ttl: heard.append("expired-lease"))
        await tick(keeper)
        store.streams[0].answer(7, 0)  # etcd: that lease is gone
        keeper.mark(8, lambda: None, lambda ttl: heard.append("old-stream"))
        await tick(keeper)
        keeper._broken = True  # the stream broke: the next tick opens another
        keeper.mark(8, lambda: None, lambda ttl: heard.append("new-stream"))
        await tick(keeper)
        assert len(store.streams) == 2
        store.streams[0].answer(8, 1)  # late, from the stream given up
        await asyncio.sleep(0.01)
        assert heard == []
        store.streams[1].answer(8, 1)
        await asyncio.sleep(0.01)
        task.cancel()
        return heard, expired

    assert asyncio.run(scenario()) == (["new-stream"], [7])


def test_an_instance_its_agent_fenced_is_replaced():
    app = make_app(make_spec(replicas=1))
    fenced = make_instance(app, "solo-1", "a", state=pb.INSTANCE_STATE_FAILED, ready=False)
    fenced.status.reason = "NodeLost"
    snap = make_snapshot([app], [make_node("a"), make_node("b")], [fenced])
    plan = reconcile(snap, 2000.0, lambda: "s1")
    [(stopped, _)] = plan.update
    assert stopped.name == "solo-1" and stopped.desired == pb.DESIRED_STATE_STOP
    assert "killed it when it lost touch" in stopped.status.message
    [new] = plan.create
    assert not new.avoid_nodes  # the node did nothing wrong: it may take the replacement
    _, n = place_pending(plan, snap, 2000.0)
    assert n == 1


def manifest(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "solo.yaml"
    path.write_text(f"apiVersion: orch/v1\nkind: App\nmetadata: {{name: solo}}\nspec:\n  image: busybox\n{line}")
    return path


@pytest.mark.parametrize(
    ("line", "action"),
    [
        ("", pb.NODE_LOST_ACTION_UNSPECIFIED),
        ("  onNodeLost: Stop\n", pb.NODE_LOST_ACTION_STOP),
        ("  onNodeLost: stop\n", pb.NODE_LOST_ACTION_STOP),
        ("  onNodeLost: Keep\n", pb.NODE_LOST_ACTION_UNSPECIFIED),  # the default: no new generation
    ],
)
def test_on_node_lost_in_a_manifest(tmp_path, line, action):
    [app] = load_manifests([str(manifest(tmp_path, line))])
    assert app.spec.on_node_lost == action


def test_a_bad_on_node_lost_names_file_line_and_field(tmp_path):
    path = manifest(tmp_path, "  onNodeLost: Restart\n")
    with pytest.raises(ManifestError) as e:
        load_manifests([str(path)])
    assert e.value.problems == [f'{path}:6 spec.onNodeLost: expected one of Keep, Stop, got "Restart"']


def test_the_scheduler_refuses_an_unknown_on_node_lost():
    spec = make_spec(replicas=1)
    spec.on_node_lost = 9  # type: ignore[assignment]
    assert [(e.path, e.message) for e in validate_app_spec(spec)] == [
        ("spec.onNodeLost", "unknown action 9: use Keep or Stop")
    ]


def test_the_session_tells_the_agent_which_heartbeat_renewed_its_lease():
    class Keeper:
        renewals: list = []

        def mark(self, lease_id, on_expired, on_renewed=None) -> None:
            self.renewals.append(on_renewed)

        def forget(self, lease_id) -> None:
            pass

    keeper = Keeper()
    cache = FakeCache(revision=15, instances=[pb.Instance(name="web-a", node="n1")])
    service = AgentSessionService(FakeRegistry(), cache, None, SchedulerMetrics(), keeper)  # type: ignore[arg-type]
    inbox: asyncio.Queue[apb.AgentMessage] = asyncio.Queue()

    async def requests():
        while True:
            yield await inbox.get()

    async def scenario() -> None:
        inbox.put_nowait(apb.AgentMessage(register=apb.Register(node="n1")))
        stream = as_received(service.Session(requests(), PlaintextContext()))  # type: ignore[arg-type]
        assert (await anext(stream)).WhichOneof("msg") == "registered"
        assert (await anext(stream)).WhichOneof("msg") == "desired"
        inbox.put_nowait(apb.AgentMessage(heartbeat=apb.Heartbeat(observed_generation=15, seq=5)))
        await asyncio.sleep(0.05)
        nothing = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)
        assert not nothing.done()  # marked, not renewed yet
        [renewed] = keeper.renewals
        renewed(1)  # etcd answered the keep-alive sent after it
        msg = await asyncio.wait_for(nothing, 2)
        assert msg.WhichOneof("msg") == "lease_renewed"
        assert (msg.lease_renewed.seq, msg.lease_renewed.ttl_seconds) == (5, 1)
        follow = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)
        assert not follow.done()  # a reply alone sends no desired set again
        follow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow

    asyncio.run(scenario())


class SlowStream(FakeStream):
    """A starved member: it answers in bursts, everything sent so far at once, the n-th burst
    `gaps[n]` seconds after the one before (the last gap repeats; None: it never answers again)."""

    def __init__(self, on_response, gaps: list[float | None]) -> None:
        super().__init__(on_response)
        self.pending: list[int] = []
        self.gaps = gaps
        self.bursts: asyncio.Task[None] | None = None  # from the first send, on the loop (opened in a thread)

    async def _answer(self, gaps: list[float | None]) -> None:
        for n in itertools.count():
            gap = gaps[min(n, len(gaps) - 1)]
            if gap is None:
                return
            await asyncio.sleep(gap)
            answered, self.pending = self.pending, []
            for lease_id in answered:
                self.answer(lease_id, 1)

    def send(self, lease_id: int) -> None:
        super().send(lease_id)
        self.pending.append(lease_id)
        if self.bursts is None:
            self.bursts = asyncio.get_running_loop().create_task(self._answer(self.gaps))

    def close(self) -> None:
        if self.bursts is not None:
            self.bursts.cancel()


class SlowStore(FakeStore):
    def __init__(self, gaps: list[float | None], stall: float) -> None:
        super().__init__()
        self.contact = Contact(stall=stall)
        self.gaps = gaps
        self.abandoned: list[FakeStream] = []

    def keep_alive_stream(self, on_response, on_error) -> FakeStream:
        self.streams.append(SlowStream(on_response, self.gaps))
        return self.streams[-1]

    def abandon(self, stream: FakeStream) -> None:
        self.abandoned.append(stream)
        stream.close()


async def keep_beating(keeper: LeaseKeeper, seconds: float) -> None:
    """A heartbeat every tick for lease 7, as a live agent's, for `seconds`."""
    task = asyncio.create_task(keeper.run())
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        keeper.mark(7, lambda: None)
        await asyncio.sleep(keeper.interval)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_a_member_that_answers_slowly_but_surely_keeps_its_stream():
    """etcd answers in bursts further and further apart, from 40 ms to 1.5 stalls (a starved
    machine): each burst still comes within the lease, so the stream is kept. Given up at the
    first gap longer than the stall, it was re-opened on every member in turn, each as starved,
    while no lease was renewed."""

    async def scenario() -> tuple[SlowStore, LeaseKeeper]:
        store = SlowStore([0.04, 0.08, 0.12, 0.16, 0.2, 0.24, 0.28, 0.3], stall=0.2)
        keeper = LeaseKeeper(store, interval=0.05)  # type: ignore[arg-type]
        await keep_beating(keeper, 2.0)
        return store, keeper

    store, keeper = asyncio.run(scenario())
    assert store.abandoned == [] and len(store.streams) == 1
    assert 0.2 < keeper.patience() <= 0.4  # more than a stall, at most a lease (two)


def test_a_member_that_stops_answering_is_left_after_the_stall_when_it_was_quick():
    """With quick answers so far, silence means the member is gone: the stream is given up
    after the stall, not the longer patience a slow etcd earns."""

    async def scenario() -> tuple[SlowStore, float]:
        store = SlowStore([0.05] * 10 + [None], stall=0.2)
        keeper = LeaseKeeper(store, interval=0.05)  # type: ignore[arg-type]
        started = asyncio.get_running_loop().time()
        task = asyncio.create_task(keep_beating(keeper, 2.0))
        while not store.abandoned and asyncio.get_running_loop().time() < started + 3:
            await asyncio.sleep(0.01)
        left_after = asyncio.get_running_loop().time() - started
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return store, left_after

    store, left_after = asyncio.run(scenario())
    # 10 answered ticks (0.5 s), then silence from ~0.5 s: given up a stall (0.2 s) later, give or take a tick.
    assert store.abandoned == [store.streams[0]] and left_after < 0.5 + 0.2 + 0.15
