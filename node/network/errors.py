"""Errors raised by node.network.

    NetworkError
    ├── ConfigError        bad bridge name, subnet or MTU (also a ValueError)
    ├── AddressExhausted   no free address left in the subnet
    ├── StateError         the IPAM state directory could not be read or written
    ├── LinkError          a netlink operation on a link, address or route failed
    ├── NamespaceError     the container's network namespace could not be entered
    └── HostPortNotAllowed this node does not publish that hostPort (portpolicy.py)

Foreign errors (pyroute2's NetlinkError, OSError) are translated where they
happen, with ``raise ... from``, so the cause stays in the traceback.
"""

from __future__ import annotations

import errno as errno_mod
import os


def _errno_text(code: int) -> str:
    name = errno_mod.errorcode.get(code, str(code))
    return f"{name}: {os.strerror(code)}"


class NetworkError(Exception):
    """Base class of every error raised by node.network."""


class ConfigError(NetworkError, ValueError):
    """The NetworkConfig (or an instance name) is not usable."""


class AddressExhausted(NetworkError):
    """Every assignable address of ``subnet`` is allocated."""

    def __init__(self, subnet: str) -> None:
        super().__init__(f"no free address left in {subnet}: detach instances or use a larger subnet")
        self.subnet = subnet


class StateError(NetworkError):
    """Reading or writing an IPAM state file failed."""

    def __init__(self, path: str, op: str, errno: int) -> None:
        super().__init__(f"IPAM state {op} {path}: {_errno_text(errno)}")
        self.path = path
        self.op = op
        self.errno = errno


class LinkError(NetworkError):
    """A netlink request ``op`` (e.g. "add veth") on link ``name`` failed."""

    def __init__(self, name: str, op: str, errno: int) -> None:
        super().__init__(f"{op} {name}: {_errno_text(errno)}")
        self.name = name
        self.op = op
        self.errno = errno


class NamespaceError(NetworkError):
    """The network namespace of process ``pid`` could not be opened or entered."""

    def __init__(self, pid: int, op: str, errno: int) -> None:
        super().__init__(f"{op} netns of pid {pid}: {_errno_text(errno)}")
        self.pid = pid
        self.op = op
        self.errno = errno


class HostPortNotAllowed(NetworkError):
    """The node refuses a hostPort: outside its range, used by the host, or taken."""

    reason = "HostPortNotAllowed"  # the instance status reason the agent reports
