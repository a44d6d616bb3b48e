"""resolv.conf: the node's (where to forward other names) and the containers' (ask us).

A container's resolv.conf names its bridge gateway, where its node's agent
answers, and searches its own app's names first, then the cluster's, then the
node's own search domains, as Kubernetes' ClusterFirst policy does:

    search web.orch orch <the node's search domains>
    nameserver 10.88.1.1
    options ndots:2

ndots:2 lets `<instance>.<app>` (one dot) go through the search list first;
`web.orch` and external names are tried with the search list too, which costs
local NXDOMAINs only (answered here, never forwarded), unless the node's own
search domains turn them into forwarded queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["HostResolver", "container_resolv_conf", "parse_resolv_conf", "read_resolv_conf"]

NDOTS = 2
MAX_SEARCH = 6  # glibc before 2.26 reads six search domains; keep the list short


@dataclass(frozen=True, slots=True)
class HostResolver:
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()


def parse_resolv_conf(text: str) -> HostResolver:
    """nameserver and search/domain lines (the last search or domain line wins, as in glibc)."""
    servers: list[str] = []
    search: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append(words[1])
        elif len(words) >= 2 and words[0] in ("search", "domain"):
            search = words[1:]
    return HostResolver(tuple(servers), tuple(s.strip(".") for s in search if s.strip(".")))


def read_resolv_conf(path: Path) -> HostResolver:
    try:
        return parse_resolv_conf(path.read_text())
    except OSError:
        return HostResolver()  # no upstream: other names get SERVFAIL


def container_resolv_conf(gateway: str, app: str, domain: str, host: HostResolver) -> str:
    domain = domain.strip(".")
    ours = [f"{app}.{domain}", domain] if app else [domain]
    search = list(dict.fromkeys([*ours, *host.search]))[:MAX_SEARCH]
    return f"search {' '.join(search)}\nnameserver {gateway}\noptions ndots:{NDOTS}\n"
