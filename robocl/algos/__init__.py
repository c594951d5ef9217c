"""One module per method. ``ALGORITHMS`` maps a method name to its class, imported on first use."""

from __future__ import annotations

import importlib
from typing import Any

ALGORITHMS: dict[str, str] = {
    "bc": "robocl.algos.bc:BC",
    "symphony": "robocl.algos.symphony:Symphony",
    "co-rft": "robocl.algos.co_rft:CORFT",
    "hypercrl": "robocl.algos.hypercrl:HyperCRL",
}


def get_algorithm(name: str) -> Any:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown method {name!r}; robocl knows {sorted(ALGORITHMS)}")
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), cls)
