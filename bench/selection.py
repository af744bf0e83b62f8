"""Spectroscopic rounds simulated on real cutouts: which objects get spectra, and how much that buys.

The shared SDSS cutouts' classes are the oracle. One fixed test split (20% of each class, seed 0) and one
validation split (10% of each class of the rest) are set aside; the other 70% are the pool a user could choose
from, all classes hidden. Each selection rule picks N objects of the pool, their classes are revealed, a classifier
is trained on them, and macro-F1 / QSO F1 are measured on validation (to choose a rule) and test (to report it).

    python bench/selection.py features --catalog ../shared/sdss_dr16/catalog.csv --out runs/selection
    python bench/selection.py cheap --out runs/selection                  # every rule x budget x draw, seconds
    python bench/selection_cnn.py --out runs/selection --rules stratified,typical --budgets 30,100
    python bench/selection.py report --out runs/selection     # OUT/table.md + OUT/selection.png

`features`: the photometric numbers `stellar-dist select` clusters (stellar_dist.data.photometry.py), of
every cutout at 64 px, and the fixed splits. `cheap`: a logistic regression on those numbers as the classifier
(seconds a run: every rule, budgets 30 / 100 / 300, 3 draws, and the rounds 30 -> 100 -> 300). `cnn`: the
project's network on the same picks (pack --labels, train the supervised baseline or the recipe, predict the
validation and test catalogs): minutes a run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stellar_dist.selection import choose  # noqa: E402
from stellar_dist.data.photometry import measure, standardize  # noqa: E402

BUDGETS = (30, 100, 300)
DRAWS = (0, 1, 2)
CLASSES = ("GALAXY", "QSO", "STAR")


def make_features(catalog: Path, out: Path, size: int = 64) -> None:
    import torch
    from concurrent.futures import ProcessPoolExecutor

    from stellar_dist.data.images import preprocess_image

    frame = pd.read_csv(catalog, dtype=str)
    paths = [str(catalog.parent / path) for path in frame["image_path"]]
    with ProcessPoolExecutor(2) as pool:
        images = np.stack(list(pool.map(preprocess_image, paths, [size] * len(paths), ["resize"] * len(paths),
                                        chunksize=256)))
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    raw = torch.cat([measure(batch[start : start + 2048]) for start in range(0, len(batch), 2048)])
    features = standardize(raw).numpy()
    rng = np.random.default_rng(0)
    split = np.full(len(frame), "pool", dtype=object)
    for name in CLASSES:  # test 20% of each class, validation 10% of the rest
        rows = rng.permutation(np.flatnonzero(frame["Class"].to_numpy() == name))
        num_test = round(len(rows) * 0.2)
        split[rows[:num_test]] = "test"
        split[rows[num_test : num_test + round((len(rows) - num_test) * 0.1)]] = "validation"
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "features.npz", features=features, split=split.astype(str),
             label=np.array([CLASSES.index(c) for c in frame["Class"]]), objid=frame["objid"].to_numpy().astype(str),
             image_path=np.array(paths))
    print(f"{len(frame)} cutouts, {features.shape[1]} numbers each -> {out / 'features.npz'}")


def stratified(labels: np.ndarray, pool: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Random within each class, in proportion (at least one each): the reference a user cannot run."""
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(pool)
    counts = np.array([(labels[rows] == c).sum() for c in range(len(CLASSES))])
    take = np.maximum(1, np.round(budget * counts / counts.sum()).astype(int))
    take[np.argmax(take)] += budget - take.sum()
    return np.concatenate([rng.choice(rows[labels[rows] == c], t, replace=False) for c, t in enumerate(take)])


def pick(rule: str, data: dict, budget: int, seed: int, labeled: np.ndarray | None = None,
         probabilities: np.ndarray | None = None) -> np.ndarray:
    """`data["space"]`, when present, is what the rule clusters (e.g. a network's embeddings); the classifier
    always reads data["features"]."""
    pool = data["split"] == "pool"
    features = data.get("space", data["features"])
    held = np.zeros(len(features), dtype=bool) if labeled is None else labeled
    if rule == "stratified":
        return stratified(data["label"], pool & ~held, budget, seed)
    if rule == "random":
        return choose.at_random(len(features), held, budget, seed, eligible=pool).rows
    # the pool and the validation rows are the unlabeled images a user holds; test rows never shape a choice
    shaping = data["split"] != "test"
    index = np.flatnonzero(shaping)
    if rule == "typical":
        choice = choose.typical(features[index], held[index], budget, seed, eligible=pool[index])
    elif rule == "covering":
        choice = covering(features[index], held[index], budget, seed, eligible=pool[index])
    elif rule == "uncertain":
        choice = choose.uncertain(features[index], probabilities[index], held[index], budget, seed,
                                  eligible=pool[index])
    else:
        raise SystemExit(f"unknown rule {rule}")
    return index[choice.rows]


def covering(features: np.ndarray, labeled: np.ndarray, budget: int, seed: int,
             eligible: np.ndarray | None = None, purity: float = 0.95) -> choose.Choice:
    """ProbCover (Yehuda et al., NeurIPS 2022), measured and rejected (it is not in `select`): balls of radius
    delta (the largest radius whose balls stay mostly inside one k-means cluster) around every object of at most
    20,000 rows; greedily the object whose ball covers the most objects no label covers yet."""
    from sklearn.neighbors import NearestNeighbors

    candidates = ~labeled if eligible is None else (eligible & ~labeled)
    rng = np.random.default_rng(seed)
    sample = np.arange(len(features)) if len(features) <= 20_000 else np.sort(
        np.concatenate([np.flatnonzero(labeled), rng.choice(len(features), 20_000, replace=False)]))
    sample = np.unique(sample)
    points = np.ascontiguousarray(features[sample], dtype=np.float32)
    delta = _purest_radius(points, seed, purity)
    graph = NearestNeighbors(radius=delta).fit(points).radius_neighbors(points, return_distance=False)
    covered = np.zeros(len(sample), dtype=bool)
    for index in np.flatnonzero(labeled[sample]):
        covered[graph[index]] = True
    allowed = candidates[sample].copy()
    rows, scores = [], []
    for _ in range(budget):
        gains = np.array([(~covered[graph[i]]).sum() if allowed[i] else -1 for i in range(len(sample))])
        best = int(np.argmax(gains))
        rows.append(sample[best])
        scores.append(float(gains[best]))
        covered[graph[best]] = True
        allowed[best] = False
    return choose.Choice(np.array(rows, dtype=np.int64), np.full(budget, -1, dtype=np.int64), np.array(scores))


def _purest_radius(points: np.ndarray, seed: int, purity: float, num_clusters: int = 10) -> float:
    """The largest radius (among quantiles of nearest-neighbour distances) at which at least `purity` of the
    balls hold objects of one k-means cluster only."""
    sample = points[np.random.default_rng(seed).choice(len(points), min(3000, len(points)), replace=False)]
    labels = choose.cluster(sample, num_clusters, seed)
    distances = torch.cdist(torch.from_numpy(sample), torch.from_numpy(sample)).numpy()
    same = labels[:, None] == labels[None, :]
    best = float(np.quantile(distances[distances > 0], 0.001))
    for radius in np.quantile(distances[distances > 0], np.linspace(0.002, 0.2, 40)):
        pure = np.mean([(same[i][distances[i] <= radius]).all() for i in range(len(sample))])
        if pure < purity:
            break
        best = float(radius)
    return best


def fit_cheap(data: dict, rows: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000, C=1.0)
    return model.fit(data["features"][rows], data["label"][rows])


def score(data: dict, model, where: str) -> dict:
    from sklearn.metrics import f1_score

    mask = data["split"] == where
    predicted = model.predict(data["features"][mask])
    per_class = f1_score(data["label"][mask], predicted, labels=[0, 1, 2], average=None, zero_division=0)
    return {"macro_f1": float(per_class.mean()), "qso_f1": float(per_class[1])}


def cheap(out: Path, space: Path | None = None) -> None:
    """Every rule x budget x draw with the logistic regression; `space`: cluster a network's embeddings (a .npy
    in features.npz's row order, from `stellar-dist predict --embeddings`) instead of the photometric numbers."""
    data = dict(np.load(out / "features.npz", allow_pickle=False))
    rules = ("random", "stratified", "typical", "covering")
    if space is not None:
        from stellar_dist.selection.features import whiten

        embeddings = np.nan_to_num(np.load(space).astype(np.float32))
        data["space"] = whiten(embeddings)
        rules = ("typical",)
    results = []
    for draw in DRAWS:
        for budget in BUDGETS:
            for rule in rules:
                started = time.perf_counter()
                rows = pick(rule, data, budget, draw)
                results.append(_row(data, rule if space is None else f"{rule} on {space.stem}", budget, draw,
                                    rows, started))
        for warm in ("typical", "uncertain") if space is None else ():  # rounds 30 -> 100 -> 300: the first cold, then `warm`
            rows = pick("typical", data, 30, draw)
            for budget in (100, 300):
                labeled = np.zeros(len(data["label"]), dtype=bool)
                labeled[rows] = True
                started = time.perf_counter()
                probabilities = fit_cheap(data, rows).predict_proba(data["features"])
                rows = np.concatenate([rows, pick(warm, data, budget - len(rows), draw, labeled, probabilities)])
                results.append(_row(data, f"rounds typical->{warm}", budget, draw, rows, started))
        print(f"draw {draw} done", flush=True)
    (out / ("cheap.json" if space is None else f"cheap_{space.stem}.json")).write_text(json.dumps(results, indent=1))
    print(table(results))


def _row(data, rule, budget, draw, rows, started) -> dict:
    assert len(np.unique(rows)) == len(rows) == budget and (data["split"][rows] == "pool").all()
    model = fit_cheap(data, rows)
    counts = np.bincount(data["label"][rows], minlength=3).tolist()
    return {"rule": rule, "budget": budget, "draw": draw, "classes_chosen": counts,
            "validation": score(data, model, "validation"), "test": score(data, model, "test"),
            "seconds": round(time.perf_counter() - started, 2)}


def table(results: list[dict]) -> str:
    frame = pd.DataFrame([{"rule": r["rule"], "budget": r["budget"], "val": r["validation"]["macro_f1"],
                           "test": r["test"]["macro_f1"], "qso": r["test"]["qso_f1"],
                           "qso_chosen": r["classes_chosen"][1], "model": r.get("model", "logistic")}
                          for r in results])
    lines = ["| classifier | rule | spectra | val macro-F1 | test macro-F1 | test QSO F1 | QSOs among chosen |",
             "|---|---|---|---|---|---|---|"]
    for (model, rule, budget), group in frame.groupby(["model", "rule", "budget"], sort=True):
        cell = lambda column: f"{group[column].mean():.3f} ± {group[column].std(ddof=0):.3f}"  # noqa: E731
        lines.append(f"| {model} | {rule} | {budget} | {cell('val')} | {cell('test')} | {cell('qso')} | "
                     f"{group['qso_chosen'].mean():.1f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> Path:
    """Test macro-F1 and QSO F1 against the number of spectra, one line per classifier and rule (mean, std bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    frame = pd.DataFrame([{"model": r.get("model", "logistic"), "rule": r["rule"], "budget": r["budget"],
                           "macro": r["test"]["macro_f1"], "qso": r["test"]["qso_f1"]} for r in results])
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (model, rule), group in frame.groupby(["model", "rule"]):
        if rule == "covering":
            continue
        stats = group.groupby("budget")[["macro", "qso"]].agg(["mean", "std"]).fillna(0)
        style = "-" if model == "logistic" else "--"
        for axis, column in zip(axes, ("macro", "qso")):
            axis.errorbar(stats.index, stats[(column, "mean")], yerr=stats[(column, "std")], linestyle=style,
                          marker="o", capsize=3, label=f"{model}: {rule}")
    for axis, title in zip(axes, ("test macro-F1", "test QSO F1")):
        axis.set_xscale("log")
        axis.set_xticks(list(BUDGETS), [str(budget) for budget in BUDGETS])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel("spectra (labeled objects)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    figure.suptitle("Which objects get spectra: 20,000 real SDSS cutouts, fixed test split, mean ± std over draws")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["features", "cheap", "report"])
    parser.add_argument("--catalog", type=Path, default=REPO.parent / "shared/sdss_dr16/catalog.csv")
    parser.add_argument("--out", type=Path, default=REPO / "runs/selection")
    parser.add_argument("--space", type=Path, help="cheap: cluster these embeddings (.npy) instead")
    args = parser.parse_args()
    if args.step == "features":
        make_features(args.catalog, args.out)
    elif args.step == "cheap":
        cheap(args.out, args.space)
    else:
        results = [row for path in sorted(args.out.glob("cheap*.json")) for row in json.loads(path.read_text())]
        if (args.out / "cnn.json").is_file():
            results += json.loads((args.out / "cnn.json").read_text())
        (args.out / "table.md").write_text(table(results) + "\n")
        print(table(results))
        print(f"wrote {args.out / 'table.md'} and {plot(results, args.out / 'selection.png')}")


if __name__ == "__main__":
    main()
