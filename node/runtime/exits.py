"""What a container's end means: exit.json's record, from the raw facts of the end.

exit.json is written by whoever saw the end: orch-shim (native/orch-shim.c) writes only
facts, {"wait_status", "oom_kills", "finished_at"}; the Python shim, for a start that
failed, the full record. `exit_record` turns facts into the record (exit code, reason,
message) and `normalized` reads either kind, so the policy lives here and only here.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["exit_record", "normalized"]


def exit_record(status: int, oom_kills: int, start_error: str = "", finished_at: float | None = None) -> dict[str, Any]:
    """The record of a waitpid status: shell convention 128+signal, reason as the API names it."""
    signaled = os.WIFSIGNALED(status)
    code = 128 + os.WTERMSIG(status) if signaled else os.WEXITSTATUS(status)
    if start_error:
        reason = "StartError"
    elif oom_kills and code != 0:
        reason = "OOMKilled"
    elif signaled:
        reason = "Killed"
    else:
        reason = "Completed" if code == 0 else "Error"
    message = start_error or (f"killed by signal {os.WTERMSIG(status)}" if signaled else "")
    return {
        "exit_code": code,
        "signal": os.WTERMSIG(status) if signaled else 0,
        "oom_killed": oom_kills > 0,
        "finished_at": time.time() if finished_at is None else finished_at,
        "reason": reason,
        "message": message,
    }


def normalized(ended: dict[str, Any]) -> dict[str, Any]:
    """exit.json as a record, whichever writer made it; a record passes unchanged."""
    if "exit_code" in ended or "wait_status" not in ended:
        return ended
    try:
        status, ooms = int(ended["wait_status"]), int(ended.get("oom_kills", 0))
        finished = float(ended["finished_at"]) if "finished_at" in ended else None
    except (TypeError, ValueError):
        return {"reason": "StateLost", "message": f"exit.json holds no valid wait status: {ended}"}
    return exit_record(status, ooms, finished_at=finished)
