"""Parallel sub-flows: a whole load -> clean -> summarize flow per data set, then a report.

``summarize_dataset`` is a ``@flow``: it lists a data set's partitions, cleans each one
(an inner ``clean.map``: its length is known only when the partitions are listed) and
summarises the cleaned values. ``summarize_dataset.map(datasets)`` runs one such
sub-flow per data set, in parallel, each built on the cluster once its data set is
known. One data set is deliberately corrupt: one of its partitions holds text where
numbers belong, so ``clean`` raises, that sub-flow fails, and the others still run.
``report(df.allow_failure(summaries))`` receives every summary, with the exception in
place of the failed one, and reports both.

    python examples/parallel_subflows.py                      # embedded LocalCluster
    python examples/parallel_subflows.py --n 12 --bad 3 --address tcp://127.0.0.1:8786
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

import dask.config
import numpy as np

import dynflow as df


@df.task
def list_datasets(n: int, seed: int, bad: int | None) -> list[dict[str, Any]]:
    """The data sets to summarise; the one at index ``bad`` is corrupt."""
    rng = np.random.default_rng(seed)
    return [
        {"name": f"sensor-{i:02d}", "seed": int(s), "corrupt": i == bad}
        for i, s in enumerate(rng.integers(0, 2**31, size=n))
    ]


@df.task
def load_partitions(dataset: dict[str, Any]) -> list[dict[str, Any]]:
    """A data set's partitions: raw readings, with gaps (NaN) and glitches (< 0)."""
    rng = np.random.default_rng(dataset["seed"])
    parts = []
    for p in range(int(rng.integers(2, 5))):
        values: Any = rng.normal(20.0, 5.0, size=int(rng.integers(50, 200)))
        values[rng.random(values.size) < 0.05] = np.nan
        values[rng.random(values.size) < 0.03] = -999.0
        if dataset["corrupt"] and p == 1:
            values = [f"{v:.1f}" for v in values]  # text, as from a broken export
        parts.append({"dataset": dataset["name"], "part": p, "values": values})
    return parts


@df.task
def clean(partition: dict[str, Any]) -> np.ndarray:
    """Drop gaps and glitches; raise on data that is not numeric."""
    values = partition["values"]
    if not isinstance(values, np.ndarray) or values.dtype.kind != "f":
        raise ValueError(
            f"{partition['dataset']} partition {partition['part']}: expected float "
            f"readings, got {type(values).__name__} of {type(values[0]).__name__}"
        )
    return values[np.isfinite(values) & (values >= 0)]


@df.task
def summarize(dataset: dict[str, Any], parts: list[np.ndarray]) -> dict[str, Any]:
    values = np.concatenate(parts)
    return {
        "name": dataset["name"],
        "partitions": len(parts),
        "rows": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "sum": float(values.sum()),
    }


@df.flow
def summarize_dataset(dataset: dict[str, Any]) -> dict[str, Any]:
    """The sub-flow run per data set: load -> clean (per partition) -> summarize."""
    parts = load_partitions(dataset)
    cleaned = clean.map(parts)
    return summarize(dataset, cleaned)


@df.task
def report(summaries: list[Any]) -> dict[str, Any]:
    """Pool the data sets that succeeded; list those that failed, with their error."""
    ok = [s for s in summaries if not isinstance(s, BaseException)]
    failed = {
        i: f"{type(s).__name__}: {s}"
        for i, s in enumerate(summaries)
        if isinstance(s, BaseException)
    }
    rows = sum(s["rows"] for s in ok)
    return {
        "datasets": len(summaries),
        "ok": [s["name"] for s in ok],
        "failed": failed,
        "rows": rows,
        "mean": sum(s["sum"] for s in ok) / rows if rows else float("nan"),
        "summaries": ok,
    }


@df.flow
def pipeline(n: int, seed: int = 0, bad: int | None = None) -> dict[str, Any]:
    datasets = list_datasets(n, seed, bad)
    summaries = summarize_dataset.map(datasets)
    return report(df.allow_failure(summaries))


def expected(n: int, seed: int, bad: int | None) -> tuple[list[dict[str, Any]], list[int]]:
    """The summaries of the good data sets and the indices of the bad, in plain Python."""
    good, failed = [], []
    for i, ds in enumerate(list_datasets.fn(n, seed, bad)):
        try:
            parts = [clean.fn(p) for p in load_partitions.fn(ds)]
        except ValueError:
            failed.append(i)
            continue
        good.append(summarize.fn(ds, parts))
    return good, failed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6, help="data sets, one sub-flow each")
    parser.add_argument(
        "--bad", type=int, default=None, help="index of the corrupt data set (default: n // 2)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", help="scheduler address (default: embedded cluster)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bad = args.n // 2 if args.bad is None else args.bad

    if args.address:  # dynflow's own discovery: DASK_DYNFLOW__ADDRESS does the same
        dask.config.set({"dynflow.address": args.address})
    result = pipeline.build(args.n, seed=args.seed, bad=bad).compute()

    good, failed = expected(args.n, args.seed, bad)
    assert [s["name"] for s in result["summaries"]] == [s["name"] for s in good], result
    for got, want in zip(result["summaries"], good, strict=True):
        assert (got["partitions"], got["rows"]) == (want["partitions"], want["rows"]), got
        for key in ("mean", "std", "sum"):  # up to rounding: numpy may sum in another order
            assert math.isclose(got[key], want[key], rel_tol=1e-9), (key, got, want)
    assert sorted(result["failed"]) == failed, (result["failed"], failed)
    for i in failed:
        assert f"sensor-{i:02d} partition 1: expected float readings" in result["failed"][i]
    for i, error in sorted(result["failed"].items()):
        print(f"sensor-{i:02d} failed: {error.splitlines()[0]}")
    print(
        f"{len(result['ok'])} of {result['datasets']} data sets summarised in parallel "
        f"sub-flows, {len(result['failed'])} failed: {result['rows']} rows, "
        f"mean {result['mean']:.3f}"
    )
    return result


if __name__ == "__main__":
    main()
