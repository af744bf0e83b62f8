"""Train StellarDeepCluster (FixMatch, its family, or the supervised baseline) from packed shards.

1 CPU process / 1 GPU:
    accelerate launch -q --config_file accelerate_configs/cpu.yaml launch/train.py --config configs/demo.yaml
2 CPU processes (DDP on gloo):
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml launch/train.py --config configs/demo.yaml
All GPUs of a node (bf16):
    GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)       # 0 without GPUs: use cpu.yaml there
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes $GPUS \\
        launch/train.py --config configs/sdss.yaml
Without accelerate (one process), or without a checkout (`pip install` gives the same entry point):
    python launch/train.py --config configs/demo.yaml train.steps=50 ssl.algorithm=supervised
    stellar-dist train --config configs/demo.yaml          # or: accelerate launch ... -m stellar_dist train
DeepCluster alone (no labels), or a DeepCluster head beside FixMatch:
    python launch/train.py --config configs/demo.yaml ssl.algorithm=deepcluster output_dir=runs/dc
    python launch/train.py --config configs/demo.yaml cluster.lambda_c=0.3 cluster.every_steps=100

Any config key can be overridden as KEY=VALUE (e.g. ssl.threshold=0.9 output_dir=runs/t09 resume=auto).
"""

import sys

from stellar_dist.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
