"""Pretraining on the unlabeled images, then semi-supervised training from those weights, as one command.

    stellar-dist train --config configs/sdss_cpu.yaml pretrain.steps=1000

With `pretrain.steps` > 0 a run has two stages, each an ordinary run with its own checkpoints:
1. DeepCluster alone (no label is read) in OUTPUT_DIR/pretrain, for `pretrain.steps` steps, with the run's
   model, data, optimizer and cluster settings;
2. `ssl.algorithm` in OUTPUT_DIR, its backbone initialised from stage 1's final EMA weights (the saved
   config.yaml names that checkpoint in model.weights: where the stage boundary is).
Running the command again (resume=auto) continues whichever stage was interrupted: a finished stage 1
(its metrics.json) is never trained again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..core.errors import UserError
from ..core.files import write_atomically
from . import checkpoint
from .config import Config
from .resume import RUN_MARKER, check_run_folder

PRETRAIN_DIR = "pretrain"  # inside OUTPUT_DIR: stage 1's run folder


def pretrain_config(config: Config) -> Config:
    """Stage 1: DeepCluster alone on the same shards and model, its own folder; no labels, no class report."""
    replace = dataclasses.replace
    return replace(config, output_dir=str(Path(config.output_dir) / PRETRAIN_DIR),
                   resume="none" if config.resume == "none" else "auto",  # a named checkpoint is stage 2's
                   ssl=replace(config.ssl, algorithm="deepcluster", distribution_alignment=False),
                   train=replace(config.train, steps=config.pretrain.steps,
                                 warmup_steps=min(config.train.warmup_steps, config.pretrain.steps)),
                   cluster=replace(config.cluster, lambda_c=0.0, at_end=True),
                   pretrain=replace(config.pretrain, steps=0))


def finetune_config(config: Config, weights: Path) -> Config:
    """Stage 2: the run as asked, from stage 1's backbone."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, weights=str(weights)))


def pretrained_weights(stage_dir: Path) -> Path:
    """Stage 1's final EMA weights (the model folder of its newest complete checkpoint)."""
    latest = checkpoint.find_latest(stage_dir)
    if latest is None or not (stage_dir / "metrics.json").is_file():
        raise UserError(f"pretraining in {stage_dir} has no finished checkpoint: run the command again with "
                        "resume=auto")
    return checkpoint.ema_weights_file(latest)


def train_in_stages(config: Config):
    """Train `config`, with its pretraining stage first when `pretrain.steps` > 0; returns stage 2's report."""
    from .engine import train

    if config.pretrain.steps == 0:
        return train(config)
    if config.model.weights != "none":
        raise UserError(f"pretrain.steps={config.pretrain.steps} initialises the model from its own pretraining; "
                        f"model.weights={config.model.weights} asks for other weights: use one of them")
    output_dir = Path(config.output_dir)
    check_run_folder(output_dir)  # nothing is written into a folder a run would refuse
    output_dir.mkdir(parents=True, exist_ok=True)
    if not (output_dir / RUN_MARKER).exists():
        write_atomically(output_dir / RUN_MARKER, "a stellar-dist run: it owns checkpoints/, model/, plots/, pretrain/ "
                                             "and the files it wrote here\n")
    stage = pretrain_config(config)
    if not (Path(stage.output_dir) / "metrics.json").is_file():
        print(f"stage 1 of 2: DeepCluster pretraining for {config.pretrain.steps} steps in {stage.output_dir}")
        train(stage)
    weights = pretrained_weights(Path(stage.output_dir)).resolve()  # absolute: a resume from elsewhere finds it
    print(f"stage 2 of 2: {config.ssl.algorithm} from the pretrained backbone {weights}")
    return train(finetune_config(config, weights))


def train(config: Config | str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict | None:
    """The Python entry of `stellar-dist train` (one process; under `accelerate launch` every rank calls it):
    `config` is a Config or the path of a YAML file, `overrides` dotted KEY=VALUE strings. Returns the final test
    report on the main process.

        import stellar_dist
        report = stellar_dist.train("configs/demo.yaml", ["train.steps=50", "output_dir=runs/notebook"])
    """
    from .config import load_config, to_dict

    if isinstance(config, Config):
        from ..core.config import apply_override
        from .config import config_from_dict

        tree = to_dict(config)
        for override in overrides:
            apply_override(tree, override)
        config = config_from_dict(tree)
    else:
        config = load_config(config, overrides)
    return train_in_stages(config)
