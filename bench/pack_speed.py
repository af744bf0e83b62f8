"""Packing images/s with 1 and 2 workers, and peak memory against catalog size (it should stay flat).

    python bench/pack_speed.py --catalog ../shared/sdss_dr16/catalog.csv --out /tmp/bench_pack --workers 1 2 \
        --copies 1 5

`--copies N` packs a catalog N times the size of the given one: the same images reached through N distinct
paths (symlinked folders), so that nothing but the row count changes (id columns are dropped: they would repeat).
Peak memory is the largest summed resident memory of pack's whole process tree (main process + workers), sampled
every 50 ms. Writes OUT/pack_speed.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]


def scaled_catalog(catalog: Path, out: Path, copies: int) -> Path:
    if copies == 1:
        return catalog
    folder = out / f"catalog_x{copies}"
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(catalog, dtype=str, keep_default_na=False)
    frame = frame[[column for column in frame.columns if column in ("image_path", "Class")]]
    parts = []
    for copy in range(copies):
        link = folder / f"copy{copy}"
        if not link.exists():
            link.symlink_to(catalog.parent.resolve(), target_is_directory=True)
        parts.append(frame.assign(image_path=[f"copy{copy}/{path}" for path in frame["image_path"]]))
    path = folder / "catalog.csv"
    pd.concat(parts).to_csv(path, index=False)
    return path


def measure(catalog: Path, shards: Path, workers: int) -> dict:
    shutil.rmtree(shards, ignore_errors=True)
    command = [sys.executable, "-m", "stellar_dist", "pack", "--catalog", str(catalog), "--out", str(shards),
               "--workers", str(workers), "--image-size", "64"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [watched] + watched.children(recursive=True)
            peak = max(peak, sum(member.memory_info().rss for member in tree if member.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"pack failed: {' '.join(command)}")
    manifest = json.loads((shards / "manifest.json").read_text())
    shutil.rmtree(shards)
    return {"rows": manifest["num_input"], "workers": workers, "seconds": seconds,
            "images_per_s": manifest["num_input"] / seconds, "peak_rss_mib": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default="../shared/sdss_dr16/catalog.csv")
    parser.add_argument("--out", default="/tmp/bench_pack")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for copies in args.copies:
        catalog = scaled_catalog(Path(args.catalog).resolve(), out, copies)
        for workers in args.workers if copies == 1 else args.workers[-1:]:
            row = measure(catalog, out / "shards", workers)
            rows.append(row)
            print(f"{row['rows']:>7} rows, {workers} worker(s): {row['seconds']:6.1f} s, "
                  f"{row['images_per_s']:5.0f} images/s, peak memory {row['peak_rss_mib']:5.0f} MiB", flush=True)
    (out / "pack_speed.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
