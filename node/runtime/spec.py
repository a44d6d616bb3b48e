"""What the Runtime hands the shim (spec.json): the config plus where its cgroup lives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.runtime.init import InitPlan
from node.runtime.layout import ContainerDir
from node.runtime.model import DEFAULT_PATH, ContainerConfig

__all__ = ["ShimSpec"]


@dataclass(frozen=True, slots=True)
class ShimSpec:
    config: ContainerConfig
    cgroup_driver: str  # "v1" | "v2"
    cgroup_root: Path
    cgroup_path: str  # <cgroup_parent>/<id>

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "version": 1,
            "config": {
                "id": c.id,
                "rootfs": str(c.rootfs),
                "argv": list(c.argv),
                "env": dict(c.env),
                "log_path": str(c.log_path),
                "hostname": c.hostname,
                "working_dir": c.working_dir,
                "cpu_millis": c.cpu_millis,
                "memory_bytes": c.memory_bytes,
                "pids": c.pids,
                "network": c.network,
            },
            "cgroup": {"driver": self.cgroup_driver, "root": str(self.cgroup_root), "path": self.cgroup_path},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShimSpec:
        c = data["config"]
        config = ContainerConfig(
            id=c["id"],
            rootfs=Path(c["rootfs"]),
            argv=tuple(c["argv"]),
            env=dict(c["env"]),
            log_path=Path(c["log_path"]),
            hostname=c["hostname"],
            working_dir=c["working_dir"],
            cpu_millis=c["cpu_millis"],
            memory_bytes=c["memory_bytes"],
            pids=c["pids"],
            network=c["network"],
        )
        cg = data["cgroup"]
        return cls(config, cg["driver"], Path(cg["root"]), cg["path"])

    def init_plan(self, cdir: ContainerDir) -> InitPlan:
        c = self.config
        env = dict(c.env)
        env.setdefault("PATH", DEFAULT_PATH)
        return InitPlan(
            lower=str(c.rootfs),
            upper=str(cdir.upper),
            work=str(cdir.work),
            merged=str(cdir.rootfs),
            hostname=c.hostname or c.id,
            working_dir=c.working_dir or "/",
            argv=c.argv,
            env=env,
            network=c.network,
        )
