"""A pipeline written with type hints, as an editor (mypy, pyright) checks it.

Inside a flow, a task call has its function's return type and a map the list of it, as
in a flytekit workflow: what the body passes on is what the functions take and return,
so a wrong argument or a missing one is reported on its line. Nothing runs until the
flow is called (or its node computed): at run time the values are lazy nodes.

    python examples/typed_pipeline.py           # embedded LocalCluster
    python examples/typed_pipeline.py --address tcp://127.0.0.1:8786
    mypy examples/typed_pipeline.py             # type-checks clean (CI runs it)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Iterator

import dask.config

import dynflow as df


@df.task
def accounts(n: int) -> list[str]:
    """Account ids, known only at run time."""
    return [f"acct{i}" for i in range(n)]


@df.task(retries=2, task_run_name="fetch-{account}")
def fetch(account: str, region: str = "eu") -> dict[str, float]:
    """One account's usage."""
    return {"usage": float(len(account)), "region_bonus": 1.0 if region == "eu" else 0.0}


@df.task(cache=True, cache_version="1")
def score(usage: dict[str, float], weight: float) -> float:
    """One account's score."""
    return usage["usage"] * weight + usage["region_bonus"]


@df.task
async def check(value: float) -> bool:
    """An async task: runs on the worker's event loop."""
    await asyncio.sleep(0)
    return value >= 0


@df.task
def services(account: str) -> list[str]:
    """An account's services (a map per account, flattened below)."""
    return [f"{account}/svc{j}" for j in range(2)]


@df.task
def total(scores: list[float]) -> float:
    return sum(scores)


@df.task
def count_ok(flags: list[bool | BaseException]) -> int:
    """Failed items arrive as exceptions (df.allow_failure)."""
    return sum(1 for f in flags if f is True)


@df.task
def count(names: list[str]) -> int:
    return len(names)


@df.task
def pages(n: int) -> Iterator[str]:
    """A stream (a generator): its maps start items as they are yielded; whole, its
    value is the list (a type checker sees ``list[str]``)."""
    for i in range(n):
        yield f"acct{i}"


@df.flow
def per_account(account: str, weight: float) -> float:
    """A sub-flow, mapped over the accounts below."""
    return score(fetch(account), weight)


@df.flow
def pipeline(n: int, weight: float = 2.0) -> tuple[float, int, int, float]:
    ids = accounts(n)
    usage = fetch.map(ids, region=df.unmapped("us"))
    scores = score.map(usage, weight=df.unmapped(weight))
    ok = count_ok(df.allow_failure(check.map(scores)))
    names = count(df.flatten(services.map(ids)))
    again = total(per_account.map(ids, weight=df.unmapped(weight)))
    return total(scores), ok, names, again


def main() -> tuple[float, int, int, float]:
    result = pipeline(4)  # a flow called at top level: its function's return type
    node: df.Node[tuple[float, int, int, float]] = pipeline.build(4, weight=2.0)
    assert node.compute() == result
    future = pipeline.submit(4)  # a RunFuture of the flow's return type
    assert future.result() == result
    fast = fetch.with_options(retries=0, timeout=5)
    (usage, n) = df.compute(fast("acct1"), count(accounts(3)))
    assert usage["usage"] == 5.0 and n == 3
    stream: Iterator[tuple[int, float | BaseException]] = iter(
        df.as_completed(score.map(fetch.map(accounts(3)), weight=1.0))
    )
    assert sorted(i for i, _ in stream) == [0, 1, 2]
    # a stream: its items start as they are yielded; whole, a list of str
    (streamed, listed) = df.compute(total(score.map(fetch.map(pages(3)), weight=1.0)), pages(2))
    assert streamed == 18.0 and listed == ["acct0", "acct1"]
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--address", help="scheduler address (default: embedded cluster)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.address:
        dask.config.set({"dynflow.address": args.address})
    print(main())
