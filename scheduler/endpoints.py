"""The cluster's endpoints for the agents' DNS servers and VIP rules.

Every agent needs the same cluster-wide view: each app with its virtual IP and
the address of each of its running instances, on any node, marked ready or
not. `endpoints_of` computes it from the cache (pure); `EndpointsFeed`
recomputes it when the cache changes and wakes the agent sessions only when
it really changed, so a status report that moves no endpoint costs the
sessions nothing. Each session then sends the whole message (level-triggered,
like desired sets): a lost or reordered update heals at the next one.

What counts: an instance the scheduler still wants (desired RUN) that its node
reports Running with an address. `ready` is the readiness rule of the
reconciler (`rollout.is_ready`): an instance that stops being ready, or is
told to stop, leaves `<app>.<domain>` and the VIP at the next update, before
its container is gone.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler.cache import ClusterCache
from scheduler.rollout import is_ready
from scheduler.snapshot import wants_to_run

__all__ = ["EndpointsFeed", "endpoints_of"]


def _serves(inst: pb.Instance) -> bool:
    return (
        wants_to_run(inst)
        and bool(inst.node)
        and inst.status.state == pb.INSTANCE_STATE_RUNNING
        and bool(inst.status.ip)
    )


def _own_spec(inst: pb.Instance) -> pb.AppSpec | None:
    return inst.spec


def endpoints_of(
    apps: Mapping[str, pb.App],
    instances: Iterable[pb.Instance],
    service_cidr: str,
    template_of: Callable[[pb.Instance], pb.AppSpec | None] = _own_spec,
) -> apb.Endpoints:
    """Every app (sorted), each with its running instances (sorted by name). template_of: where an
    instance's probes are found (the cache's instances carry no spec); without one it serves nobody."""
    by_app: dict[str, list[apb.Endpoint]] = defaultdict(list)
    for inst in instances:
        if inst.app in apps and _serves(inst) and (template := template_of(inst)) is not None:
            ready = is_ready(inst, template)
            by_app[inst.app].append(apb.Endpoint(instance=inst.name, ip=inst.status.ip, node=inst.node, ready=ready))
    out = apb.Endpoints(service_cidr=service_cidr)
    for name in sorted(apps):
        app = apps[name]
        entry = out.apps.add(app=name, service_ip=app.service_ip)
        if app.spec.HasField("service"):
            entry.service.CopyFrom(app.spec.service)
        entry.endpoints.extend(sorted(by_app.get(name, ()), key=lambda e: e.instance))
    return out


class EndpointsFeed:
    """The current endpoints, and who to wake when they change (on the event loop)."""

    def __init__(self, cache: ClusterCache, service_cidr: str) -> None:
        self._cache = cache
        self.service_cidr = service_cidr
        self.message = apb.Endpoints(service_cidr=service_cidr)
        self.version = 0  # bumped on every real change; sessions compare it with what they sent
        self._body = b""
        self._listeners: list[Callable[[], None]] = []
        self._scheduled = False
        cache.on_any_change(self._changed)

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self) -> None:
        # Watch batches that arrive together are folded into one recomputation.
        if self._scheduled:
            return
        self._scheduled = True
        try:
            asyncio.get_running_loop().call_soon(self.refresh)
        except RuntimeError:  # no loop (tests, a synchronous caller): now
            self.refresh()

    def refresh(self) -> None:
        self._scheduled = False
        apps = {name: v.value for name, v in self._cache.apps.items()}
        insts = (v.value for v in self._cache.instances.values())
        msg = endpoints_of(apps, insts, self.service_cidr, self._cache.template_of)
        body = msg.SerializeToString(deterministic=True)
        if body == self._body:
            return
        self._body, self.message = body, msg
        self.version += 1
        for listener in list(self._listeners):
            listener()
