"""orch's version: pyproject.toml's, as installed. One source for the CLI, the scheduler and
the agents (which report it on their node records)."""

from __future__ import annotations


def version() -> str:
    from importlib import metadata  # here, not at the top: ~10 ms of every CLI start for a rare call

    try:
        return metadata.version("orch")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
