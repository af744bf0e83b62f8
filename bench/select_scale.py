"""`select`'s choice at survey scale: time and peak memory of TypiClust and margin-per-cluster on N rows.

    python bench/select_scale.py --rows 1000000 --budget 100

The rows are synthetic features of select's widths (82 photometric numbers cold, 64 projected model features
warm) drawn from a mixture of 50 Gaussians; what is measured is the choice itself (k-means on at most 200,000 rows,
assignment of every row in blocks, typicality on at most 2,000 members of each chosen cluster). The feature pass
over the shards is measured separately (`stellar-dist select` on packed shards prints its images/s via tqdm).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stellar_dist.selection import choose  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--budget", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = {"rows": args.rows, "budget": args.budget}
    for rule, width in (("typical", 82), ("uncertain", 64)):
        centres = rng.normal(size=(50, width)).astype(np.float32) * 3
        features = centres[rng.integers(0, 50, args.rows)] + rng.normal(size=(args.rows, width)).astype(np.float32)
        labeled = np.zeros(args.rows, dtype=bool)
        labeled[rng.choice(args.rows, 100, replace=False)] = True
        before = peak_rss_mb()
        started = time.perf_counter()
        if rule == "typical":
            choice = choose.typical(features, labeled, args.budget, seed=0)
        else:
            probabilities = rng.dirichlet(np.ones(3), size=args.rows).astype(np.float32)
            choice = choose.uncertain(features, probabilities, labeled, args.budget, seed=0)
        results[rule] = {"seconds": round(time.perf_counter() - started, 1), "features_mb": features.nbytes / 2**20,
                         "peak_rss_mb": round(peak_rss_mb(), 1), "peak_rss_before_mb": round(before, 1),
                         "chosen": len(choice.rows)}
        del features
        print(json.dumps({rule: results[rule]}), flush=True)


if __name__ == "__main__":
    main()
