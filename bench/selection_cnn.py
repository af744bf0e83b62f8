"""The project's network on the objects each selection rule picks (see bench/selection.py for the protocol).

    python bench/selection_cnn.py --out runs/selection --rules stratified,typical,random --budgets 30,100 \
        --algorithm supervised

Rule "rounds" (budgets 100 and 300) is the loop a user runs: the network trained on the previous round (30 cold
TypiClust picks, then 100) chooses the next objects with `stellar-dist select --model` on that round's shards.
Per rule, budget and draw: the pool catalog with every class hidden, the picks' classes joined with
`pack --labels` (`--test-fraction 0`: the fixed test and validation objects are never in the shards), the CPU
recipe trained (`--algorithm supervised`: its baseline line), then `stellar-dist predict` on the validation and
test catalogs and macro-F1 / QSO F1 measured against their classes. Finished runs are kept and skipped.
`--algorithm softmatch` (the recipe) trains on the very objects the supervised runs of the same rule, budget and
draw were given: SSL against supervised on the same chosen labels.
Writes OUT/cnn.json; `python bench/selection.py report --out OUT` tabulates it with the cheap rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from selection import CLASSES, REPO, pick

PACK = ["--test-fraction", "0", "--preprocess", "crop", "--image-size", "32"]


def _catalogs(data: dict, out: Path) -> None:
    for name in ("pool", "validation", "test"):
        mask = data["split"] == name
        frame = pd.DataFrame({"image_path": data["image_path"][mask], "objid": data["objid"][mask],
                              "Class": "" if name == "pool" else np.array(CLASSES)[data["label"][mask]]})
        frame.to_csv(out / f"{name}.csv", index=False)


def _measure(predictions: Path, truth: Path) -> dict:
    predicted = pd.read_csv(predictions, dtype=str).set_index("objid")["predicted_class"]
    frame = pd.read_csv(truth, dtype=str)
    per_class = f1_score(frame["Class"], predicted.loc[frame["objid"]].to_numpy(), labels=list(CLASSES), average=None,
                         zero_division=0)
    return {"macro_f1": float(per_class.mean()), "qso_f1": float(per_class[1])}


def one_run(data: dict, out: Path, rule: str, budget: int, draw: int, algorithm: str) -> dict:
    folder = out / "cnn" / f"{rule}_{budget}_{algorithm}_{draw}"
    if (folder / "result.json").is_file():
        return json.loads((folder / "result.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    same_picks = out / "cnn" / f"{rule}_{budget}_supervised_{draw}" / "labels.csv"
    if algorithm != "supervised" and same_picks.is_file():  # another algorithm on the very objects chosen
        row_of = {objid: row for row, objid in enumerate(data["objid"])}
        rows = np.array([row_of[objid] for objid in pd.read_csv(same_picks, dtype=str)["objid"]])
    else:
        rows = round_rows(data, out, folder, budget, draw, algorithm) if rule == "rounds" else \
            pick(rule, data, budget, draw)
    pd.DataFrame({"objid": data["objid"][rows], "Class": np.array(CLASSES)[data["label"][rows]]}).to_csv(
        folder / "labels.csv", index=False)
    shards = folder / "shards"
    subprocess.run(["stellar-dist", "pack", "--catalog", str(out / "pool.csv"), "--labels", str(folder / "labels.csv"),
                    "--out", str(shards), "--overwrite", *PACK], check=True, capture_output=True)
    overrides = ["ssl.algorithm=supervised", "pretrain.steps=0"] if algorithm == "supervised" else []
    subprocess.run(["stellar-dist", "train", "--config", str(REPO / "configs/sdss_cpu.yaml"), f"data.shards={shards}",
                    f"output_dir={folder / 'run'}", f"seed={draw}", *overrides], check=True, capture_output=True)
    result = {"rule": rule, "budget": budget, "draw": draw, "model": f"cnn {algorithm}",
              "classes_chosen": np.bincount(data["label"][rows], minlength=3).tolist()}
    for where in ("validation", "test"):
        predictions = folder / f"{where}_predictions.csv"
        subprocess.run(["stellar-dist", "predict", "--model", str(folder / "run"), "--input", str(out / f"{where}.csv"),
                        "--out", str(predictions), "--overwrite"], check=True, capture_output=True)
        result[where] = _measure(predictions, out / f"{where}.csv")
    result["seconds"] = round(time.perf_counter() - started, 1)
    (folder / "result.json").write_text(json.dumps(result))
    return result


def round_rows(data: dict, out: Path, folder: Path, budget: int, draw: int, algorithm: str) -> np.ndarray:
    """The previous round's spectra plus what `stellar-dist select --model` picks with the previous round's
    network, on the previous round's shards (its unlabeled split is the pool minus what has spectra)."""
    previous = {100: 30, 300: 100}[budget]
    previous_rule = "typical" if previous == 30 else "rounds"
    one_run(data, out, previous_rule, previous, draw, algorithm)
    before = out / "cnn" / f"{previous_rule}_{previous}_{algorithm}_{draw}"
    subprocess.run(["stellar-dist", "select", "--shards", str(before / "shards"), "--budget", str(budget - previous),
                    "--model", str(before / "run"), "--out", str(folder / "targets.csv"), "--seed", str(draw),
                    "--overwrite"], check=True, capture_output=True)
    row_of = {objid: row for row, objid in enumerate(data["objid"])}
    held = pd.read_csv(before / "labels.csv", dtype=str)["objid"]
    chosen = pd.read_csv(folder / "targets.csv", dtype=str)["objid"]
    return np.array([row_of[objid] for objid in [*held, *chosen]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs/selection")
    parser.add_argument("--rules", default="stratified,typical")
    parser.add_argument("--budgets", default="30,100")
    parser.add_argument("--draws", default="0,1,2")
    parser.add_argument("--algorithm", default="supervised")
    args = parser.parse_args()
    data = dict(np.load(args.out / "features.npz", allow_pickle=False))
    _catalogs(data, args.out)
    results_path = args.out / "cnn.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    for draw in map(int, args.draws.split(",")):
        for budget in map(int, args.budgets.split(",")):
            for rule in args.rules.split(","):
                if rule == "rounds" and budget not in (100, 300) or rule == "typical" and budget != 30:
                    continue
                result = one_run(data, args.out, rule, budget, draw, args.algorithm)
                results = [r for r in results if (r["rule"], r["budget"], r["draw"], r["model"]) !=
                           (rule, budget, draw, result["model"])] + [result]
                results_path.write_text(json.dumps(results, indent=1))
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
