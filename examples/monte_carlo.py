"""Monte Carlo estimate of pi: one simulation per seed, then a combined estimate.

``make_seeds`` draws independent seeds on the cluster; ``simulate.map(seeds)`` throws
``--samples`` random points into the unit square per seed and counts those inside the
quarter circle; ``combine`` pools the counts into one estimate and its standard error.
With ``--batch-size auto`` (or an int) many seeds run per scheduler task: the results
are the same, per seed, with far less scheduling overhead for cheap items.

    python examples/monte_carlo.py                            # embedded LocalCluster
    python examples/monte_carlo.py --n 10000 --batch-size auto
    python examples/monte_carlo.py --address tcp://127.0.0.1:8786
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
def make_seeds(n: int, seed: int) -> list[int]:
    """``n`` independent seeds, drawn from one root seed."""
    return [int(s) for s in np.random.default_rng(seed).integers(0, 2**63, size=n)]


@df.task
def simulate(seed: int, samples: int) -> int:
    """Points of ``samples`` uniform draws in [0, 1)^2 that fall inside the unit circle."""
    xy = np.random.default_rng(seed).random((samples, 2))
    return int(np.count_nonzero((xy**2).sum(axis=1) < 1.0))


@df.task
def combine(hits: list[int], samples: int) -> dict[str, Any]:
    """Pool the runs: the estimate 4 p and its standard error 4 sqrt(p (1 - p) / N)."""
    total = len(hits) * samples
    p = sum(hits) / total
    return {
        "runs": len(hits),
        "samples": total,
        "hits": sum(hits),
        "estimate": 4 * p,
        "stderr": 4 * math.sqrt(p * (1 - p) / total),
    }


@df.flow
def estimate_pi(
    n: int, samples: int, seed: int = 0, batch_size: int | str | None = None
) -> dict[str, Any]:
    seeds = make_seeds(n, seed)
    hits = simulate.map(seeds, samples=df.unmapped(samples), batch_size=batch_size)
    return combine(hits, samples)


def positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return n


def batch_size_arg(value: str) -> int | str | None:
    if value in ("auto", "none"):
        return None if value == "none" else value
    return positive(value)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive, default=200, help="simulations (seeds)")
    parser.add_argument("--samples", type=positive, default=20_000, help="points per simulation")
    parser.add_argument(
        "--batch-size",
        type=batch_size_arg,
        default=None,
        help="seeds per scheduler task: an int, 'auto' or 'none' (default: one per task)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", help="scheduler address (default: embedded cluster)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.address:  # dynflow's own discovery: DASK_DYNFLOW__ADDRESS does the same
        dask.config.set({"dynflow.address": args.address})
    node = estimate_pi.build(args.n, args.samples, seed=args.seed, batch_size=args.batch_size)
    result = node.compute()

    # the same simulations in plain Python, one after another
    hits = [simulate.fn(s, args.samples) for s in make_seeds.fn(args.n, args.seed)]
    want = combine.fn(hits, args.samples)
    assert result == want, (result, want)
    error = result["estimate"] - math.pi
    # a sanity check of the simulation itself: 6 standard errors is never reached by chance
    assert abs(error) < 6 * result["stderr"], (error, result["stderr"])
    print(
        f"pi ~ {result['estimate']:.6f} from {result['samples']} points in "
        f"{result['runs']} simulations (batch_size={args.batch_size}): "
        f"error {error:+.6f}, standard error {result['stderr']:.6f}"
    )
    return result


if __name__ == "__main__":
    main()
