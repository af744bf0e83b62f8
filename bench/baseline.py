"""The bar a network must clear: aperture photometry + a boosted tree (or a logistic regression) on packed shards.

What an astronomer would try before any network: measure ~80 numbers on each image (stellar_dist/data/photometry.py:
background-subtracted fluxes in six apertures per band, colours, band shares, concentration, peak, the cumulative
profile, size, elongation, noise, signal-to-noise, a neighbour) and fit scikit-learn's HistGradientBoostingClassifier
on the labeled split; score the test split (or the validation split packed as test) with the same report as a
training run (`metrics.json`: accuracy, balanced accuracy, macro-F1, per-class precision / recall / F1).

    python bench/baseline.py --shards data/sdss-shards --out runs/baseline/tree
    python bench/baseline.py --shards data/sdss-shards --out runs/baseline/logreg --model logreg

Works on any packed catalog (RGB or N-band). bench/label_efficiency.py runs it as the algorithms `tree` and
`logreg` beside the network: `--run "300 tree 0,1,2"`. Seconds for 20,000 cutouts on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stellar_dist.data.manifest import load_manifest  # noqa: E402
from stellar_dist.data.photometry import measure  # noqa: E402
from stellar_dist.data.streams import ItemMaker, OnceStream, make_loader, shard_paths  # noqa: E402
from stellar_dist.core.metrics import classification_report, format_report  # noqa: E402

MODELS = ("tree", "logreg")


@torch.no_grad()
def measured(shards: str, manifest: dict, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, photometric numbers) of every readable sample of a split, sorted by id."""
    maker = ItemMaker.for_shards("plain", manifest)
    ids, labels, numbers = [], [], []
    for batch in make_loader(OnceStream(shard_paths(shards, split), maker, 512, rank=0, world_size=1), 1):
        valid = batch["valid"]
        ids.append(batch["id"][valid])
        labels.append(batch["label"][valid])
        numbers.append(measure(batch["image"][valid]))
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids, labels, numbers = (torch.cat(part).numpy() for part in (ids, labels, numbers))
    order = np.argsort(ids, kind="stable")
    return ids[order], labels[order], numbers[order]


def fit(model: str, numbers: np.ndarray, labels: np.ndarray, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if model == "tree":  # scikit-learn's defaults; the seed moves its early-stopping holdout (over 10,000 rows)
        return HistGradientBoostingClassifier(random_state=seed).fit(numbers, labels)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed)).fit(numbers, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="a `stellar-dist pack` output folder")
    parser.add_argument("--out", required=True, help="folder for metrics.json (created)")
    parser.add_argument("--model", choices=MODELS, default="tree")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    manifest = load_manifest(args.shards)
    started = time.perf_counter()
    _, train_labels, train_numbers = measured(args.shards, manifest, "labeled")
    _, test_labels, test_numbers = measured(args.shards, manifest, "test")
    if len(np.unique(train_labels)) < 2 or not len(test_labels):
        raise SystemExit(f"{args.shards}: the baseline needs labeled objects of two or more classes and a test split")
    classifier = fit(args.model, train_numbers, train_labels, args.seed)
    report = classification_report(test_labels, classifier.predict(test_numbers), list(manifest["classes"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({
        "test": report, "model": args.model, "seed": args.seed, "shards": str(args.shards),
        "num_labeled": int(len(train_labels)), "features": int(train_numbers.shape[1]),
        "seconds": round(time.perf_counter() - started, 1)}, indent=2))
    print(f"{args.model} on {len(train_labels)} labeled, scored on {len(test_labels)}:\n{format_report(report)}")


if __name__ == "__main__":
    main()
