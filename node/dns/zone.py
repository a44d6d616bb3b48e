"""The cluster's names, and the answer to one query about them (pure).

    <app>.<domain>             A: the app's virtual IP if it has a service, else the
                               addresses of its ready instances (any node)
    <instance>.<app>.<domain>  A: that instance's address while it runs, ready or not
                               (peers find each other while they start)
    anything else in <domain>  NXDOMAIN; an app or instance that exists but has no
                               address of the asked type: NOERROR without answers (NODATA)

Answers carry TTL 5 s, and negative ones an SOA whose minimum is 5 s, so a
cache in the container never keeps a stale answer longer (RFC 2308). Names
outside the domain are not ours: `respond` returns None and the server
forwards them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from orch.v1 import agent_pb2 as apb

__all__ = ["TTL", "DomainError", "Zone", "build_zone", "check_domain", "respond"]

TTL = 5  # seconds, for answers and (SOA minimum) for negative answers
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class DomainError(ValueError):
    """Not a usable cluster domain; the message says why."""


def check_domain(text: str) -> str:
    """The cluster domain without its trailing dot ("orch", "cluster.local")."""
    domain = text.strip().strip(".").lower()
    labels = domain.split(".")
    if not domain or not all(_LABEL.fullmatch(label) for label in labels):
        raise DomainError(f'"{text}" is not a domain name: DNS labels of a-z, 0-9 and "-", separated by dots')
    if len(domain) > 200:  # room for <instance>.<app>. in front (63 + 57 characters)
        raise DomainError(f'"{text}" is too long ({len(domain)} characters, at most 200)')
    return domain


@dataclass(frozen=True, slots=True)
class Zone:
    origin: dns.name.Name  # e.g. "orch."
    apps: Mapping[str, tuple[str, ...]]  # app -> what <app>.<domain> answers
    instances: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (app, instance) -> address

    @property
    def soa(self) -> dns.rrset.RRset:
        text = f"ns.dns.{self.origin} hostmaster.{self.origin} 1 3600 600 86400 {TTL}"
        return dns.rrset.from_text_list(self.origin, TTL, "IN", "SOA", [text])


def origin_of(domain: str) -> dns.name.Name:
    return dns.name.from_text(domain.strip(".") + ".")


def build_zone(endpoints: apb.Endpoints, domain: str) -> Zone:
    apps: dict[str, tuple[str, ...]] = {}
    instances: dict[tuple[str, str], str] = {}
    for app in endpoints.apps:
        ready = tuple(e.ip for e in app.endpoints if e.ready)
        apps[app.app] = (app.service_ip,) if app.service_ip else ready
        for e in app.endpoints:
            instances[(app.app, e.instance)] = e.ip
    return Zone(origin_of(domain), apps, instances)


def lookup(zone: Zone, qname: dns.name.Name) -> tuple[dns.rcode.Rcode, tuple[str, ...]]:
    """(rcode, addresses) for a name in the zone."""
    labels = [label.decode("ascii", "replace").lower() for label in qname.relativize(zone.origin).labels]
    if not labels:  # the zone's apex
        return dns.rcode.NOERROR, ()
    if len(labels) == 1 and labels[0] in zone.apps:
        return dns.rcode.NOERROR, zone.apps[labels[0]]
    if len(labels) == 2 and (labels[1], labels[0]) in zone.instances:
        return dns.rcode.NOERROR, (zone.instances[(labels[1], labels[0])],)
    return dns.rcode.NXDOMAIN, ()


def respond(
    zone: Zone | None, query: dns.message.Message, origin: dns.name.Name, rng: random.Random | None = None
) -> dns.message.Message | None:
    """The answer to query if it asks about origin's names, else None (forward it).

    zone None: the endpoints have not come yet; SERVFAIL makes the client try again.
    rng: shuffles the addresses (round robin among instances); None keeps them sorted."""
    if len(query.question) != 1:
        return _error(query, dns.rcode.FORMERR)
    question = query.question[0]
    if not question.name.is_subdomain(origin):
        return None
    if zone is None:
        return _error(query, dns.rcode.SERVFAIL)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    rcode, addresses = lookup(zone, question.name)
    response.set_rcode(rcode)
    if question.rdtype == dns.rdatatype.SOA and rcode == dns.rcode.NOERROR and question.name == zone.origin:
        response.answer.append(zone.soa)
    elif question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and addresses:
        shown = list(addresses)
        if rng is not None:
            rng.shuffle(shown)
        response.answer.append(dns.rrset.from_text_list(question.name, TTL, "IN", "A", shown))
    else:  # NXDOMAIN, or a name without data of this type: the SOA says how long to remember
        response.authority.append(zone.soa)
    return response


def _error(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response
