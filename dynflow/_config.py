"""dynflow's configuration: defaults from ``dynflow.yaml`` merged into ``dask.config``.

Read values at call time with ``dask.config.get("dynflow.<key>")``; nothing here is
cached in module globals.
"""

from __future__ import annotations

import os

import dask.config
import yaml

__all__ = ["DYNFLOW_FRAMES", "load_defaults"]

#: dynflow's modules, whose frames are left out of users' tracebacks beside those of
#: dask's ``admin.traceback.shorten`` (``dynflow.shorten-tracebacks``)
DYNFLOW_FRAMES = r"[\\\/]dynflow[\\\/](client|extension|worker|graph|lowering|views|_[a-z]+\.py)"


def load_defaults() -> None:
    """Merge ``dynflow.yaml`` into dask's configuration defaults (idempotent)."""
    path = os.path.join(os.path.dirname(__file__), "dynflow.yaml")
    with open(path) as f:
        defaults = yaml.safe_load(f)
    dask.config.update_defaults(defaults)
