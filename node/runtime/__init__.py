"""orch's container runtime: real Linux containers, one supervisor ("shim") each.

Vocabulary:
    state_dir      where every container's files live (<state_dir>/<id>/, see layout.py)
    cgroup_parent  relative cgroup path ("orch/node-1"); a container's cgroup is
                   <controller root>/<cgroup_parent>/<id>
    zygote         a fork server per state dir (zygote.py): forks a shim in ~2 ms
                   instead of starting a Python interpreter (~100 ms)
    shim           one supervisor per container: forks PID 1 and drives its start
                   (Python), then execs orch-shim (C), which copies its output into
                   the log, waits and writes exit.json; it outlives the agent and the
                   zygote, so containers survive an agent restart
    init steps     the ordered setup PID 1 runs before exec (init.py): SETUP_STEPS
                   (namespaces, mounts) then EXEC_STEPS (cgroup ns, rlimits, caps, ids)
    PID 1          the command itself; with init=True, orch-init (C), a tiny init
                   that forwards signals to the command and reaps zombies

Modules: model (data), errors, runtime (Runtime), shim + shim_client + zygote
(the handshake), init (PID 1 steps), native (the C programs: build, sealed copy),
exits (what an exit means), security (caps, users, rlimits), logs (CRI log
format, rotation, read_logs), sys (the syscall seam), beneath + mountapi (volumes:
paths resolved under a root with openat2, trees bound with the new mount API), cgroups/ (v1, v2).
See docs/runtime.md.
"""

from node.runtime.cgroups import CgroupDriver, CgroupStats, Limits
from node.runtime.errors import CgroupWriteError, ContainerError, NotFound, RuntimeStartError
from node.runtime.model import ContainerConfig, ContainerState, ContainerStatus, Mount
from node.runtime.runtime import Runtime

__all__ = [
    "CgroupDriver",
    "CgroupStats",
    "CgroupWriteError",
    "ContainerConfig",
    "ContainerError",
    "ContainerState",
    "ContainerStatus",
    "Limits",
    "Mount",
    "NotFound",
    "Runtime",
    "RuntimeStartError",
]
