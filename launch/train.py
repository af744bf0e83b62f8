"""Train StellarDeepCluster (FixMatch or the supervised baseline) from packed shards.

1 CPU process / 1 GPU:
    accelerate launch -q --config_file accelerate_configs/cpu.yaml launch/train.py --config configs/demo.yaml
2 CPU processes (DDP on gloo):
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml launch/train.py --config configs/demo.yaml
All GPUs of a node (bf16):
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml launch/train.py --config configs/sdss.yaml
Without accelerate (one process):
    python launch/train.py --config configs/demo.yaml train.steps=50 ssl.algorithm=supervised
DeepCluster alone (no labels), or a DeepCluster head beside FixMatch:
    python launch/train.py --config configs/demo.yaml ssl.algorithm=deepcluster output_dir=runs/dc
    python launch/train.py --config configs/demo.yaml cluster.lambda_c=0.3 cluster.every_steps=100

Any config key can be overridden as KEY=VALUE (e.g. ssl.threshold=0.9 output_dir=runs/t09 resume=auto).
"""

import argparse

from stellar_dist.config import load_config
from stellar_dist.engine import train
from stellar_dist.errors import exit_on_user_error


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see configs/); defaults apply to missing keys")
    parser.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides")
    args = parser.parse_args()
    train(load_config(args.config, args.overrides))


if __name__ == "__main__":
    main()
