"""The usual mistakes in a pipeline, each reported by a type checker on its own line.

tests/test_types.py runs mypy and pyright on this file and checks that they report an
error on exactly the lines with an error comment, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator

import dynflow as df


@df.task
def fetch(account: str, region: str = "eu") -> dict[str, float]:
    return {"usage": 1.0}


@df.task
def score(usage: dict[str, float], weight: float) -> float:
    return usage["usage"] * weight


@df.task
def total(scores: list[float]) -> float:
    return sum(scores)


@df.flow
def pipeline(n: int) -> float:
    usage = fetch("acme")
    missing = score(usage)  # error: a missing argument
    extra = score(usage, 2.0, 3.0)  # error: an extra argument
    wrong = score("acme", 2.0)  # error: a wrong argument type
    scores = score.map([usage], weight=df.unmapped(2.0))
    mixed = total(fetch.map(["a", "b"]))  # error: a list of dicts where floats are expected
    return total(scores) + missing + extra + wrong + mixed


@df.task
def names(n: int) -> Iterator[str]:  # a stream: its value is the list of what it yields
    yield from (str(i) for i in range(n))


@df.flow
def streamed(n: int) -> float:
    return total(names(n))  # error: a stream of str where a list of floats is expected


fast = fetch.with_options(retries=2, retrys=3)  # error: an option that does not exist
flow_copy = pipeline.with_options(cache=True, log_print=True)  # error: an unknown option
answer: str = pipeline(3)  # error: a flow called at top level returns its function's type
bad = df.task(retries="two")(fetch.fn)  # error: an option of the wrong type
