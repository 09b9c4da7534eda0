"""Where dynflow touches distributed beyond its public API, in one place.

distributed is pinned (``pyproject.toml``) because of these; each is tested with the
scheduler's and the worker's validation on.

- :func:`secede_async`: an async task gives up its worker slot (the worker state
  machine's ``SecedeEvent``; ``distributed.secede`` works only in a task's thread).
"""

from __future__ import annotations

from time import time
from typing import Any

__all__ = ["secede_async"]


def secede_async(key: Any) -> None:
    """Free the worker slot of the async task ``key``, which runs on the event loop.

    As ``distributed.secede()`` does for a task in a worker thread: the worker then
    runs other tasks while this one awaits, and it finishes as a long-running task.
    """
    from distributed import get_worker
    from distributed.worker_state_machine import SecedeEvent

    worker = get_worker()
    worker.handle_stimulus(
        SecedeEvent(key=key, compute_duration=0.0, stimulus_id=f"dynflow-secede-{time()}")
    )
