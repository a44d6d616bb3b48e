"""orch's container runtime: real Linux containers, one supervisor ("shim") each.

Vocabulary:
    state_dir      where every container's files live (<state_dir>/<id>/, see layout.py)
    cgroup_parent  relative cgroup path ("orch/node-1"); a container's cgroup is
                   <controller root>/<cgroup_parent>/<id>
    shim           `python -m node.runtime.shim`: forks PID 1, waits, writes exit.json;
                   it outlives the agent, so containers survive an agent restart
    init steps     the ordered setup PID 1 runs before exec (init.py)

Modules: model (data), errors, runtime (Runtime), shim + shim_client (the
handshake), init (PID 1 steps), sys (the syscall seam), cgroups/ (v1, v2).
"""

from node.runtime.cgroups import CgroupDriver, CgroupStats, Limits
from node.runtime.errors import CgroupWriteError, ContainerError, NotFound, RuntimeStartError
from node.runtime.model import ContainerConfig, ContainerState, ContainerStatus
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
    "NotFound",
    "Runtime",
    "RuntimeStartError",
]
