"""`stellar-dist select`: which unlabeled objects to get spectra for next.

    stellar-dist select --shards data/shards --budget 50 --out targets.csv               # cold start: no model
    stellar-dist select --shards data/shards --budget 50 --out targets.csv --model runs/mine   # warm start
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m stellar_dist select \
        --shards data/shards --budget 50 --out targets.parquet --model runs/mine     # every rank reads a share

Candidates are the shards' unlabeled objects (never one with a spectrum; the test split is never read). Cold
start clusters the photometric numbers measured on the images (photometry.py) and takes the most typical object
of each cluster no spectrum covers yet (TypiClust). Warm start uses the trained model's features and
probabilities: in each of `budget` clusters the object the model is least sure of. `--rule` overrides the choice
(typical, uncertain, random). Writes OUT (csv / parquet / fits: rank, id, objid, image_path, cluster, score,
rule) and OUT's name with `.png`: the chosen cutouts by cluster. What the rules buy, measured on real cutouts:
bench/RESULTS.md ("Choosing the spectra").
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from ..core.errors import UserError
from ..core.files import atomic_path
from ..core.outputs import OutputLock
from . import choose

RULES = ("auto", "typical", "uncertain", "random")
FORMATS = (".csv", ".parquet", ".fits")


def _check(args, manifest: dict) -> None:
    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"--out {out} must end in {', '.join(FORMATS)}")
    if out.exists() and not args.overwrite:
        raise UserError(f"--out {out} exists: choose a new name or pass --overwrite")
    if not manifest["num_samples"]["unlabeled"]:
        raise UserError(f"{args.shards} holds no unlabeled object to choose from: pack a catalog whose rows "
                        "without a spectrum have an empty class")
    if not 1 <= args.budget <= manifest["num_samples"]["unlabeled"]:
        raise UserError(f"--budget {args.budget} must lie in [1, {manifest['num_samples']['unlabeled']}] (the "
                        f"unlabeled objects of {args.shards})")
    if args.rule == "uncertain" and not args.model:
        raise UserError("--rule uncertain needs a trained model's probabilities: pass --model RUN")


def _model(path: str, manifest: dict, device):
    from ..inference.model_folder import load_model

    model, description = load_model(path, device)
    for key in ("image_size", "encoding", "preprocess"):
        if description.get(key) != manifest.get(key):
            raise UserError(f"--model {path} was trained on {key} {description.get(key)!r}, the shards hold "
                            f"{manifest.get(key)!r}: select on shards packed like the model's")
    return model


def choose_rows(rows, rule: str, budget: int, seed: int) -> choose.Choice:
    """The rule applied to the collected rows (labeled rows are never chosen)."""
    if rule == "random":
        return choose.at_random(len(rows.ids), rows.labeled, budget, seed)
    if rule == "uncertain":
        return choose.uncertain(rows.features, rows.probabilities, rows.labeled, budget, seed)
    return choose.typical(rows.features, rows.labeled, budget, seed)


def _targets(rows, picked: choose.Choice, rule: str, shards_dir: str) -> tuple[pd.DataFrame, dict[int, dict]]:
    """The targets table, and the chosen raw samples (read once: their records here, their pixels in the figure)."""
    from ..data.streams import read_some

    ids = rows.ids[picked.rows]
    wanted: dict[str, set[int]] = {"unlabeled": set(rows.shards[picked.rows].tolist())}
    raws = read_some(shards_dir, wanted, set(ids.tolist()))
    records = {key: json.loads(raw["json"]) for key, raw in raws.items()}
    objids = [records[int(i)].get("meta", {}).get("objid") for i in ids]
    frame = pd.DataFrame({"rank": np.arange(1, len(ids) + 1), "id": ids,
                          "objid": ["" if value is None else str(value) for value in objids],
                          "image_path": [records[int(i)]["source"] for i in ids], "cluster": picked.cluster,
                          "score": np.round(picked.score, 6), "rule": rule})
    return frame, raws


def write_targets(frame: pd.DataFrame, out: Path) -> None:
    with atomic_path(out) as temporary:
        suffix = out.suffix.lower()
        if suffix == ".csv":
            frame.to_csv(temporary, index=False)
        elif suffix == ".parquet":
            frame.to_parquet(temporary, index=False)
        else:
            from astropy.table import Table

            Table.from_pandas(frame).write(temporary, format="fits")


def select(shards: str, budget: int, out: str, *, model: str | None = None, rule: str = "auto", seed: int = 0,
           workers: int = 2, overwrite: bool = False) -> pd.DataFrame | None:
    """Choose `budget` unlabeled objects of `shards` and write them to `out` (see the module docstring; the
    command is `stellar-dist select`). Every rank reads its share of the shards; rank 0 chooses and writes
    (returns the targets there)."""
    if rule not in RULES:
        raise UserError(f"rule={rule!r} is not one of {', '.join(RULES)}")
    args = SimpleNamespace(shards=shards, budget=budget, out=out, model=model, rule=rule, seed=seed, workers=workers,
                           overwrite=overwrite)
    import torch
    from accelerate import PartialState

    from ..core import dist
    from ..core.errors import raise_if_any
    from ..data.manifest import check_shards, load_manifest
    from .features import collect

    device = PartialState(cpu=not torch.cuda.is_available()).device  # starts the process group when launched
    manifest = load_manifest(args.shards)
    check_shards(args.shards, manifest)
    _check(args, manifest)
    model = _model(args.model, manifest, device) if args.model else None
    rule = args.rule if args.rule != "auto" else ("uncertain" if model is not None else "typical")
    lock, refusal = None, None
    if dist.is_main():
        try:
            lock = OutputLock(Path(args.out), "stellar-dist select")
        except UserError as error:
            refusal = str(error)
    raise_if_any(refusal)
    try:
        rows = collect(args.shards, manifest, model, workers=args.workers, device=device)
        return _choose_and_write(args, rows, rule, manifest) if dist.is_main() else None
    finally:
        if lock is not None:
            lock.release()


def _choose_and_write(args, rows, rule: str, manifest: dict) -> pd.DataFrame:
    from .figure import plot_targets

    out = Path(args.out)
    candidates = int((~rows.labeled).sum())
    if args.budget > candidates:
        raise UserError(f"--budget {args.budget} exceeds the {candidates} readable unlabeled objects")
    picked = choose_rows(rows, rule, args.budget, args.seed)
    frame, raws = _targets(rows, picked, rule, args.shards)
    write_targets(frame, out)
    figure = plot_targets(frame, raws, manifest, out.with_suffix(".png"))
    print(f"chose {len(frame)} of {candidates} unlabeled objects ({int(rows.labeled.sum())} with spectra) by "
          f"{rule}; wrote {out} and {figure}")
    return frame
