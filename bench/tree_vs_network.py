"""One figure for issue 32: macro-F1 and QSO F1 against the number of labels on the validation split, for the
boosted tree and the logistic regression on the aperture numbers (bench/baseline.py), issue 17's network and the
network with the photometric branch; read from bench/label_efficiency.py's results.json files.

    python bench/tree_vs_network.py bench/results/label_efficiency_32_validation.json \
        bench/results/label_efficiency_17_sets_validation.json --out bench/results/tree_vs_network.png
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LINES = {  # row label in results.json -> legend
    "tree": "boosted tree on ~80 aperture numbers",
    "logreg": "logistic regression on them",
    "supervised": "network, issue 17 (32 px crops, no branch): configs/sdss_cpu_few.yaml",
    "supervised photometry=true centre_crop=32 max_shift_fraction=0 logit_adjustment=0.5":
        "network + photometric branch: configs/sdss_cpu.yaml",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = [row for path in args.results for row in json.load(open(path)) if row["label"] in LINES]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, legend in LINES.items():
        mine = sorted((row for row in rows if row["label"] == label and row["num_labeled"] != 400),
                      key=lambda row: row["num_labeled"])
        if label == "tree":  # 30 labels: too few rows for a split, it predicts the majority class
            mine = [row for row in mine if row["num_labeled"] > 30]
        for axis, key in zip(axes, ("macro_f1", "f1_QSO")):
            axis.errorbar([row["num_labeled"] for row in mine], [row[key][0] for row in mine],
                          yerr=[row[key][1] for row in mine], marker="o", capsize=3, label=legend)
    for axis, name in zip(axes, ("macro-F1", "QSO F1")):
        axis.set_xscale("log")
        axis.set_xlabel("labeled objects (spectra)")
        axis.set_ylabel(f"{name}, validation split")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle("Real SDSS cutouts: 3 labeled sets per count, mean ± std", fontsize=10)
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
