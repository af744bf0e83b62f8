#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (one H200, 15 minutes in all, no network, one command <= 600 s):
# machine facts first, then the most informative steps; every step has its own limit and records its result even
# when another failed; everything is streamed to $OUT/gpu.log as it happens; at most 6 small files in $OUT.
#
#   bash bench/gpu_wheels.sh                       # here, once: the wheels the GPU machine lacks, into .whl/
#   bash bench/gpu.sh                              # there, from the repository root (device tool: carry [".whl"])
#   SIZES=small OUT=/tmp/gpu-dry bash bench/gpu.sh # a dry run of every step on a CPU machine (SIZES=tiny: the suite's)
#
# $OUT receives gpu.log (every step's output, as it happens), smoke.json, step_speed.json, kmeans.txt, gpu_util.csv
# (utilisation sampled every 0.5 s during steps 3-6, by step) and summary.json (every step's status and seconds,
# images/s and data-wait share per data path, mean utilisation per step). Cutouts, shards and runs live in a mktemp
# folder deleted at the end. No `pip install -e .`: the repository is on PYTHONPATH and commands run as
# `python3 -m stellar_dist`. Missing wheels (webdataset, braceexpand; wandb, faiss and astropy are not needed:
# tracking=none, the torch k-means) are installed from .whl/ into the scratch folder.
# Steps: 0. facts (GPU, driver, torch / CUDA, cores, memory, /dev/shm); 1. imports, each with its own limit and a
# truthful message, and the CUDA gate (without CUDA a full-size run stops here: nothing of it would measure a GPU);
# 2. random cutouts packed; 3. smoke: bf16 step, device views, k-means, engine steps of six algorithms with the
# syncing ops counted per step and source line; 4. FixMatch step images/s on synthetic batches; 5. training +
# re-clustering on packed cutouts; 6. data-wait share, views in the workers vs on the device; 7. k-means of
# 1M x 128 on the device. A step that cannot finish within the 570 s budget gets what is left, or is skipped.
# Record what it prints in bench/RESULTS.md with the date and the hardware.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
OUT=${OUT:-$REPO/runs/gpu}
SIZES=${SIZES:-$([ "${SMALL:-0}" = 1 ] && echo small || echo full)}
BUDGET=${BUDGET:-570}  # seconds: the device tool ends a command at 600
mkdir -p "$OUT"
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/stellar-gpu.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$SCRATCH"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled
LOG="$OUT/gpu.log" STATUS="$SCRATCH/status.tsv"
: > "$LOG"; : > "$STATUS"
START=$SECONDS
HAVE_SMI=$(command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1 && echo 1 || echo 0)
say() { echo "== [$((SECONDS - START)) s] $*" | tee -a "$LOG"; }
# step NAME LIMIT CMD...: streamed to the log as it runs (progress bars as lines), within LIMIT seconds and what is
# left of the budget; its status and seconds go to the summary; returns the command's status
step() {
  local name=$1 limit=$2 left=$((BUDGET - (SECONDS - START))) began=$SECONDS status
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 5 ]; then say "$name: skipped (the budget is spent)"; printf '%s\tskipped\t0\n' "$name" >> "$STATUS"; return 125; fi
  local sampler=""
  if [ "$HAVE_SMI" = 1 ]; then  # GPU utilisation and memory every 0.5 s, tagged with the step
    (nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 2>/dev/null \
      | sed -u "s/^/$name, /" >> "$OUT/gpu_util.csv") & sampler=$!
  fi
  timeout --kill-after=5 "$limit" "${@:3}" 2>&1 | tr '\r' '\n' | tee -a "$LOG" | grep --line-buffered -v "it/s\|img/s"
  status=${PIPESTATUS[0]}
  [ -n "$sampler" ] && { pkill -P "$sampler" 2>/dev/null; kill "$sampler" 2>/dev/null; }
  [ "$status" = 124 ] && say "$name: stopped at its $limit s limit"
  printf '%s\t%s\t%s\n' "$name" "$([ "$status" = 0 ] && echo ok || echo "failed ($status)")" "$((SECONDS - began))" >> "$STATUS"
  return "$status"
}
# check_import PACKAGE LIMIT CODE: one line saying ok (and what CODE prints), missing, timed out or failed
check_import() {
  local out status
  out=$(timeout --kill-after=5 "$2" python3 -c "import $1; $3" 2>&1); status=$?
  if [ $status = 0 ]; then say "import $1: ok $out"; printf 'import %s\tok\t0\n' "$1" >> "$STATUS"; return 0; fi
  if [ $status = 124 ]; then out="timed out after $2 s (a cold disk? run again)"
  elif echo "$out" | grep -q "ModuleNotFoundError: No module named '$1'"; then out="missing"
  else out="failed: $(echo "$out" | tail -n 1)"; fi
  say "import $1: $out"; printf 'import %s\t%s\t0\n' "$1" "$out" >> "$STATUS"; return 1
}
SD=(python3 -m stellar_dist)
case $SIZES in
  tiny) NUM=120; SIZE=32; KMEANS=5000; STEPS=4; WORKERS=1; SMOKE=(--quick)
        BATCH=(train.batch_size=4 ssl.mu=2 eval.batch_size=32 model.arch=shufflenet_v2_x0_5)
        SPEED=(--arch resnet18 --size 32 --batch 4 --mu 2 --steps 1 --warmup 1 --repeats 1);;
  small) NUM=600; SIZE=32; KMEANS=20000; STEPS=12; WORKERS=4; SMOKE=(); BATCH=(train.batch_size=8 ssl.mu=2 eval.batch_size=64)
         SPEED=(--arch resnet18 --size 32 --batch 8 --mu 2 --steps 2 --warmup 1 --repeats 1);;
  *) NUM=8000; SIZE=64; KMEANS=1000000; STEPS=60; WORKERS=8; SMOKE=(); BATCH=()
     SPEED=(--arch resnet18 mobilenet_v2 --size 64 --batch 64 --mu 7 --steps 10 --warmup 3 --repeats 3);;
esac

say "0. facts ($SIZES sizes)"
step facts 20 bash -c 'date -u; uname -srm; echo "cores: $(nproc)"; free -g | head -2; df -h /dev/shm | tail -1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 --version'

say "1. imports (each with its own limit) and the CUDA gate"
if ! python3 -c "import webdataset" 2>/dev/null && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SCRATCH/site" .whl/*.whl \
    >> "$LOG" 2>&1 && export PYTHONPATH="$SCRATCH/site:$PYTHONPATH"
fi
check_import torch 150 "print(torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
TORCH=$?
check_import accelerate 60 "print(accelerate.__version__)"
check_import webdataset 30 "print('ok')" || say "webdataset missing: the steps on shards are skipped (run bash bench/gpu_wheels.sh where pip works and carry .whl)"
WDS=$(grep -q $'^import webdataset\tok' "$STATUS" && echo 1 || echo 0)
CUDA=$([ $TORCH = 0 ] && python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null && echo 1 || echo 0)
DEVICE=$([ "$CUDA" = 1 ] && echo cuda || echo cpu)
if [ $TORCH != 0 ] || { [ "$CUDA" = 0 ] && [ "$SIZES" = full ]; }; then
  say "stop: $([ $TORCH != 0 ] && echo 'torch does not import' || echo 'no CUDA device: a full-size run would measure the CPU'); the facts above say why"
  STOPPED=1
fi

if [ -z "${STOPPED:-}" ] && [ "$WDS" = 1 ]; then
  say "2. $NUM random ${SIZE} px cutouts, packed"
  step cutouts 40 python3 - "$SCRATCH/cutouts" "$NUM" "$SIZE" <<'EOF'
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
  step pack 40 "${SD[@]}" pack --catalog "$SCRATCH/cutouts" --out "$SCRATCH/shards" --encoding u8 \
    --labeled-fraction 0.1 --test-fraction 0.1 --shard-size 500 --workers 8 && SHARDS=1
fi

if [ -z "${STOPPED:-}" ]; then
  say "3. smoke: every check runs; syncing ops per step and source line"
  step smoke 150 python3 bench/gpu_smoke.py --shards "${SHARDS:+$SCRATCH/shards}" --out "$SCRATCH/smoke" \
    --json "$OUT/smoke.json" "${SMOKE[@]}"

  say "4. FixMatch step images/s (synthetic batches)"
  step step_speed 80 python3 bench/step_speed.py "${SPEED[@]}" --out "$OUT/step_speed.json"
fi

if [ -z "${STOPPED:-}" ] && [ -n "${SHARDS:-}" ]; then
  say "5. training and re-clustering on packed cutouts"
  step train 70 "${SD[@]}" train --config configs/sdss.yaml data.shards="$SCRATCH/shards" output_dir="$SCRATCH/run" \
    train.steps=$STEPS eval.every_steps=$STEPS checkpoint.every_steps=$STEPS cluster.at_end=true cluster.k=12 \
    cluster.every_steps=$((STEPS / 2)) train.log_every_steps=$((STEPS / 2)) tracking=none data.num_workers=$((WORKERS / 2 + 1)) \
    "${BATCH[@]}"

  say "6. data-wait share: views in the workers vs on the device"
  for where in workers device; do
    step "wait-$where" 45 "${SD[@]}" train --config configs/sdss.yaml data.shards="$SCRATCH/shards" \
      output_dir="$SCRATCH/wait-$where" train.steps=$STEPS eval.every_steps=0 checkpoint.every_steps=0 \
      cluster.at_end=false cluster.every_steps=0 train.log_every_steps=$((STEPS / 2)) data.num_workers=$WORKERS \
      data.augment_on=$where ssl.algorithm=fixmatch model.arch=resnet18 ssl.mu=7 train.batch_size=64 tracking=none \
      "${BATCH[@]}"
  done
fi

if [ -z "${STOPPED:-}" ]; then
  say "7. k-means, $KMEANS x 128 features, torch backend on the $DEVICE"
  step kmeans 50 bash -c "python3 bench/kmeans.py --num $KMEANS --dim 128 --k 100 --iterations 20 --repeats 2 \
    --backends torch --device $DEVICE | tee '$OUT/kmeans.txt'"
fi

python3 - "$SCRATCH" "$OUT" "$((SECONDS - START))" "$SIZES" <<'EOF' 2>&1 | tee -a "$LOG"
import csv, json, sys
from pathlib import Path

scratch, out = Path(sys.argv[1]), Path(sys.argv[2])
summary = {"seconds": int(sys.argv[3]), "sizes": sys.argv[4], "steps": {}}
for row in csv.reader((scratch / "status.tsv").read_text().splitlines(), delimiter="\t"):
    summary["steps"][row[0]] = {"status": row[1], "seconds": int(row[2])}
for name in ("train", "wait-workers", "wait-device"):
    log = scratch / name.replace("train", "run") / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    last = [row for row in rows if "train/images_per_second" in row][-1:] or [{}]
    summary[name] = {key.split("/")[-1]: value for key, value in last[0].items()
                     if key in ("train/images_per_second", "train/data_wait_share", "train/device_views_share",
                                "train/gpu_memory_gib")}
    if name == "train" and (scratch / "run" / "metrics.json").exists():
        metrics = json.loads((scratch / "run" / "metrics.json").read_text())
        summary[name]["cluster_k"] = metrics.get("cluster", {}).get("k")
        summary[name]["reclusterings"] = sum("cluster/nmi" in row for row in rows)
utilisation = {}
if (out / "gpu_util.csv").exists():
    for row in csv.reader((out / "gpu_util.csv").read_text().splitlines()):
        if len(row) == 3 and row[1].strip().isdigit():
            utilisation.setdefault(row[0], []).append((int(row[1]), int(row[2])))
summary["gpu_utilisation_percent"] = {name: {"mean": round(sum(u for u, _ in rows) / len(rows), 1),
                                             "max_memory_mib": max(m for _, m in rows), "samples": len(rows)}
                                      for name, rows in utilisation.items()}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print("summary", json.dumps(summary))
EOF
say "done: $(ls "$OUT" | tr '\n' ' ')"
