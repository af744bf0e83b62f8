"""Label-efficiency protocol: one catalog, one fixed test split, several label counts or fractions, several
algorithms and seeds, all trained through launch/train.py; one table (mean +/- std) and one plot against the
number of labels (log axis).

    python bench/label_efficiency.py --catalog ../shared/sdss_dr16/catalog.csv --out runs/label_efficiency \
        --config configs/sdss_cpu.yaml --pack "--image-size 64" \
        --run "100 supervised 0,1,2" --run "100 softmatch 0,1,2 pretrain.steps=500" --run "0.8 supervised 0"

Each --run is "LABELS ALGORITHM SEEDS [KEY=VALUE ...]": LABELS is a count (an integer: `pack --labeled-count`,
one per class first, then by class share, nested in the count) or a fraction (`pack --labeled-fraction`);
overrides name a variant (e.g. "300 fixmatch 0 ssl.distribution_alignment=true"). ALGORITHM `tree` or
`logreg` is no network: bench/baseline.py's aperture photometry and a boosted tree or a logistic regression on the
same shards and split (the bar a network must clear). A labeled fraction of
1 - test fraction (0.8 by default) labels every training sample: the ceiling of the recipe. `--validation`
evaluates every run on a validation split carved from the training pool (`pack --validation-fraction`), never on
the test split: choose recipes and hyperparameters with it, then report the chosen ones without it. Every count or
fraction is packed with the same seed and test fraction, so the test split is the same sample set for all of them
and smaller labeled splits are subsets of larger ones. By default a run's seed varies the initialisation and the
order only: every seed learns from the same labeled objects. `--labeled-sets` packs the shards once per seed with
`pack --labeled-seed SEED`, so that each seed also labels other objects (same test and validation rows): the spread
then includes the luck of which objects have spectra, which at 30 labels moves macro-F1 more than any algorithm. Finished runs are kept and skipped, so the command can be re-run to extend a sweep; `--report`
only rebuilds the table and plot. Writes OUT/results.json, OUT/table.md and OUT/label_efficiency.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


VALIDATION_FRACTION = 0.1  # of each class, carved from the training pool by --validation
SHORT = {"pretrain.steps": "pretrain"}  # a row's name shows an override by its last key part unless too vague


def parse_run(text: str) -> dict:
    labels, algorithm, seeds, *overrides = text.split()
    pairs = [item.split("=", 1) for item in overrides]
    short = [f"{SHORT.get(key, key.split('.')[-1])}={value}" for key, value in pairs]
    label = " ".join([algorithm, *short])
    return {"labels": labels, "algorithm": algorithm, "seeds": [int(s) for s in seeds.split(",")],
            "overrides": overrides, "label": label}


def split_tag(validation: bool, labeled_sets: bool) -> str:
    """How a sweep's shards were split, in its folder names: "", "_validation", "_sets", "_validation_sets"."""
    return ("_validation" if validation else "") + ("_sets" if labeled_sets else "")


def shards_dir(out: Path, labels: str, tag: str, seed: int) -> Path:
    folder = out / "shards" / f"labeled_{labels}{tag}"
    return folder / f"set{seed}" if tag.endswith("_sets") else folder  # one labeled set per seed


def pack(catalog: str, out: Path, labels: str, pack_args: str, test_fraction: float, tag: str, seed: int) -> Path:
    shards = shards_dir(out, labels, tag, seed)
    amount = ["--labeled-count", labels] if labels.isdigit() else ["--labeled-fraction", labels]
    held = ["--validation-fraction", str(VALIDATION_FRACTION)] if "_validation" in tag else []
    held += ["--labeled-seed", str(seed)] if tag.endswith("_sets") else []
    if not (shards / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "stellar_dist", "pack", "--catalog", catalog, "--out", str(shards),
                        *amount, "--test-fraction", str(test_fraction), *held, *shlex.split(pack_args)],
                       check=True, cwd=REPO)
    return shards


def run_dir(out: Path, run: dict, seed: int, tag: str) -> Path:
    name = run["label"].replace(" ", "_").replace("=", "-")
    return out / "runs" / f"labeled_{run['labels']}{tag}" / name / f"seed{seed}"


def same_config_or_exit(config: str, overrides: list[str], folder: Path) -> None:
    """A finished run is reused only if it ran with the config this command asks for: a changed config file must
    never relabel old results."""
    sys.path.insert(0, str(REPO))
    from stellar_dist.training.config import Config, load_config, to_dict

    def flat(tree: dict, prefix: str = "") -> dict:
        return {key: value for name, item in tree.items()
                for key, value in (flat(item, f"{prefix}{name}.") if isinstance(item, dict)
                                   else {prefix + name: item}).items()}

    from stellar_dist.clustering.cluster import resolve_backend

    wanted = flat(to_dict(load_config(config, overrides)))
    ran = flat(yaml.safe_load((folder / "config.yaml").read_text()))
    for tree in (wanted, ran):  # "auto" (the default since issue 20) is the backend it resolves to here
        tree["cluster.backend"] = resolve_backend(tree.get("cluster.backend", "auto"))
    defaults = flat(to_dict(Config()))  # a key added since the run behaved as its default (new keys are additive)
    # runs may be moved; a run with a pretraining stage names that stage's checkpoint in model.weights; the
    # options of algorithms the run does not use (ssl.<other>.*) cannot change it
    ignored = {"output_dir"} | ({"model.weights"} if wanted.get("pretrain.steps") else set())
    ignored |= {key for key in wanted.keys() | ran.keys() if key.count(".") == 2 and key.startswith("ssl.")
                and key.split(".")[1] != wanted.get("ssl.algorithm")}
    changed = sorted(key for key in wanted.keys() | ran.keys() if key not in ignored
                     and wanted.get(key) != ran.get(key, defaults.get(key)))
    if changed:
        differences = ", ".join(f"{key}: ran {ran.get(key)!r}, asked {wanted.get(key)!r}" for key in changed)
        sys.exit(f"[label-efficiency] {folder} finished with another config ({differences}): move it aside or use "
                 "another --out")


def run_overrides(shards: Path, folder: Path, run: dict, seed: int, extra: list[str]) -> list[str]:
    return [f"data.shards={shards}", f"output_dir={folder}", f"ssl.algorithm={run['algorithm']}", f"seed={seed}",
            "resume=auto", "tracking=none", *extra, *run["overrides"]]


def share_pretraining(folder: Path, run: dict, seed: int, tag: str) -> None:
    """A pretraining stage reads no label and the same images at every count (labeled + unlabeled = the same
    training pool), so the curve trains it once per seed and row: a finished stage of the same row and seed at
    another count is linked (hard links, no copy) into this run, which then trains stage 2 only. The stage's
    own linear probe (pretrain/metrics.json) stays the one of the count it was trained with."""
    stage = folder / "pretrain"
    if not any(item.startswith("pretrain.steps=") and item != "pretrain.steps=0" for item in run["overrides"]) \
            or (stage / "metrics.json").exists():
        return
    runs = folder.parents[2]  # OUT/runs/labeled_<count><tag>/<row>/seed<seed>
    for other in sorted(runs.glob(f"labeled_*/{folder.parent.name}/{folder.name}/pretrain")):
        # the same training pool (labeled + unlabeled): the same split kind; labels (the name's 2nd part) differ
        same_split = other.parents[2].name.split("_", 2)[2:] == folder.parents[1].name.split("_", 2)[2:]
        if other != stage and same_split and (other / "metrics.json").exists():
            sys.path.insert(0, str(REPO))
            from stellar_dist.training.resume import RUN_MARKER

            if stage.exists():
                shutil.rmtree(stage)  # an unfinished stage of this run: the finished one replaces it
            folder.mkdir(parents=True, exist_ok=True)
            (folder / RUN_MARKER).write_text("a stellar-dist run (bench/label_efficiency.py linked its pretrain/)\n")
            shutil.copytree(other, stage, copy_function=os.link)
            (stage / "shared_from.txt").write_text(f"{other}\n")
            print(f"[label-efficiency] pretraining stage shared from {other}", flush=True)
            return


BASELINES = ("tree", "logreg")  # bench/baseline.py on the same shards: aperture photometry + a classical model


def fit_baseline(shards: Path, folder: Path, run: dict, seed: int) -> None:
    """The algorithms `tree` and `logreg`: bench/baseline.py's photometric numbers and classifier on the same
    shards, scored on the same split, written as the network's metrics.json."""
    if (folder / "metrics.json").exists():
        return
    started = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "bench" / "baseline.py"), "--shards", str(shards), "--out",
                    str(folder), "--model", run["algorithm"], "--seed", str(seed)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    (folder / "wall_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")


def train(config: str, shards: Path, folder: Path, run: dict, seed: int, extra: list[str], tag: str = "") -> None:
    if run["algorithm"] in BASELINES:
        return fit_baseline(shards, folder, run, seed)
    overrides = run_overrides(shards, folder, run, seed, extra)
    if (folder / "metrics.json").exists():
        same_config_or_exit(config, overrides, folder)
        return
    share_pretraining(folder, run, seed, tag)
    command = [sys.executable, str(REPO / "launch" / "train.py"), "--config", config, *overrides]
    started = time.perf_counter()
    print(f"[label-efficiency] {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    (folder / "wall_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")


def pseudo_label_share(folder: Path, name: str) -> float | None:
    """Share of the accepted pseudo-labels that are `name`, over the second half of the run (None: no pseudo-labels
    or a run logged before this diagnostic existed, or a baseline: no log)."""
    if not (folder / "log.jsonl").exists():
        return None
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    values = [row.get(f"train/pseudo_label_share/{name}") for row in rows if "train/sup_loss" in row]
    values = [value for value in values[len(values) // 2 :] if value is not None]
    return float(np.mean(values)) if values else None


def collect(out: Path, runs: list[dict], tag: str) -> list[dict]:
    rows = []
    for run in runs:
        found = []
        for seed in run["seeds"]:
            folder = run_dir(out, run, seed, tag)
            if (folder / "metrics.json").exists():
                metrics = json.loads((folder / "metrics.json").read_text())
                wall = folder / "wall_seconds.txt"
                found.append((seed, metrics, float(wall.read_text()) if wall.exists() else None))
        if not found:
            continue
        manifest = json.loads((shards_dir(out, run["labels"], tag, found[0][0]) / "manifest.json").read_text())
        row = {"labels": run["labels"], "num_labeled": manifest["num_samples"]["labeled"], "label": run["label"],
               "evaluated_on": "validation" if "_validation" in tag else "test",
               "labeled_sets": "one per seed" if tag.endswith("_sets") else "one", "seeds": [seed for seed, _, _ in found],
               "wall_seconds": [wall for _, _, wall in found]}
        tests = [metrics["test"] for _, metrics, _ in found]
        for key in METRICS:
            values = [test[key] for test in tests]
            row[key] = (float(np.mean(values)), float(np.std(values)))
        for name in tests[0]["per_class"]:
            values = [test["per_class"][name]["f1"] for test in tests]
            row[f"f1_{name}"] = (float(np.mean(values)), float(np.std(values)))
        rare = min(tests[0]["per_class"], key=lambda name: tests[0]["per_class"][name]["support"])
        for key in ("precision", "recall"):
            values = [test["per_class"][rare][key] for test in tests]
            row[f"{key}_{rare}"] = (float(np.mean(values)), float(np.std(values)))
        shares = [share for seed, _, _ in found
                  if (share := pseudo_label_share(run_dir(out, run, seed, tag), rare))
                  is not None]  # runs older than the diagnostic have none
        row["rare"], row[f"pseudo_label_share_{rare}"] = rare, float(np.mean(shares)) if shares else None
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    classes = [key[3:] for key in rows[0] if key.startswith("f1_")] if rows else []
    rare = rows[0]["rare"] if rows else ""
    header = ["labeled", "algorithm", "seeds", "accuracy", "balanced acc.", "macro-F1",
              *(f"F1 {name}" for name in classes), f"{rare} precision", f"{rare} recall",
              f"{rare} share of pseudo-labels", "wall s / run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["num_labeled"]), row["label"], ",".join(map(str, row["seeds"]))]
        spread = len(row["seeds"]) > 1  # one seed has no spread: print the value alone
        cells += [f"{row[key][0]:.3f} ± {row[key][1]:.3f}" if spread else f"{row[key][0]:.3f}"
                  for key in (*METRICS, *(f"f1_{n}" for n in classes), f"precision_{rare}", f"recall_{rare}")]
        share = row[f"pseudo_label_share_{rare}"]
        cells.append("-" if share is None else f"{share:.3f}")
        walls = [wall for wall in row["wall_seconds"] if wall]
        cells.append(f"{np.mean(walls):.0f}" if walls else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, rare: str = "QSO") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    figure, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    counts = sorted({row["num_labeled"] for row in rows})
    for index, label in enumerate(sorted({row["label"] for row in rows})):
        points = sorted((row["num_labeled"], row) for row in rows if row["label"] == label)
        for axis, key in zip(axes, ("macro_f1", f"f1_{rare}")):
            if all(key in row for _, row in points):
                axis.errorbar([f for f, _ in points], [r[key][0] for _, r in points],
                              yerr=[r[key][1] for _, r in points], marker="osD^v<>px*"[index % 10], capsize=3,
                              label=label, linestyle="-" if len(points) > 1 else "none")
    where = rows[0]["evaluated_on"] if rows else "test"
    for axis, title in zip(axes, ("macro-F1", f"{rare} F1")):
        axis.set(xscale="log", xlabel="labeled objects (spectra)", ylabel=f"{title} on the {where} split",
                 title=f"{title} against the number of labels")
        axis.set_xticks(counts, [str(count) for count in counts])
        axis.xaxis.set_minor_formatter(NullFormatter())
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.03 + 0.045 * -(-len(labels) // 3), 1, 1))  # room for the legend's rows
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default="../shared/sdss_dr16/catalog.csv")
    parser.add_argument("--out", default="runs/label_efficiency")
    parser.add_argument("--config", default="configs/sdss_cpu.yaml")
    parser.add_argument("--pack", default="--image-size 64", help="extra `stellar-dist pack` flags (the recipe's "
                        "64 px whole field; issue 17's runs used \"--preprocess crop --image-size 32\")")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--run", action="append", default=[], help='"LABELS ALGORITHM SEEDS [KEY=VALUE ...]"')
    parser.add_argument("--validation", action="store_true", help="evaluate on a validation split carved from the "
                        "training pool (for choosing), not on the test split")
    parser.add_argument("--labeled-sets", action="store_true", help="each seed labels other objects too (pack "
                        "--labeled-seed SEED); the test and validation rows stay the same")
    parser.add_argument("--report", action="store_true", help="only rebuild the table and plot")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides for every run (e.g. train.steps=500)")
    args = parser.parse_args()
    # Paths as the user typed them, from the user's folder (packing and training run from the repository root).
    args.catalog, args.config = str(Path(args.catalog).resolve()), str(Path(args.config).resolve())
    out, runs = Path(args.out).resolve(), [parse_run(text) for text in args.run]
    tag = split_tag(args.validation, args.labeled_sets)
    if not runs:  # the table is rebuilt from the runs named: none named would replace it with an empty one
        raise SystemExit('name the runs with --run "LABELS ALGORITHM SEEDS [KEY=VALUE ...]" (with --report too: '
                         "the table is rebuilt from exactly those runs)")
    if not args.report:
        for run in runs:
            for seed in run["seeds"]:
                shards = pack(args.catalog, out, run["labels"], args.pack, args.test_fraction, tag, seed)
                train(args.config, shards, run_dir(out, run, seed, tag), run, seed, args.overrides, tag)
    for run in runs:  # --report too: a table never mixes configs
        for seed in run["seeds"]:
            folder = run_dir(out, run, seed, tag)
            if (folder / "metrics.json").exists() and run["algorithm"] not in BASELINES:
                shards = shards_dir(out, run["labels"], tag, seed)
                same_config_or_exit(args.config, run_overrides(shards, folder, run, seed, args.overrides), folder)
    rows = collect(out, runs, tag)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    (out / "table.md").write_text(table(rows))
    if rows:
        plot(rows, out / "label_efficiency.png")
    print(table(rows))


if __name__ == "__main__":
    main()
