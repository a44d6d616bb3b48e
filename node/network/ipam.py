"""Host-local IP address management, persisted as one file per address.

``<state_dir>/<ip>`` exists while ``ip`` is allocated; its content is the
instance name. A file is published with link(2), which fails with EEXIST if
the name is taken, so two allocations (threads, processes, or an agent and
its restarted self) can never get one address, and a file is never seen
half-written. The network, gateway (first host) and broadcast addresses are
never handed out.

Like CNI's host-local plugin, allocation continues round-robin after the last
address handed out (``<state_dir>/last``), so a just-released address is not
reused at once while peers may still hold it in their ARP caches.

A file that cannot be read (empty after a host crash, not text, not a file) is
set aside as ``<ip>.corrupt-<time>`` with a warning, and its address is
quarantined: its owner is unknown and may still use it, so it is not handed
out again until clear() (the node's teardown).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from node.network.errors import AddressExhausted, ConfigError, StateError
from node.network.model import parse_subnet
from node.runtime.layout import CORRUPT, set_aside
from orch.files import fsync_dir, write_atomic
from orch.trees import remove_tree

_LAST = "last"
_TMP_PREFIX = ".tmp-"


def check_instance(instance: str) -> str:
    """Instance names are stored as file content: one printable line."""
    if not instance or not instance.isprintable():
        raise ConfigError(f"instance name {instance!r}: want a non-empty printable string")
    return instance


class Ipam:
    """Address allocations of one subnet, stored under ``state_dir``."""

    def __init__(self, subnet: str, state_dir: Path) -> None:
        self._net = parse_subnet(subnet)
        self._dir = state_dir

    def allocate(self, instance: str) -> ipaddress.IPv4Address:
        """Return ``instance``'s address, allocating a free one if it has none."""
        check_instance(instance)
        allocations = self._read_all()
        for ip, owner in allocations.items():
            if owner == instance:
                return ip
        self._ensure_dir()
        for ip in self._candidates(set(allocations) | self._quarantined()):
            if self._publish(ip, instance):
                self._write_last(ip)
                return ip
        raise AddressExhausted(str(self._net))

    def lookup(self, instance: str) -> ipaddress.IPv4Address | None:
        """``instance``'s address, or None."""
        return next((ip for ip, owner in self._read_all().items() if owner == instance), None)

    def release(self, instance: str) -> None:
        """Free every address held by ``instance``; a no-op if it holds none."""
        for ip, owner in self._read_all().items():
            if owner == instance:
                self._unlink(self._dir / str(ip))

    def allocations(self) -> dict[ipaddress.IPv4Address, str]:
        """Every allocated address and its owner."""
        return self._read_all()

    def clear(self) -> None:
        """Remove every file this class writes, then the directory if it is empty."""
        for name in self._listdir():
            path = self._dir / name
            if CORRUPT in name and self._parse(name.partition(CORRUPT)[0]) is not None:
                if path.is_dir() and not path.is_symlink():  # set aside: not even a file
                    with contextlib.suppress(OSError):
                        remove_tree(path)
                else:
                    self._unlink(path)
            elif name == _LAST or name.startswith((_TMP_PREFIX, f".{_LAST}.")) or self._parse(name) is not None:
                self._unlink(path)
        with contextlib.suppress(OSError):  # missing, or holds someone else's files: leave it
            self._dir.rmdir()

    # -- internals ---------------------------------------------------------

    def _candidates(self, taken: set[ipaddress.IPv4Address]) -> Iterator[ipaddress.IPv4Address]:
        # Assignable: network+2 (network+1 is the gateway) .. broadcast-1.
        first = int(self._net.network_address) + 2
        count = int(self._net.broadcast_address) - first
        last = self._read_last()
        start = int(last) - first + 1 if last is not None and int(last) >= first else 0
        for offset in range(count):
            ip = ipaddress.IPv4Address(first + (start + offset) % count)
            if ip not in taken:
                yield ip

    def _publish(self, ip: ipaddress.IPv4Address, instance: str) -> bool:
        """Atomically create ``<ip>`` holding ``instance``; False if it already exists."""
        tmp = self._dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(tmp, "w") as f:
                f.write(instance)
                f.flush()
                os.fsync(f.fileno())  # an allocation outlives a reboot: never an empty file after one
            os.link(tmp, self._dir / str(ip))
            fsync_dir(self._dir)
            return True
        except FileExistsError:
            return False  # lost a race for this address: try the next one
        except OSError as exc:
            raise StateError(str(self._dir / str(ip)), "create", exc.errno or 0) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _read_all(self) -> dict[ipaddress.IPv4Address, str]:
        out: dict[ipaddress.IPv4Address, str] = {}
        for name in self._listdir():
            ip = self._parse(name)
            if ip is None:
                continue
            path = self._dir / name
            try:
                owner = path.read_text()
            except FileNotFoundError:
                continue  # released while we listed
            except (OSError, ValueError) as exc:  # not a file, unreadable, not UTF-8
                set_aside(path, str(exc))
                continue
            if owner and owner.isprintable():
                out[ip] = owner
            else:
                set_aside(path, f"owner {owner!r} is not an instance name")
        return out

    def _quarantined(self) -> set[ipaddress.IPv4Address]:
        """Addresses whose file was set aside: owner unknown, maybe still in use."""
        names = (name.partition(CORRUPT)[0] for name in self._listdir() if CORRUPT in name)
        return {ip for ip in map(self._parse, names) if ip is not None}

    def _parse(self, name: str) -> ipaddress.IPv4Address | None:
        try:
            ip = ipaddress.IPv4Address(name)
        except ValueError:
            return None
        return ip if ip in self._net else None

    def _listdir(self) -> list[str]:
        try:
            return os.listdir(self._dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(str(self._dir), "list", exc.errno or 0) from exc

    def _ensure_dir(self) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(str(self._dir), "mkdir", exc.errno or 0) from exc

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StateError(str(path), "unlink", exc.errno or 0) from exc

    def _read_last(self) -> ipaddress.IPv4Address | None:
        try:
            return self._parse((self._dir / _LAST).read_text().strip())
        except OSError:
            return None  # only a hint: start from the bottom

    def _write_last(self, ip: ipaddress.IPv4Address) -> None:  # a hint: no fsync
        with contextlib.suppress(OSError):  # only a hint: losing it costs nothing
            write_atomic(self._dir / _LAST, str(ip).encode(), fsync=False)
