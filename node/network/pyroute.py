"""pyroute2's IPRoute and NetlinkError, without pyroute2's package ``__init__``.

The only module that imports pyroute2: everything node-side takes IPRoute and
NetlinkError from here (tests/unit/test_agent_imports.py checks the agent).

Why: ``pyroute2/__init__.py`` imports the whole library (NDB with sqlite3,
psutil, IPDB, IPVS, nftables, WireGuard, Plan 9...) to offer every class at
the top level: +11.6 MiB RSS in the agent, which needs rtnetlink only (links,
addresses, routes). Importing ``pyroute2.iproute.linux`` through a package
module that has pyroute2's ``__path__`` but never ran its ``__init__`` loads
what IPRoute uses: +5 MiB (docs/benchmarks.md, the agent's footprint).

If pyroute2 is already imported (its ``__init__`` ran, or this module ran),
it is used as it is. Should anything later ask the bare package for a name
only its ``__init__`` defines (``from pyroute2 import NDB``), that ``__init__``
runs then, so such an import works anywhere; it just costs the memory again.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

__all__ = ["IPRoute", "NetlinkError"]


def _bare_package() -> None:
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        raise ImportError("pyroute2 is not installed (pip install pyroute2)")
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)  # __path__, __spec__, __file__; __init__ not run

    def complete(name: str) -> Any:
        # A submodule (`from pyroute2 import config`): the import system loads it after this
        # AttributeError. A dunder: not there. Anything else is one of __init__'s names.
        if name.startswith("__") or importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)
        del vars(package)["__getattr__"]
        loader.exec_module(package)
        return getattr(package, name)

    vars(package)["__getattr__"] = complete  # PEP 562: called for names the module lacks
    sys.modules["pyroute2"] = package


if "pyroute2" not in sys.modules:
    _bare_package()

from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
