"""A hyperparameter sweep: one training run per grid point, then the best model.

``make_dataset`` builds a synthetic regression data set once, on the cluster; it is
passed to every run with ``df.unmapped`` (computed once, shared by all items), and
``train.map(grid, data=df.unmapped(dataset))`` fits a ridge regression on polynomial
features for each (degree, alpha) of the grid. ``pick_best`` takes the lowest
validation error.

    python examples/hyperparameter_sweep.py                   # embedded LocalCluster
    python examples/hyperparameter_sweep.py --n 20 --address tcp://127.0.0.1:8786
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
from typing import Any

import dask.config
import numpy as np

import dynflow as df

DEGREES = tuple(range(1, 11))


@df.task
def make_dataset(samples: int, seed: int, noise: float = 0.3) -> dict[str, np.ndarray]:
    """y = sin(2x) + x/2 + noise, on x in [-2, 2]; 75 % train, 25 % validation."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=samples)
    y = np.sin(2 * x) + 0.5 * x + rng.normal(0, noise, size=samples)
    cut = samples * 3 // 4
    return {"x_train": x[:cut], "y_train": y[:cut], "x_val": x[cut:], "y_val": y[cut:]}


def features(x: np.ndarray, degree: int) -> np.ndarray:
    return np.vander(x, degree + 1, increasing=True)  # 1, x, x^2, ...


@df.task
def train(params: dict[str, Any], data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Closed-form ridge regression (the intercept is not penalised); validation MSE."""
    degree, alpha = params["degree"], params["alpha"]
    X = features(data["x_train"], degree)  # noqa: N806 - the usual name of a design matrix
    penalty = alpha * np.eye(degree + 1)
    penalty[0, 0] = 0.0
    w = np.linalg.solve(X.T @ X + penalty, X.T @ data["y_train"])
    val = features(data["x_val"], degree) @ w - data["y_val"]
    train_err = X @ w - data["y_train"]
    return {
        **params,
        "train_mse": float(np.mean(train_err**2)),
        "val_mse": float(np.mean(val**2)),
        "weights": w.tolist(),
    }


@df.task
def pick_best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the lowest validation error (the first one on a tie)."""
    best = min(range(len(results)), key=lambda i: (results[i]["val_mse"], i))
    return {"runs": len(results), "best": results[best]}


@df.flow
def sweep(grid: list[dict[str, Any]], samples: int, seed: int = 0) -> dict[str, Any]:
    dataset = make_dataset(samples, seed)
    runs = train.map(grid, data=df.unmapped(dataset))
    return pick_best(runs)


def make_grid(n_alphas: int) -> list[dict[str, Any]]:
    alphas = np.logspace(-4, 2, n_alphas) if n_alphas > 1 else np.array([1.0])
    return [{"degree": d, "alpha": float(a)} for d, a in itertools.product(DEGREES, alphas)]


def positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return n


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=positive, default=8, help=f"alphas in the grid (x {len(DEGREES)} degrees)"
    )
    parser.add_argument("--samples", type=int, default=400, help="data set size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", help="scheduler address (default: embedded cluster)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.address:  # dynflow's own discovery: DASK_DYNFLOW__ADDRESS does the same
        dask.config.set({"dynflow.address": args.address})
    grid = make_grid(args.n)
    result = sweep.build(grid, args.samples, seed=args.seed).compute()

    # the same sweep in plain Python, one run after another
    data = make_dataset.fn(args.samples, args.seed)
    want = pick_best.fn([train.fn(p, data) for p in grid])
    # equal up to rounding: a remote worker's BLAS may sum in another order
    assert result["runs"] == want["runs"], (result, want)
    got, exp = result["best"], want["best"]
    assert (got["degree"], got["alpha"]) == (exp["degree"], exp["alpha"]), (got, exp)
    assert math.isclose(got["val_mse"], exp["val_mse"], rel_tol=1e-9), (got, exp)
    best = result["best"]
    print(
        f"{result['runs']} models trained on the cluster; best: degree {best['degree']}, "
        f"alpha {best['alpha']:.3g}, validation MSE {best['val_mse']:.4f} "
        f"(train MSE {best['train_mse']:.4f})"
    )
    return result


if __name__ == "__main__":
    main()
