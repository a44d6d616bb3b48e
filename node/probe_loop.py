"""Runs one container's probes as node/probe_state.py says, while the container runs.

The worker starts it beside its wait for the container's exit and cancels it at the exit.
Each probe is a blocking call on the agent's probe pool (node/probes.py); the loop itself
only sleeps on the event loop until the next probe is due.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import Executor

from node.probe_state import Restart, due, initial_state, observe, settings_of, wake_at
from node.probes import probe
from node.runtime import Runtime
from orch.v1 import types_pb2 as pb

__all__ = ["run_probes"]

# (ready, message): what the probes say now; called after every probe.
Report = Callable[[bool, str], None]


async def run_probes(
    spec: pb.AppSpec,
    ip: str,
    runtime: Runtime,
    container: str,
    started_at: float,
    report: Report,
    pool: Executor | None = None,
) -> Restart:
    """Until a startup or liveness probe calls for a restart (returned); without those probes,
    until cancelled. started_at: the container's start, time.monotonic() clock."""
    state = initial_state(settings_of(spec), started_at)
    loop = asyncio.get_running_loop()
    while True:
        now = time.monotonic()
        kinds = due(state, now)
        if not kinds:
            wake = wake_at(state)
            if wake is None:
                await asyncio.Event().wait()  # no probes: nothing to do until cancelled
            await asyncio.sleep(max((wake or now) - now, 0.0))
            continue
        for kind in kinds:
            run = functools.partial(probe, getattr(spec, kind.value), ip, runtime, container)
            result = await loop.run_in_executor(pool, run)
            state, restart = observe(state, kind, result.ok, result.detail, time.monotonic())
            report(state.ready, state.message)
            if restart is not None:
                return restart
