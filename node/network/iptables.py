"""Running iptables: the one place that spawns it (hostports.py, masquerade.py).

Rules are written with iptables-restore --noflush (a whole chain at once, atomically),
and the jumps into orch's chains from the built-in ones are checked (-C) before they
are added, so every writer is idempotent.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence

from node.network.errors import NetworkError

__all__ = ["Runner", "add_jump", "chain_exists", "delete_chain", "has_rule", "remove_jump", "restore", "run"]

Runner = Callable[[Sequence[str], str], None]  # (argv, stdin): raises NetworkError on failure


def run(argv: Sequence[str], stdin: str = "") -> None:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetworkError(f"{argv[0]}: {e}") from e
    if done.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")


# -w everywhere: agents and clusters on one host share the xtables lock; wait for it, not fail.
def restore(runner: Runner, text: str) -> None:
    """iptables-restore --noflush: the chains text names are replaced whole, others untouched."""
    runner(["iptables-restore", "-w", "--noflush"], text)


def add_jump(runner: Runner, table: str, rule: Sequence[str]) -> None:
    """Append rule unless it is there already."""
    if not has_rule(runner, table, rule):
        runner(["iptables", "-w", "-t", table, "-A", *rule], "")


def remove_jump(runner: Runner, table: str, rule: Sequence[str]) -> None:
    """Delete every copy of rule; none left counts as removed."""
    while has_rule(runner, table, rule):
        runner(["iptables", "-w", "-t", table, "-D", *rule], "")


def has_rule(runner: Runner, table: str, rule: Sequence[str]) -> bool:
    try:
        runner(["iptables", "-w", "-t", table, "-C", *rule], "")
    except NetworkError:
        return False
    return True


def chain_exists(runner: Runner, table: str, chain: str) -> bool:
    try:
        runner(["iptables", "-w", "-t", table, "-S", chain], "")
    except NetworkError:
        return False
    return True


def delete_chain(runner: Runner, table: str, chain: str) -> None:
    """Flush and delete chain (nothing may jump to it any more); gone already is fine."""
    if chain_exists(runner, table, chain):
        runner(["iptables", "-w", "-t", table, "-F", chain], "")
        runner(["iptables", "-w", "-t", table, "-X", chain], "")
