"""Survey scale (issue 20): the cost per sample of every phase, from 10^4 to 10^6 samples, with 2 ranks.

    python bench/scale.py --out /tmp/scale --sizes 10000,100000,1000000

For each size N: N distinct 8 px cutouts (uint8 noise around one of three class colours) written as PNG files, then
- pack: `stellar-dist pack --encoding u8` (one process, --workers 2);
- train: `accelerate launch` with 2 CPU ranks (gloo) for a fixed number of FixMatch steps; metrics.json gives the
  phases: setup (the start-of-run shard checks), train, final evaluation (+ predictions.csv), final clustering
  (torch k-means, + assignments.csv), final save, and each rank's peak memory;
- cluster: `stellar-dist cluster --backend faiss` on the run (the command runs as one process);
- predict: `predict --out FOLDER/` on the shards with 2 ranks (a partitioned parquet dataset).
Each phase's cost is divided by the samples it touches (train: by nothing, the steps are fixed). Peak memory of a
phase run as a command is sampled (psutil, every 0.2 s) over its process tree: the largest process is reported.
Writes OUT/scale.json, OUT/scale.md and OUT/scale.png; sizes already measured in OUT/scale.json are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = {"GALAXY": (150, 110, 60), "QSO": (90, 110, 200), "STAR": (200, 200, 200)}
SIDE = 8  # pixels
TRAIN = ["ssl.algorithm=fixmatch", "model.arch=resnet18", "train.steps=30", "train.batch_size=32", "ssl.mu=3",
         "eval.every_steps=0", "checkpoint.every_steps=0", "cluster.at_end=true", "cluster.k=50", "cluster.pca_dim=32",
         "cluster.backend=torch", "cluster.grid_clusters=6", "data.num_workers=1", "tracking=none",
         "train.log_every_steps=10"]


def _write_images(task: tuple[int, int, str]) -> list[str]:
    from PIL import Image

    start, stop, folder = task
    rng = np.random.default_rng(start)
    names = list(CLASSES)
    rows = []
    for index in range(start, stop):
        name = names[index % 3]
        # unique bytes: the index is written into the first pixels (pack refuses duplicate images)
        pixels = np.clip(rng.normal(CLASSES[name], 30, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        pixels[0, 0], pixels[0, 1] = [index % 256, (index >> 8) % 256, (index >> 16) % 256], [index >> 24, 0, 0]
        path = f"images/{index // 1000:05d}/{index}.png"
        Image.fromarray(pixels).save(Path(folder) / path)
        rows.append(f"{path},{name},{1237600000000000000 + index}")
    return rows


def make_catalog(folder: Path, count: int) -> Path:
    catalog = folder / "catalog.csv"
    if catalog.exists():
        return catalog
    for block in range(0, count, 1000):
        (folder / "images" / f"{block // 1000:05d}").mkdir(parents=True, exist_ok=True)
    tasks = [(start, min(start + 20_000, count), str(folder)) for start in range(0, count, 20_000)]
    with Pool(2) as pool:
        rows = [row for part in pool.map(_write_images, tasks) for row in part]
    temporary = folder / "catalog.csv.tmp"
    temporary.write_text("image_path,Class,objid\n" + "\n".join(rows) + "\n")
    temporary.replace(catalog)
    return catalog


class PeakMemory:
    """The largest resident set of any process in a command's tree, sampled every 0.2 s."""

    def __init__(self, pid: int):
        import psutil

        self.root, self.peak_mb, self.done = psutil.Process(pid), 0.0, False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        import psutil

        while not self.done:
            try:
                processes = [self.root, *self.root.children(recursive=True)]
                for process in processes:
                    try:
                        self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            time.sleep(0.2)

    def stop(self) -> float:
        self.done = True
        self.thread.join()
        return self.peak_mb


def timed(command: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak MB of the largest process) of a command; its output goes to `log`."""
    started = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=ENV)
        memory = PeakMemory(process.pid)
        code = process.wait()
    peak = memory.stop()
    if code:
        sys.exit(f"[scale] failed ({code}): {' '.join(command)}; see {log}")
    return time.perf_counter() - started, peak


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def launch(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "accelerate_configs" / "cpu_ddp.yaml"), "--main_process_port", free_port(), *arguments]


def measure(folder: Path, count: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "commands.log"
    started = time.perf_counter()
    catalog = make_catalog(folder, count)
    result = {"samples": count, "make_images_s": time.perf_counter() - started}
    shards, run = folder / "shards", folder / "run"
    if not (shards / "manifest.json").exists():
        result["pack"] = timed([sys.executable, "-m", "stellar_dist", "pack", "--catalog", str(catalog), "--out",
                                str(shards), "--image-size", str(SIDE), "--encoding", "u8", "--shard-size", "10000",
                                "--workers", "2"], log)
    manifest = json.loads((shards / "manifest.json").read_text())
    result["num_samples"] = manifest["num_samples"]
    result["train_command"] = timed(launch(str(REPO / "launch" / "train.py"), "--config",
                                           str(REPO / "configs" / "demo.yaml"), f"data.shards={shards}",
                                           f"output_dir={run}", *TRAIN), log)
    metrics = json.loads((run / "metrics.json").read_text())
    result["phase_seconds"], result["peak_rss_mb"] = metrics["phase_seconds"], metrics["peak_rss_mb"]
    result["cluster_faiss"] = timed([sys.executable, "-m", "stellar_dist", "cluster", "--checkpoint", str(run),
                                     "--shards", str(shards), "--backend", "faiss", "--k", "50", "--out",
                                     str(folder / "cluster_faiss")], log)
    result["predict_parts"] = timed(launch("-m", "stellar_dist", "predict", "--model", str(run), "--input",
                                           str(shards), "--out", f"{folder / 'predicted'}/", "--workers", "1"), log)
    return result


def per_sample(result: dict) -> dict:
    """Milliseconds per 1000 samples touched, for each phase (train: seconds, fixed steps)."""
    n = result["samples"]
    split = result["num_samples"]
    fit = split["labeled"] + split["unlabeled"]
    phases = result["phase_seconds"]
    return {
        "pack": result["pack"][0] / n * 1000 if "pack" in result else None,
        "setup (shard checks)": phases["setup"] / n * 1000,
        "train (30 steps, s)": phases["train"],
        "final evaluation + predictions.csv": phases["final_evaluation"] / split["test"] * 1000,
        "final clustering, torch + assignments.csv": phases["final_clustering"] / n * 1000,
        "cluster command, faiss (1 process)": result["cluster_faiss"][0] / fit * 1000,
        "predict FOLDER/ on the shards": result["predict_parts"][0] / n * 1000,
    }


def report(results: list[dict], out: Path) -> str:
    rows = {size["samples"]: per_sample(size) for size in results}
    sizes = sorted(rows)
    phases = list(rows[sizes[0]])
    lines = ["| phase (s per 1000 samples) | " + " | ".join(f"N = {size:,}" for size in sizes) +
             " | largest / smallest |", "|---|" + "---|" * (len(sizes) + 1)]
    for phase in phases:
        values = [rows[size][phase] for size in sizes]
        ratio = values[-1] / values[0] if None not in values and values[0] else None
        lines.append(f"| {phase} | " + " | ".join("-" if value is None else f"{value:.3f}" for value in values) +
                     f" | {'-' if ratio is None else f'{ratio:.2f}x'} |")
    by_size = {size["samples"]: size for size in results}
    lines.append("| peak memory per rank, training (MB) | " + " | ".join(
        "/".join(f"{value:.0f}" for value in by_size[size]["peak_rss_mb"]) for size in sizes) + " | |")
    for name, key in (("pack", "pack"), ("cluster, faiss", "cluster_faiss"), ("predict", "predict_parts")):
        lines.append(f"| peak memory, {name} (MB, largest process) | " + " | ".join(
            f"{by_size[size][key][1]:.0f}" if key in by_size[size] else "-" for size in sizes) + " | |")
    table = "\n".join(lines) + "\n"
    _plot(rows, sizes, phases, out / "scale.png")
    return table


def _plot(rows: dict, sizes: list[int], phases: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for phase in phases:
        if phase.startswith("train") or any(rows[size][phase] is None for size in sizes):
            continue
        values = [rows[size][phase] for size in sizes]
        axis.plot(sizes, [value / values[0] for value in values], marker="o", label=phase)
    axis.axhline(1.5, color="0.5", linestyle="--", linewidth=1, label="target: at most 1.5x")
    axis.set(xscale="log", xlabel="samples in the catalog", ylabel=f"cost per sample / cost at N = {sizes[0]:,}",
             title="Cost per sample against catalog size (2 CPU ranks)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


ENV = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/stellar-scale")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--report", action="store_true", help="only rebuild the table and plot")
    parser.add_argument("--images-only", action="store_true", help="only write the cutouts and catalogs (not "
                        "measured; e.g. while another job runs)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "scale.json"
    results = {item["samples"]: item for item in json.loads(saved.read_text())} if saved.exists() else {}
    if args.images_only:
        for size in (int(text) for text in args.sizes.split(",")):
            (out / f"n{size}").mkdir(parents=True, exist_ok=True)
            make_catalog(out / f"n{size}", size)
        return
    if not args.report:
        for size in (int(text) for text in args.sizes.split(",")):
            if size not in results:
                print(f"[scale] N = {size:,}", flush=True)
                results[size] = measure(out / f"n{size}", size)
                saved.write_text(json.dumps(sorted(results.values(), key=lambda item: item["samples"]), indent=2))
    if not results:
        raise SystemExit(f"no measurement in {saved}: run without --report first (e.g. --sizes 10000)")
    table = report(sorted(results.values(), key=lambda item: item["samples"]), out)
    (out / "scale.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
