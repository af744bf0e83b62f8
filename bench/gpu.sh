#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (one H200, 15 minutes in all, no network): under 8 minutes, the most
# informative steps first, everything big in a scratch folder, at most 5 small files in $OUT.
#
#   bash bench/gpu_wheels.sh                       # here, once: the wheels the GPU machine lacks, into .whl/
#   bash bench/gpu.sh                              # there, from the repository root (device tool: carry [".whl"])
#   SMALL=1 OUT=/tmp/gpu-dry bash bench/gpu.sh     # a dry run of every step on a CPU machine, with small sizes
#
# $OUT receives gpu.log (every step's output), smoke.json, step_speed.json, kmeans.txt and summary.json; cutouts,
# shards and runs live in a mktemp folder that is deleted at the end. No `pip install -e .`: the repository is put
# on PYTHONPATH and commands run as `python3 -m stellar_dist`. Missing wheels (webdataset, braceexpand: the
# only packages training needs that the machine lacks; wandb, faiss and astropy are not needed: tracking=none,
# cluster.backend=auto falls back to torch k-means) are installed from .whl/ into the scratch folder.
# Steps (limit in seconds): 1. environment (20 + 20); 2. random cutouts packed (30 + 40); 3. smoke: bf16 step, views and
# k-means on the device, three engine steps under the sync debug mode (80), stops the script on failure;
# 4. FixMatch step images/s on synthetic batches (80); 5. training + re-clustering on packed cutouts (70);
# 6. data-wait share, views in the workers vs on the device (2 x 45); 7. k-means of 1M x 128 on the device (50).
# The limits add up to 490 s; a dry run (SMALL=1) on 2 busy CPU cores took 256 s and left 5 files in $OUT.
# Record what it prints in bench/RESULTS.md with the date and the hardware.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
OUT=${OUT:-$REPO/runs/gpu}
SMALL=${SMALL:-0}
mkdir -p "$OUT"
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/stellar-gpu.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled
LOG="$OUT/gpu.log"
: > "$LOG"
START=$SECONDS
say() { echo "== [$((SECONDS - START)) s] $*" | tee -a "$LOG"; }
# run LIMIT CMD...: output to the log (its last lines shown), never longer than LIMIT seconds; returns its status
run() {
  timeout --kill-after=5 "$1" "${@:2}" > "$SCRATCH/step.out" 2>&1; local status=$?
  cat "$SCRATCH/step.out" >> "$LOG"; tr '\r' '\n' < "$SCRATCH/step.out" | grep -v "it/s\|img/s" | tail -n 4
  [ $status = 124 ] && say "(stopped at its ${1} s limit)"; return $status
}
SD=(python3 -m stellar_dist)
if [ "$SMALL" = 1 ]; then NUM=600; SIZE=32; KMEANS=20000; STEPS=12; BATCH=(train.batch_size=8 ssl.mu=2 eval.batch_size=64)
else NUM=8000; SIZE=64; KMEANS=1000000; STEPS=60; BATCH=(); fi

say "1. environment"
run 20 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"'
if ! python3 -c "import webdataset" 2>/dev/null && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SCRATCH/site" .whl/*.whl \
    >> "$LOG" 2>&1 && export PYTHONPATH="$SCRATCH/site:$PYTHONPATH"
fi
run 20 python3 -c "import torch, accelerate, webdataset; print('torch', torch.__version__, 'accelerate', \
accelerate.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() \
else '-')" || { say "stop: webdataset missing: run bash bench/gpu_wheels.sh where pip works and carry .whl"; exit 1; }

say "2. $NUM random ${SIZE} px cutouts, packed"
run 30 python3 - "$SCRATCH/cutouts" "$NUM" "$SIZE" <<'EOF' || { say "stop: packing failed"; exit 1; }
import sys
from pathlib import Path

import numpy as np
from PIL import Image

root, num, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
for index in range(num):
    folder = root / ("GALAXY", "STAR", "QSO")[index % 3]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{index}.png")
print(f"wrote {num} cutouts")
EOF
run 40 "${SD[@]}" pack --catalog "$SCRATCH/cutouts" --out "$SCRATCH/shards" --encoding u8 --labeled-fraction 0.1 \
  --test-fraction 0.1 --shard-size 500 --workers 8 || { say "stop: packing failed"; exit 1; }

say "3. smoke (stops the script on failure)"
run 80 python3 bench/gpu_smoke.py --shards "$SCRATCH/shards" --out "$SCRATCH/smoke" --json "$OUT/smoke.json" \
  || { say "stop: the smoke step failed (smoke.json says where)"; exit 1; }

say "4. FixMatch step images/s (synthetic batches)"
if [ "$SMALL" = 1 ]; then SPEED=(--arch resnet18 --size 32 --batch 8 --mu 2 --steps 2 --warmup 1 --repeats 1)
else SPEED=(--arch resnet18 mobilenet_v2 --size 64 --batch 64 --mu 7 --steps 10 --warmup 3 --repeats 3); fi
run 80 python3 bench/step_speed.py "${SPEED[@]}" --out "$OUT/step_speed.json"

say "5. training and re-clustering on packed cutouts"
run 70 "${SD[@]}" train --config configs/sdss.yaml data.shards="$SCRATCH/shards" output_dir="$SCRATCH/run" \
  train.steps=$STEPS eval.every_steps=$STEPS checkpoint.every_steps=$STEPS cluster.at_end=true cluster.k=12 \
  cluster.every_steps=$((STEPS / 2)) train.log_every_steps=$((STEPS / 3)) tracking=none data.num_workers=4 \
  "${BATCH[@]}"

say "6. data-wait share: views in the workers vs on the device"
for where in workers device; do
  [ "$where" = device ] && ! python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" && \
    [ "$SMALL" != 1 ] && continue
  run 45 "${SD[@]}" train --config configs/sdss.yaml data.shards="$SCRATCH/shards" output_dir="$SCRATCH/wait-$where" \
    train.steps=$STEPS eval.every_steps=0 checkpoint.every_steps=0 cluster.at_end=false cluster.every_steps=0 \
    train.log_every_steps=$((STEPS / 3)) data.num_workers=8 data.augment_on=$where model.arch=resnet18 ssl.mu=7 \
    train.batch_size=64 tracking=none "${BATCH[@]}"
done

say "7. k-means, $KMEANS x 128 features, torch backend on the device"
DEVICE=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
timeout 50 python3 bench/kmeans.py --num $KMEANS --dim 128 --k 100 --iterations 20 --repeats 2 --backends torch \
  --device "$DEVICE" 2>&1 | tee -a "$LOG" > "$OUT/kmeans.txt"

python3 - "$SCRATCH" "$OUT/summary.json" "$((SECONDS - START))" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path

scratch, summary = Path(sys.argv[1]), {"seconds": int(sys.argv[3])}
for name in ("run", "wait-workers", "wait-device"):
    log = scratch / name / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    last = [row for row in rows if "train/images_per_second" in row][-1:] or [{}]
    summary[name] = {key.split("/")[-1]: value for key, value in last[0].items()
                     if key in ("train/images_per_second", "train/data_wait_share", "train/gpu_memory_gib")}
    if name == "run" and (scratch / name / "metrics.json").exists():
        metrics = json.loads((scratch / name / "metrics.json").read_text())
        summary[name]["cluster_k"] = metrics.get("cluster", {}).get("k")
        summary[name]["reclusterings"] = sum("cluster/nmi" in row for row in rows)
Path(sys.argv[2]).write_text(json.dumps(summary, indent=2))
print("summary", json.dumps(summary))
EOF
say "done: $(ls "$OUT" | tr '\n' ' ')"
