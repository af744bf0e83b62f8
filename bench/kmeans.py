"""k-means wall time on one machine: our Faiss and torch backends vs scikit-learn, same data, k and iterations.

    python bench/kmeans.py --num 100000 --dim 256 --k 50 --iterations 20 --repeats 3
    python bench/kmeans.py --num 1000000 --dim 128 --k 100 --backends torch --device cuda   # bench/gpu.sh

Prints each backend's median seconds, inertia, and time ratios against scikit-learn when it ran (one process).
"""

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.cluster import KMeans

from stellar_dist.clustering.cluster import kmeans_faiss, kmeans_torch


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
    parser.add_argument("--backends", nargs="+", default=["faiss", "torch", "sklearn"])
    parser.add_argument("--device", default="cpu", help="the torch backend's device (cuda on a GPU machine)")
    args = parser.parse_args()
    features = mixture(args.num, args.dim, args.k)
    on_device, ids = torch.from_numpy(features).to(args.device), torch.arange(args.num, device=args.device)

    def torch_run():
        inertia = kmeans_torch(on_device, ids, args.k, seed=0, iterations=args.iterations)[2]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return inertia

    runs = {
        "faiss": lambda: kmeans_faiss(features, args.k, seed=0, iterations=args.iterations)[2],
        "torch": torch_run,
        "sklearn": lambda: KMeans(args.k, n_init=1, max_iter=args.iterations, tol=0.0, random_state=0,
                                  algorithm="lloyd").fit(features).inertia_,
    }
    results = {name: timed(runs[name], args.repeats) for name in args.backends}
    print(f"{args.num} x {args.dim} features, k={args.k}, {args.iterations} iterations, median of {args.repeats}, "
          f"torch threads {torch.get_num_threads()}, torch backend on {args.device}")
    for name, (seconds, inertia) in results.items():
        ratio = f"  time / sklearn {seconds / results['sklearn'][0]:5.2f}" if "sklearn" in results else ""
        print(f"{name:>8}: {seconds:7.2f} s  inertia {inertia:12.1f}{ratio}")


if __name__ == "__main__":
    main()
