"""What the Runtime hands the shim (spec.json): the config plus what was resolved on the host.

The Runtime resolves everything that can fail (user names, capability names,
rlimits) before the shim starts, so a bad config is a RuntimeStartError and
the container's init only applies numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.runtime.init import InitPlan
from node.runtime.layout import ContainerDir
from node.runtime.model import (
    DEFAULT_PATH,
    SECCOMP_DEFAULT,
    SECCOMP_UNCONFINED,
    ContainerConfig,
    Mount,
    SecretMount,
)
from node.runtime.native import NativeBinaries
from node.runtime.seccomp import FilterCache
from node.runtime.security import Identity, cap_mask, cap_names, resolve_user, rlimit_numbers
from node.runtime.userns import IDS_PER_CONTAINER

__all__ = ["ShimSpec"]

ROOT = Identity(0, 0, (0,))

_TUPLES = {"argv", "cap_add", "cap_drop", "dns"}
NOT_BUILT = NativeBinaries(Path(), Path())  # a spec.json of before native.py: the Python path


def _config_to_json(c: ContainerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(c):
        if f.name == "secret_env":
            continue  # never on disk (model.py)
        value = getattr(c, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif f.name == "mounts":
            value = [dataclasses.asdict(m) | {"root": str(m.root)} for m in value]
        elif f.name == "secret_mounts":
            value = [m.target for m in value]  # where they go; never the files (model.py)
        elif isinstance(value, tuple):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        elif f.name == "rlimits":
            value = {k: list(v) for k, v in value.items()}
        elif f.name in ("env", "hosts"):
            value = dict(value)
        out[f.name] = value
    return out


def _config_from_json(c: dict[str, Any]) -> ContainerConfig:
    known = {f.name for f in dataclasses.fields(ContainerConfig)}
    kw: dict[str, Any] = {k: v for k, v in c.items() if k in known}
    kw["rootfs"], kw["log_path"] = Path(c["rootfs"]), Path(c["log_path"])
    for name in _TUPLES & kw.keys():
        kw[name] = tuple(kw[name])
    kw["lower_dirs"] = tuple(Path(p) for p in kw.get("lower_dirs", ()))
    kw["mounts"] = tuple(Mount(**(m | {"root": Path(m["root"])})) for m in kw.get("mounts", ()))
    kw["secret_mounts"] = tuple(SecretMount(str(target)) for target in kw.get("secret_mounts", ()))
    if "rlimits" in kw:
        kw["rlimits"] = {k: (int(v[0]), int(v[1])) for k, v in kw["rlimits"].items()}
    return ContainerConfig(**kw)


@dataclass(frozen=True, slots=True)
class ShimSpec:
    config: ContainerConfig
    cgroup_driver: str  # "v1" | "v2"
    cgroup_root: Path
    cgroup_path: str  # <cgroup_parent>/<id>
    identity: Identity = ROOT
    caps: int = 0
    rlimits: tuple[tuple[int, int, int], ...] = ()
    userns_host_id: int = -1  # host id of container root in its user namespace; -1 = none
    # The Runtime has an on_netns hook: the shim reports the netns and waits for "go" before exec.
    netns_hook: bool = True
    fault_step: str = ""  # test seam: see InitPlan.fault_step
    seccomp_program: str = ""  # the compiled filter's file (seccomp/cache.py); "" = unconfined
    native: NativeBinaries = NOT_BUILT  # orch-shim, orch-init (native.py)

    @classmethod
    def resolve(
        cls,
        config: ContainerConfig,
        driver: str,
        root: Path,
        path: str,
        userns_host_id: int = -1,
        netns_hook: bool = True,
        seccomp: FilterCache | None = None,
        native: NativeBinaries = NOT_BUILT,
    ) -> ShimSpec:
        """Raises ValueError for an unknown user, group, capability, rlimit or seccomp mode, or an
        unusable /etc/passwd or /etc/group (read across all the image's layers, inside the image);
        SeccompError when the filter cannot be built."""
        identity = resolve_user(config.lower_dirs or (config.rootfs,), config.user)
        if userns_host_id >= 0 and max(identity.uid, identity.gid, *identity.groups) >= IDS_PER_CONTAINER:
            raise ValueError(
                f"user {config.user!r}: ids above {IDS_PER_CONTAINER - 1} are not mapped in the user namespace"
            )
        caps = cap_mask(config.cap_add, config.cap_drop)
        rlimits = tuple(rlimit_numbers(config.rlimits))
        program = _seccomp_program(config.seccomp, caps, seccomp)
        return cls(
            config,
            driver,
            root,
            path,
            identity,
            caps,
            rlimits,
            userns_host_id,
            netns_hook,
            seccomp_program=program,
            native=native,
        )

    def to_json(self) -> dict[str, Any]:
        i = self.identity
        return {
            "version": 2,
            "config": _config_to_json(self.config),
            "cgroup": {"driver": self.cgroup_driver, "root": str(self.cgroup_root), "path": self.cgroup_path},
            "identity": {"uid": i.uid, "gid": i.gid, "groups": list(i.groups)},
            "caps": self.caps,
            "rlimits": [list(r) for r in self.rlimits],
            "userns": {"host_id": self.userns_host_id} if self.userns_host_id >= 0 else None,
            "netns_hook": self.netns_hook,
            "seccomp": {"program": self.seccomp_program} if self.seccomp_program else None,
            "native": {"shim": str(self.native.shim), "init": str(self.native.init)},
        } | ({"fault_step": self.fault_step} if self.fault_step else {})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShimSpec:
        cg, i = data["cgroup"], data.get("identity", {"uid": 0, "gid": 0, "groups": [0]})
        rlimits = tuple((int(r[0]), int(r[1]), int(r[2])) for r in data.get("rlimits", []))
        identity = Identity(int(i["uid"]), int(i["gid"]), tuple(i["groups"]))
        caps = int(data.get("caps", cap_mask()))
        userns = data.get("userns") or {"host_id": -1}
        config = _config_from_json(data["config"])
        host_id, hook, fault = (
            int(userns["host_id"]),
            bool(data.get("netns_hook", True)),
            str(data.get("fault_step", "")),
        )
        program = str((data.get("seccomp") or {}).get("program", ""))
        cgroup = (cg["driver"], Path(cg["root"]), cg["path"])
        paths = data.get("native") or {}
        native = NativeBinaries(Path(paths.get("shim", "")), Path(paths.get("init", "")))
        return cls(
            config, *cgroup, identity, caps, rlimits, host_id, hook, fault, seccomp_program=program, native=native
        )

    def init_plan(self, cdir: ContainerDir, userns_fd: int = -1) -> InitPlan:
        """Reads the seccomp program: call it where the host's state dir is in reach (OSError)."""
        c = self.config
        env = dict(c.env)
        env.setdefault("PATH", DEFAULT_PATH)
        if self.identity.uid == 0:
            env.setdefault("HOME", "/root")
        return InitPlan(
            lower=":".join(str(p) for p in c.lower_dirs) if c.lower_dirs else str(c.rootfs),
            upper=str(cdir.upper),
            work=str(cdir.work),
            merged=str(cdir.rootfs),
            hostname=c.hostname or c.id,
            working_dir=c.working_dir or "/",
            argv=c.argv,
            env=env,
            read_only_rootfs=c.read_only_rootfs,
            etc_files=tuple((path, str(src)) for path, src in cdir.etc.items()),
            uid=self.identity.uid,
            gid=self.identity.gid,
            groups=self.identity.groups,
            caps=self.caps,
            ambient=cap_mask(c.cap_add, default=()) if c.cap_add else 0,
            rlimits=self.rlimits,
            userns_fd=userns_fd,
            userns_root=max(self.userns_host_id, 0),
            idmapped_dir=str(cdir.idmapped),
            fault_step=self.fault_step,
            seccomp_program=Path(self.seccomp_program).read_bytes() if self.seccomp_program else b"",
            mounts=c.mounts,
            secret_targets=tuple(m.target for m in c.secret_mounts),
        )


def _seccomp_program(mode: str, caps: int, cache: FilterCache | None) -> str:
    if mode == SECCOMP_UNCONFINED:
        return ""
    if mode != SECCOMP_DEFAULT:
        raise ValueError(f"seccomp {mode!r}: expected {SECCOMP_DEFAULT!r} or {SECCOMP_UNCONFINED!r}")
    if cache is None:
        raise ValueError("seccomp: this runtime has no profile; use seccomp=unconfined")
    return str(cache.program_for(cap_names(caps)))
