"""`orch rollout status|history|undo APP`: kubectl's rollout commands over an app's generations.

`status` follows the scheduler's Watch stream (a message after each change), asking for the
app again each time, and says what it waits for in kubectl's words. It exits 0 once the
rollout is done, 1 when the scheduler found it stuck (ProgressDeadlineExceeded:
scheduler/rollout.py) or when --timeout passed first.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable

import click
import grpc

from cli.client import RETRYABLE, Client, CliError, describe_rpc_error
from cli.output import age, table
from cli.render import manifest_yaml
from orch.states import ROLLOUT_DEADLINE_EXCEEDED
from orch.templates import with_template
from orch.v1 import api_pb2 as api
from orch.v1 import types_pb2 as pb

CURRENT = " (current)"


class Outcome(enum.Enum):
    WAITING = "waiting"
    DONE = "done"
    STUCK = "stuck"


def judge(info: api.AppInfo) -> tuple[Outcome, str]:
    """Where the rollout is, and the line that says so (kubectl rollout status's wording)."""
    app, seen = info.app, info.rollout
    name, desired = app.spec.name, app.spec.replicas
    if app.rollout.generation == app.generation and app.rollout.reason == ROLLOUT_DEADLINE_EXCEEDED:
        return Outcome.STUCK, f'error: app "{name}" exceeded its progress deadline: {app.rollout.message}'
    if seen.done:
        return Outcome.DONE, f'app "{name}" successfully rolled out (generation {app.generation})'
    waiting = f'Waiting for app "{name}" rollout to finish: '
    if seen.updated < desired:
        return Outcome.WAITING, waiting + f"{seen.updated} out of {desired} new replicas have been updated..."
    if seen.old:
        return Outcome.WAITING, waiting + f"{seen.old} old replicas are pending termination..."
    if seen.available < seen.updated:
        return Outcome.WAITING, waiting + f"{seen.available} of {seen.updated} updated replicas are available..."
    return Outcome.WAITING, waiting + f"{seen.updated - desired} extra replicas are pending termination..."


def status(c: Client, name: str, timeout: float) -> None:
    """Follow the rollout until it is done; CliError when it is stuck or timeout (s, 0: none) passes."""
    until = time.monotonic() + timeout if timeout > 0 else None
    last = ""

    def check() -> bool:
        nonlocal last
        info = c.call(lambda s: s.GetApp(api.GetAppRequest(name=name), timeout=c.timeout))
        outcome, line = judge(info)
        if outcome is Outcome.STUCK:
            raise CliError(line)
        if line != last:
            click.echo(line)
            last = line
        if outcome is Outcome.WAITING and until is not None and time.monotonic() >= until:
            raise CliError(f"error: timed out after {timeout:g}s waiting for the rollout of app {name!r}")
        return outcome is Outcome.DONE

    if not check():
        _follow(c, check, until)


def _follow(c: Client, check: Callable[[], bool], until: float | None) -> None:
    """check() after every change the scheduler reports, until it returns True or raises; at the
    deadline once more (it raises then). Polls once a second against a scheduler without Watch."""
    warned = False
    while True:
        try:
            for _ in c.watch(until):
                warned = False
                if check():
                    return
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                while not check():
                    time.sleep(1.0)
                return
            if code not in RETRYABLE:
                raise CliError(describe_rpc_error(e, ",".join(c.addresses))) from None
            if until is not None and time.monotonic() >= until:
                check()  # raises the timeout, or finds it done after all
                return
            if not warned:
                click.echo(f"watch: {describe_rpc_error(e, ','.join(c.addresses))}; retrying every second", err=True)
                warned = True
        time.sleep(1.0)


def history(c: Client, name: str, generation: int, fmt: str) -> None:
    """The kept generations (kubectl rollout history), or one's template as a manifest."""
    resp = c.call(lambda s: s.RolloutHistory(api.RolloutHistoryRequest(app=name), timeout=c.timeout))
    kept = {g.generation: g for g in resp.generations}
    if generation:
        if generation not in kept:
            listed = ", ".join(str(g) for g in sorted(kept)) or "none"
            raise CliError(f'Error: generation {generation} of app "{name}" is not kept (kept: {listed})')
        info = c.call(lambda s: s.GetApp(api.GetAppRequest(name=name), timeout=c.timeout))
        click.echo(_template_yaml(info.app, kept[generation]), nl=False)
        return
    if fmt == "json":
        click.echo(json.dumps([_row(g, resp.current) for g in resp.generations], indent=2))
        return
    click.echo(f"app/{name}")
    lines = []
    for g in resp.generations:
        created = g.created_at.ToJsonString()
        lines.append([g.generation, created, age(created), g.change_cause + CURRENT * (g.generation == resp.current)])
    click.echo(table(["GENERATION", "CREATED", "AGE", "CHANGE-CAUSE"], lines))


def _row(g: pb.AppGeneration, current: int) -> dict[str, object]:
    return {
        "generation": g.generation,
        "current": g.generation == current,
        "createdAt": g.created_at.ToJsonString(),
        "changeCause": g.change_cause,
    }


def _template_yaml(app: pb.App, g: pb.AppGeneration) -> str:
    """The manifest that generation's template makes under the app's replicas and labels now:
    what `orch rollout undo --to-generation` would apply."""
    head = f"# app/{app.spec.name} generation {g.generation}, {g.created_at.ToJsonString()}: {g.change_cause}\n"
    return head + manifest_yaml(with_template(app.spec, g.template))


def undo(c: Client, name: str, to: int) -> None:
    req = api.RolloutUndoRequest(app=name, to_generation=to)
    r = c.call(lambda s: s.RolloutUndo(req, timeout=c.timeout))
    back = f"to generation {to}'s template " if to else ""
    click.echo(f"app/{name} rolled back {back}(generation {r.previous_generation} → {r.generation})")
