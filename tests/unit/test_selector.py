"""`-l` label selectors: kubectl's equality-based subset."""

from __future__ import annotations

import pytest

from cli.client import CliError
from cli.selector import parse_selector

LABELS = {"tier": "web", "env": "prod", "canary": ""}


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("tier=web", True),
        ("tier==web", True),
        ("tier=db", False),
        ("tier!=db", True),
        ("env!=prod", False),
        ("canary", True),
        ("!canary", False),
        ("!legacy", True),
        ("missing!=x", True),  # as kubectl: a missing key is not equal
        ("tier=web,env=prod", True),
        ("tier=web, env=dev", False),
        ("canary=", True),
    ],
)
def test_requirements(text: str, matches: bool) -> None:
    assert parse_selector(text).matches(LABELS) is matches


@pytest.mark.parametrize("text", ["tier=web,,env=prod", "=web", "!", "a b=c"])
def test_bad_selectors_are_usage_errors(text: str) -> None:
    with pytest.raises(CliError) as e:
        parse_selector(text)
    assert e.value.code == 2 and text in str(e.value)
