"""The agent's copy of the cluster's endpoints: the scheduler's whole view, then the updates
that follow it on the same stream (agent.proto, Endpoints; scheduler/endpoints.py).

Each session starts from nothing: its first Endpoints is whole, and a reconnect (to any
scheduler) starts a new session, so an update always applies to the view its own stream built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orch.v1 import agent_pb2 as apb

__all__ = ["EndpointsView"]


@dataclass(slots=True)
class _App:
    header: apb.AppEndpoints  # name, VIP, service ports; no endpoints
    endpoints: dict[str, apb.Endpoint] = field(default_factory=dict)


class EndpointsView:
    def __init__(self) -> None:
        self._apps: dict[str, _App] = {}
        self._service_cidr = ""

    def reset(self) -> None:
        """A new session: its first message is whole."""
        self._apps.clear()

    def apply(self, msg: apb.Endpoints) -> apb.Endpoints:
        """Applies a whole view or an update; returns the whole view now (what DNS and VIPs use)."""
        if not msg.update:
            self._apps.clear()
        self._service_cidr = msg.service_cidr
        for name in msg.removed_apps:
            self._apps.pop(name, None)
        for entry in msg.apps:
            header = apb.AppEndpoints(app=entry.app, service_ip=entry.service_ip)
            if entry.HasField("service"):
                header.service.CopyFrom(entry.service)
            app = self._apps.setdefault(entry.app, _App(header))
            app.header = header
            for name in entry.removed:
                app.endpoints.pop(name, None)
            for ep in entry.endpoints:
                app.endpoints[ep.instance] = ep
        return self.whole()

    def whole(self) -> apb.Endpoints:
        out = apb.Endpoints(service_cidr=self._service_cidr)
        for name in sorted(self._apps):
            app = self._apps[name]
            entry = out.apps.add()
            entry.CopyFrom(app.header)
            entry.endpoints.extend(app.endpoints[n] for n in sorted(app.endpoints))
        return out
