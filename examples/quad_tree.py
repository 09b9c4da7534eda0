"""Quad-tree survey of a satellite scene: dynamic tasks split a region until it is uniform.

``survey(region)`` loads a square region of the scene on a worker (``load_region``: a
synthetic NDVI image made from the scene's seed, standing in for a read from storage)
and looks at its pixels. A region that is uniform enough (NDVI standard deviation under
``--max-std``) or as small as ``--min-size`` is a leaf: the task returns its summary.
Any other region is split into four quadrants, and the task *returns the graph* that
surveys them, ``merge([survey(q) for q in quadrants(region)])``: dynflow splices that
graph into the live scheduler in the task's place, so the four surveys are real
scheduler tasks, run in parallel on any worker, and the split's value is the merged
list. How deep the tree goes, and where, is known only from the pixels; no worker
thread waits for a sub-tree, and the client computes one node.

    python examples/quad_tree.py                          # embedded LocalCluster
    python examples/quad_tree.py --size 1024 --min-size 16 --address tcp://127.0.0.1:8786
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import dask.config
import numpy as np

import dynflow as df

#: the scene's fields: (centre x, centre y, radius, NDVI), as fractions of its side
FIELDS = 12


def scene_fields(seed: int) -> np.ndarray:
    """The scene's round fields, each of uniform NDVI, on a bare background."""
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [rng.random(FIELDS), rng.random(FIELDS), rng.uniform(0.05, 0.2, FIELDS), rng.random(FIELDS)]
    )


def load_region(seed: int, x: int, y: int, size: int, scene: int) -> np.ndarray:
    """The ``size`` x ``size`` NDVI pixels at (x, y) of a ``scene`` x ``scene`` image:
    the fields (the last one drawn wins) and a faint noise. Shape (size, size), float."""
    cols, rows = np.meshgrid(np.arange(x, x + size) / scene, np.arange(y, y + size) / scene)
    ndvi = np.full((size, size), 0.1)
    for cx, cy, radius, value in scene_fields(seed):
        ndvi[(cols - cx) ** 2 + (rows - cy) ** 2 < radius**2] = value
    noise = np.random.default_rng([seed, x, y, size]).normal(0.0, 0.01, (size, size))
    return ndvi + noise


def quadrants(region: dict[str, int]) -> list[dict[str, int]]:
    """The four squares of half the side that tile ``region``."""
    half = region["size"] // 2
    return [
        {"x": region["x"] + dx, "y": region["y"] + dy, "size": half}
        for dy in (0, half)
        for dx in (0, half)
    ]


def leaf(region: dict[str, int], pixels: np.ndarray) -> dict[str, Any]:
    return {
        **region,
        "mean": round(float(pixels.mean()), 6),
        "vegetation": int(np.count_nonzero(pixels > 0.4)),
    }


def is_leaf(region: dict[str, int], pixels: np.ndarray, max_std: float, min_size: int) -> bool:
    return region["size"] <= min_size or float(pixels.std()) < max_std


@df.task
def merge(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The leaves of the four quadrants, in order."""
    return [region for part in parts for region in part]


@df.task
def survey(region: dict[str, int], opts: dict[str, Any]) -> Any:
    """The leaves under ``region``: itself if it is one, else the graph that surveys its
    quadrants (a dynamic task: the returned node runs in this task's place)."""
    pixels = load_region(opts["seed"], region["x"], region["y"], region["size"], opts["scene"])
    if is_leaf(region, pixels, opts["max_std"], opts["min_size"]):
        return [leaf(region, pixels)]
    return merge([survey(q, opts) for q in quadrants(region)])


def survey_here(region: dict[str, int], opts: dict[str, Any]) -> list[dict[str, Any]]:
    """The same survey in plain Python, one region after another (the check)."""
    pixels = load_region(opts["seed"], region["x"], region["y"], region["size"], opts["scene"])
    if is_leaf(region, pixels, opts["max_std"], opts["min_size"]):
        return [leaf(region, pixels)]
    return [r for q in quadrants(region) for r in survey_here(q, opts)]


def power_of_two(value: str) -> int:
    n = int(value)
    if n < 1 or n & (n - 1):
        raise argparse.ArgumentTypeError(f"expected a power of two, got {value}")
    return n


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=power_of_two, default=512, help="scene side, pixels")
    parser.add_argument("--min-size", type=power_of_two, default=8, help="smallest region")
    parser.add_argument("--max-std", type=float, default=0.05, help="NDVI std of a leaf")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--address", help="scheduler address (default: embedded cluster)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.address:  # dynflow's own discovery: DASK_DYNFLOW__ADDRESS does the same
        dask.config.set({"dynflow.address": args.address})
    opts = {"seed": args.seed, "scene": args.size, "max_std": args.max_std}
    opts["min_size"] = args.min_size
    scene = {"x": 0, "y": 0, "size": args.size}
    leaves = survey(scene, opts).compute()

    assert leaves == survey_here(scene, opts), "the cluster and plain Python differ"
    assert sum(r["size"] ** 2 for r in leaves) == args.size**2  # they tile the scene
    splits = (len(leaves) - 1) // 3
    sizes = sorted({r["size"] for r in leaves})
    green = sum(r["vegetation"] for r in leaves) / args.size**2
    print(
        f"quad tree of a {args.size}x{args.size} scene: {len(leaves)} regions of "
        f"{sizes[0]} to {sizes[-1]} pixels, {splits} dynamic splits on the cluster; "
        f"vegetation {green:.1%}"
    )
    return leaves


if __name__ == "__main__":
    main()
