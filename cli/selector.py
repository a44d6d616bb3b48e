"""Label selectors, kubectl's equality-based subset: `-l tier=web,env!=prod,canary,!legacy`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cli.client import UsageError


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.holds(labels) for r in self.requirements)


def parse_selector(text: str) -> Selector:
    """Comma-separated requirements; every one must hold."""
    reqs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise UsageError(f'label selector "{text}": an empty requirement (two commas?)')
        if "!=" in part:
            key, _, value = part.partition("!=")
            op = "!="
        elif "=" in part:
            key, _, value = part.partition("=")
            key, value, op = key, value.removeprefix("="), "="  # k==v is k=v, as in kubectl
        elif part.startswith("!"):
            key, value, op = part[1:], "", "!exists"
        else:
            key, value, op = part, "", "exists"
        key = key.strip()
        if not key or any(c in key for c in " =!"):
            raise UsageError(f'label selector "{text}": "{part}" has no valid key (expected key=value)')
        reqs.append(Requirement(key, op, value.strip()))
    return Selector(tuple(reqs))
