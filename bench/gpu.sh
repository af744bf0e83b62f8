#!/usr/bin/env bash
# One prepared GPU check for a lent machine (one H200 here), under 8 minutes; results to $OUT (default runs/gpu).
#
#   bash bench/gpu.sh                 # on the GPU machine, from the repository root
#   OUT=/tmp/gpu bash bench/gpu.sh    # elsewhere (a dry run of every step on a CPU machine ran with smaller sizes)
#
# 1. the environment and the GPU; 2. a short FixMatch + clustering run that must report a cuda device; 3. FixMatch
# images/s of the step (synthetic batches, mu 7, 64 px, mobilenet_v2 and resnet18, bf16; naive loop, one forward,
# channels_last); 4. data-wait share and images/s of real training on packed random cutouts, views made in the
# workers vs on the device; 5. k-means seconds for 1M x 128 features with the torch backend on the GPU.
# Record what it prints in bench/RESULTS.md with the date and the hardware.
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "== $*" | tee -a "$OUT/gpu.log"; }
run() { timeout "$1" "${@:2}" 2>&1 | tee -a "$OUT/gpu.log"; }

log "1. environment"
run 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run 60 python3 -c "import torch, torchvision, accelerate, webdataset; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')" \
  || { echo "missing packages: carry wheels (see the device README)"; exit 1; }
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -1

log "2. random cutouts, packed (u8 and png)"
run 120 python3 - "$OUT" <<'EOF'
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1]) / "cutouts"


def write(index):
    rng = np.random.default_rng(index)
    cls = ("GALAXY", "STAR", "QSO")[index % 3]
    folder = root / cls
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{index}.png")


with Pool(16) as pool:
    pool.map(write, range(20000), chunksize=500)
print(f"wrote {20000} random 64 px cutouts")
EOF
for encoding in u8 png; do
  run 120 stellar-dist pack --catalog "$OUT/cutouts" --out "$OUT/shards-$encoding" --encoding $encoding \
    --labeled-fraction 0.1 --test-fraction 0.1 --shard-size 500 --workers 16 | tail -1
done

log "3. training and re-clustering on the GPU"
run 180 stellar-dist train --config configs/sdss.yaml data.shards="$OUT/shards-u8" output_dir="$OUT/run" \
  train.steps=60 eval.every_steps=60 checkpoint.every_steps=60 cluster.at_end=true cluster.backend=torch \
  train.log_every_steps=20 tracking=none | grep -v "it/s" | tail -12
python3 - "$OUT/run" <<'EOF' 2>&1 | tee -a "$OUT/gpu.log"
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/log.jsonl")]
memory = [row["train/gpu_memory_gib"] for row in rows if "train/gpu_memory_gib" in row]
print("trained on GPU:", bool(memory), "peak GiB", max(memory) if memory else None)
EOF

log "4. FixMatch step images/s (synthetic batches)"
run 240 python3 bench/step_speed.py --arch mobilenet_v2 resnet18 --size 64 --batch 64 --mu 7 --steps 10 \
  --warmup 3 --repeats 3 --out "$OUT/step_speed.json"

log "5. data wait share in training: views in the workers vs on the device"
for where in workers device; do
  run 120 stellar-dist train --config configs/sdss.yaml data.shards="$OUT/shards-u8" output_dir="$OUT/wait-$where" \
    train.steps=120 eval.every_steps=0 checkpoint.every_steps=0 cluster.at_end=false train.log_every_steps=40 \
    data.num_workers=12 data.augment_on=$where model.arch=resnet18 ssl.mu=7 train.batch_size=64 tracking=none \
    > /dev/null
  python3 - "$OUT/wait-$where" "$where" <<'EOF' 2>&1 | tee -a "$OUT/gpu.log"
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/log.jsonl") if "train/data_wait_share" in line]
last = rows[-1]
print(f"views on {sys.argv[2]}: {last['train/images_per_second']:.0f} images/s, data wait "
      f"{100 * last['train/data_wait_share']:.0f}% of step time")
EOF
done

log "6. k-means, 1M x 128 features, torch backend on the GPU"
run 120 python3 bench/kmeans.py --num 1000000 --dim 128 --k 100 --iterations 20 --repeats 2 --backends torch \
  --device cuda
log "done"
