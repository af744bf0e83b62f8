"""k-means wall time on one machine: our Faiss and torch backends vs scikit-learn, same data, k and iterations.

    python bench/kmeans.py --num 100000 --dim 256 --k 50 --iterations 20 --repeats 3

Prints each backend's median seconds, inertia, and time ratios against scikit-learn (one process, no GPU here).
"""

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.cluster import KMeans

from stellar_dist.cluster import kmeans_faiss, kmeans_torch


def mixture(num: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, size=(centres, dim))
    return (means[rng.integers(centres, size=num)] + rng.normal(0, 0.6, size=(num, dim))).astype(np.float32)


def timed(function, repeats: int):
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    features = mixture(args.num, args.dim, args.k)
    ids = torch.arange(args.num)
    runs = {
        "faiss": lambda: kmeans_faiss(features, args.k, seed=0, iterations=args.iterations)[2],
        "torch": lambda: kmeans_torch(torch.from_numpy(features), ids, args.k, seed=0, iterations=args.iterations)[2],
        "sklearn": lambda: KMeans(args.k, n_init=1, max_iter=args.iterations, tol=0.0, random_state=0,
                                  algorithm="lloyd").fit(features).inertia_,
    }
    results = {name: timed(run, args.repeats) for name, run in runs.items()}
    print(f"{args.num} x {args.dim} features, k={args.k}, {args.iterations} iterations, "
          f"median of {args.repeats}, torch threads {torch.get_num_threads()}")
    for name, (seconds, inertia) in results.items():
        ratio = seconds / results["sklearn"][0]
        print(f"{name:>8}: {seconds:7.2f} s  inertia {inertia:12.1f}  time / sklearn {ratio:5.2f}")


if __name__ == "__main__":
    main()
