"""The runtime's public data: what to run (ContainerConfig) and what happened (ContainerState)."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_PATH",
    "SECCOMP_DEFAULT",
    "SECCOMP_UNCONFINED",
    "ContainerConfig",
    "ContainerState",
    "ContainerStatus",
    "Mount",
    "SecretFile",
    "SecretMount",
    "valid_id",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SECCOMP_DEFAULT = "default"  # the Runtime's profile (seccomp/default.json or the node's --seccomp-profile)
SECCOMP_UNCONFINED = "unconfined"  # no filter (manifest `seccomp: unconfined`)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def valid_id(id: str) -> bool:
    """Ids become directory and cgroup names, so only DNS-1123 labels are accepted."""
    return bool(_DNS1123_LABEL.match(id))


@dataclass(frozen=True, slots=True)
class Mount:
    """A directory of the node bound into the container (a volume, docs/runtime.md).

    The source is `path` resolved beneath `root` (openat2 RESOLVE_BENEATH: never out of it,
    whatever symlinks the directory holds); "" is `root` itself. `target` is resolved inside
    the container's rootfs (RESOLVE_IN_ROOT), its missing directories created there.
    Always nosuid and nodev; `read_only` recursively. `owned`: with a user namespace, ids
    are shifted so that container root owns what host root owns (an emptyDir).
    """

    root: Path
    path: str
    target: str
    read_only: bool = False
    owned: bool = False


@dataclass(frozen=True, slots=True)
class SecretFile:
    path: str  # relative to the volume's mountPath ("db/password"): orch.secretrefs.item_path_problem
    mode: int  # 0..0o777
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SecretMount:
    """A secret volume: its files on a tmpfs of its own, made in the container's mount namespace
    and attached read-only at `target` (resolved inside the rootfs, like Mount.target), owned by
    the container's user. Only `target` is written to spec.json; the files travel with secret_env.
    """

    target: str
    files: tuple[SecretFile, ...] = ()


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    id: str
    rootfs: Path
    argv: tuple[str, ...]
    env: Mapping[str, str]
    log_path: Path
    hostname: str = ""
    working_dir: str = "/"
    cpu_millis: int = 0
    memory_bytes: int = 0
    pids: int = 0
    # -- added for issue 3; all optional, see docs/runtime.md ---------------
    # False (Docker's default): the command is PID 1. True (`init: true`, docker run --init): PID 1
    # is orch-init (native/orch-init.c), which forwards signals to the command and reaps zombies.
    init: bool = False
    user: str = ""  # "UID[:GID]" or names from the image's /etc/passwd, /etc/group; "" = root
    cap_add: tuple[str, ...] = ()  # "NET_ADMIN" or "CAP_NET_ADMIN"; "ALL"
    cap_drop: tuple[str, ...] = ()
    rlimits: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # "NOFILE": (soft, hard)
    read_only_rootfs: bool = False
    hosts: Mapping[str, str] = field(default_factory=dict)  # extra /etc/hosts entries: name -> ip
    dns: tuple[str, ...] = ()  # nameservers for /etc/resolv.conf; () = a copy of the host's
    resolv_conf: str = ""  # the whole /etc/resolv.conf (the node's DNS, node/dns); wins over dns
    log_max_bytes: int = 10 << 20  # rotate X.log when it would grow past this
    log_max_files: int = 3  # X.log, X.log.1, X.log.2
    # Container ids 0..65535 are a host id block of their own (userns.py); Kubernetes' hostUsers: false.
    user_namespace: bool = False
    # Image layers for the overlay, top layer first; () = `rootfs` is the only lower layer.
    lower_dirs: tuple[Path, ...] = ()
    seccomp: str = SECCOMP_DEFAULT  # or SECCOMP_UNCONFINED
    mounts: tuple[Mount, ...] = ()  # volumes, in order (a later one may sit inside an earlier one)
    # Variables from secrets: never in spec.json (a file on the node's disk). They travel in
    # memory: the zygote's request, the shim, then after "G" to PID 1 (shim.py); zygote only.
    secret_env: Mapping[str, str] = field(default_factory=dict)
    # Files from secrets (secret volumes), the same way; spec.json holds only their targets.
    secret_mounts: tuple[SecretMount, ...] = ()


class ContainerStatus(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"


@dataclass(frozen=True, slots=True)
class ContainerState:
    id: str
    status: ContainerStatus
    pid: int | None
    exit_code: int | None
    oom_killed: bool
    started_at: float | None
    finished_at: float | None
    reason: str
    message: str
