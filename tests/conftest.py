from __future__ import annotations

import os

# Every scheduler in the suite validates its state after each transition: in-process
# ones (gen_cluster turns it on too), spawned ones (LocalCluster, the `client` fixture)
# and the CLI-started ones, which inherit the environment.
os.environ["DASK_DISTRIBUTED__SCHEDULER__VALIDATE"] = "True"
os.environ["DASK_DISTRIBUTED__WORKER__VALIDATE"] = "True"

import dask.config  # noqa: E402

import dynflow  # noqa: E402, F401  (its config defaults, before utils_test snapshots the config)

dask.config.refresh()

pytest_plugins = ["distributed.utils_test"]

# files a type checker reads (tests/test_types.py), never imported
collect_ignore = ["typing"]
