from __future__ import annotations

pytest_plugins = ["distributed.utils_test"]
