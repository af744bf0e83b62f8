"""Train StellarDeepCluster from packed shards: `stellar-dist train`, `python -m stellar_dist train`, or under
`accelerate launch -m stellar_dist train` (no checkout needed; launch/train.py is the same entry point).

1 CPU process / 1 GPU:
    stellar-dist train --config configs/demo.yaml
    accelerate launch -q --config_file accelerate_configs/cpu.yaml -m stellar_dist train --config configs/demo.yaml
2 CPU processes (DDP on gloo):
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m stellar_dist train --config configs/demo.yaml
All GPUs of a node (bf16):
    GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)       # 0 without GPUs: use cpu.yaml there
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes $GPUS \\
        -m stellar_dist train --config configs/sdss.yaml
DeepCluster pretraining on the unlabeled images, then FixMatch from those weights (two stages, one command):
    stellar-dist train --config configs/demo.yaml pretrain.steps=300 output_dir=runs/pretrained
DeepCluster alone (no labels), or a DeepCluster head beside FixMatch:
    stellar-dist train --config configs/demo.yaml ssl.algorithm=deepcluster output_dir=runs/dc
    stellar-dist train --config configs/demo.yaml cluster.lambda_c=0.3 cluster.every_steps=100

Any config key can be overridden as KEY=VALUE (e.g. ssl.threshold=0.9 output_dir=runs/t09 resume=auto).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="YAML config (see configs/); defaults apply to missing keys")
    parser.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides")
    return parser


def run(args: argparse.Namespace) -> None:
    from ..training.stages import train

    train(args.config, args.overrides)
