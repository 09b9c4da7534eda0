"""The seed pattern: generate_list -> fan_out_processor (one task per item) -> reducer.

The list's length is known only when ``generate_list`` has run on the cluster; the
per-item tasks are added to the live scheduler there, and the list never travels
through this process.

    python examples/fan_out.py                    # embedded LocalCluster
    python examples/fan_out.py --n 1000 --address tcp://127.0.0.1:8786
"""

from __future__ import annotations

import argparse
import logging
import random

import dask.config

import dynflow as df


@df.task
def generate_list(n: int, seed: int) -> list[int]:
    """Some items whose number is known only at run time."""
    rng = random.Random(seed)
    return [rng.randint(0, 100) for _ in range(n)]


@df.task(retries=2)
def fan_out_processor(item: int, factor: int) -> int:
    """Process one item."""
    return item * factor


@df.task
def reducer(results: list[int]) -> dict[str, int]:
    """Gather every item's result."""
    return {"items": len(results), "total": sum(results)}


@df.flow
def pipeline(n: int, seed: int = 0, factor: int = 2) -> dict[str, int]:
    items = generate_list(n, seed)
    processed = fan_out_processor.map(items, factor=df.unmapped(factor))
    return reducer(processed)


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="items to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", help="scheduler address (default: embedded cluster)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.address:  # dynflow's own discovery: DASK_DYNFLOW__ADDRESS does the same
        dask.config.set({"dynflow.address": args.address})
    node = pipeline.build(args.n, seed=args.seed)
    result = node.compute()
    # the same computation in plain Python, to check the answer
    expected = sum(2 * x for x in generate_list.fn(args.n, args.seed))
    assert result == {"items": args.n, "total": expected}, (result, expected)
    print(f"{args.n} items processed on the cluster: {result}")
    return result


if __name__ == "__main__":
    main()
