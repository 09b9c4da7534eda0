"""Satellite tiles -> per-tile model inference -> merged prediction mosaic (numpy).

``list_tiles`` names the tiles of a scene (a grid position and a seed each: the list's
length is known only when it has run on the cluster). Each tile is loaded on a worker
(``load_tile``: a synthetic 4-band image made from its seed, standing in for a read from
storage), a fixed model (a per-pixel linear model over the bands and NDVI, smoothed by
a 3x3 box filter, then a threshold) predicts a vegetation mask per tile, and ``merge``
puts the masks into one mosaic. ``predict.map(load_tile.map(tiles))`` pipelines: a
tile's prediction starts as soon as that tile is loaded.

    python examples/satellite_tiles.py                       # embedded LocalCluster
    python examples/satellite_tiles.py --n 64 --tile-size 128 --address tcp://127.0.0.1:8786
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

import dask.config
import numpy as np

import dynflow as df

BANDS = ("blue", "green", "red", "nir")

#: the "model": fixed weights over (blue, green, red, nir, ndvi), a bias and a threshold
WEIGHTS = np.array([-0.8, 0.4, -1.5, 1.2, 6.0])
BIAS = -1.0
THRESHOLD = 0.5


@df.task
def list_tiles(n: int, seed: int) -> list[dict[str, int]]:
    """The tiles of the scene: grid position and seed; how many is known at run time."""
    cols = math.ceil(math.sqrt(n))
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**31, size=n)
    return [
        {"tile": i, "row": i // cols, "col": i % cols, "seed": int(s)} for i, s in enumerate(seeds)
    ]


@df.task
def load_tile(tile: dict[str, int], size: int) -> dict[str, Any]:
    """A synthetic 4-band reflectance image for one tile (float32, shape (4, size, size)).

    A few round "fields" of vegetation (high near-infrared, low red) on bare soil,
    plus sensor noise.
    """
    rng = np.random.default_rng(tile["seed"])
    yy, xx = np.mgrid[0:size, 0:size]
    vegetation = np.zeros((size, size))
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0, size, size=2)
        radius = rng.uniform(size / 10, size / 3)
        vegetation = np.maximum(vegetation, ((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2) * 1.0)
    soil = np.array([0.10, 0.15, 0.20, 0.25])[:, None, None]
    plant = np.array([0.05, 0.10, 0.05, 0.50])[:, None, None]
    image = soil * (1 - vegetation) + plant * vegetation
    image = image + rng.normal(0, 0.03, size=image.shape)
    return {**tile, "image": image.astype(np.float32), "truth": vegetation > 0}


def box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean filter with edge padding."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    return sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


@df.task
def predict(tile: dict[str, Any], weights: np.ndarray, bias: float) -> dict[str, Any]:
    """The model, on one tile: a boolean vegetation mask, its mean probability, and how
    many pixels it got right (the synthetic tile knows its ground truth)."""
    blue, green, red, nir = tile["image"].astype(np.float64)
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    features = np.stack([blue, green, red, nir, ndvi])
    logits = box3(np.tensordot(weights, features, axes=1) + bias)
    prob = 1.0 / (1.0 + np.exp(-logits))
    return {
        "tile": tile["tile"],
        "row": tile["row"],
        "col": tile["col"],
        "mask": prob > THRESHOLD,
        "mean_prob": float(prob.mean()),
        "correct": int(((prob > THRESHOLD) == tile["truth"]).sum()),
    }


@df.task
def merge(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Put every tile's mask at its place in one mosaic; summarise it."""
    size = predictions[0]["mask"].shape[0]
    rows = max(p["row"] for p in predictions) + 1
    cols = max(p["col"] for p in predictions) + 1
    mosaic = np.zeros((rows * size, cols * size), dtype=bool)
    for p in predictions:
        r, c = p["row"] * size, p["col"] * size
        mosaic[r : r + size, c : c + size] = p["mask"]
    pixels = len(predictions) * size * size
    return {
        "tiles": len(predictions),
        "mosaic": mosaic,
        "vegetation_pixels": int(mosaic.sum()),
        "vegetation_fraction": float(mosaic.sum() / pixels),
        "mean_prob": float(np.mean([p["mean_prob"] for p in predictions])),
        "accuracy": sum(p["correct"] for p in predictions) / pixels,
    }


@df.flow
def scene(n: int, size: int = 64, seed: int = 0) -> dict[str, Any]:
    tiles = list_tiles(n, seed)
    images = load_tile.map(tiles, size=df.unmapped(size))
    masks = predict.map(images, weights=df.unmapped(WEIGHTS), bias=df.unmapped(BIAS))
    return merge(masks)


def expected(n: int, size: int, seed: int) -> dict[str, Any]:
    """The same computation in plain Python, one tile after another."""
    preds = [predict.fn(load_tile.fn(t, size), WEIGHTS, BIAS) for t in list_tiles.fn(n, seed)]
    return merge.fn(preds)


def positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return n


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive, default=16, help="tiles in the scene")
    parser.add_argument("--tile-size", type=positive, default=64, help="pixels per tile side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", help="scheduler address (default: embedded cluster)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.address:  # dynflow's own discovery: DASK_DYNFLOW__ADDRESS does the same
        dask.config.set({"dynflow.address": args.address})
    node = scene.build(args.n, size=args.tile_size, seed=args.seed)
    result = node.compute()

    want = expected(args.n, args.tile_size, args.seed)
    assert np.array_equal(result["mosaic"], want["mosaic"]), "mosaics differ"
    for key in ("tiles", "vegetation_pixels", "vegetation_fraction", "accuracy"):
        assert result[key] == want[key], (key, result[key], want[key])
    # equal up to rounding: a remote worker's CPU may round exp() in the last bit
    assert math.isclose(result["mean_prob"], want["mean_prob"], rel_tol=1e-9), (result, want)
    h, w = result["mosaic"].shape
    print(
        f"{result['tiles']} tiles predicted on the cluster: mosaic {h}x{w}, "
        f"vegetation {result['vegetation_fraction']:.1%} "
        f"({result['vegetation_pixels']} px), accuracy {result['accuracy']:.2%} "
        f"against the ground truth"
    )
    return result


if __name__ == "__main__":
    main()
