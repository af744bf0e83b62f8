"""A training run's configuration: the sections of core/config.py plus `ssl` (the algorithm and each algorithm's
own options), from a YAML file plus dotted overrides.

    config = load_config("configs/demo.yaml", ["ssl.threshold=0.9", "train.steps=200"])

Every key is type-checked; unknown keys are rejected with the list of valid ones. The resolved config is saved as
`OUTPUT_DIR/config.yaml` with every run. This is where the algorithms meet the config (the registry is one of
`ssl.algorithm`'s choices, and each algorithm's `Options` is a section ssl.<name>): the ground floor knows none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from ..algorithms import ALGORITHMS
from ..core.config import (
    CheckpointConfig,
    ClusterConfig,
    DataConfig,
    DistConfig,
    EvalConfig,
    ModelConfig,
    PretrainConfig,
    TrainConfig,
    build,
    check_mapping,
    dotted_table,
    read_tree,
)
from ..core.errors import UserError


@dataclass(frozen=True)
class SSLConfig:
    algorithm: str = "fixmatch"  # a key of stellar_dist.algorithms.ALGORITHMS ("supervised" is the baseline)
    mu: int = 3  # unlabeled:labeled batch ratio (FixMatch paper: 7)
    threshold: float = 0.95  # confidence above which a weak-view prediction becomes a pseudo-label
    lambda_u: float = 1.0  # weight of the unsupervised loss
    distribution_alignment: bool = False  # align pseudo-label probabilities to the labeled class mix (ReMixMatch)
    # ssl.<algorithm>: each algorithm's own options, declared in its file (`Options`), e.g. ssl.mixmatch.views.
    # Built for every algorithm in ALGORITHMS, written into the YAML as ssl.<name> sections.
    sections: dict = field(default_factory=lambda: _default_sections())
    RANGES: ClassVar[dict] = {"mu": "[1, 64]", "threshold": "(0, 1)", "lambda_u": "[0, inf)"}
    CHOICES: ClassVar[dict] = {"algorithm": ALGORITHMS}  # the registry itself: an algorithm added is a choice


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    output_dir: str = "runs/demo"  # everything of the run goes here
    seed: int = 0  # model init, data order, augmentation: the same seed gives the same run
    resume: str = "none"  # "none", "auto" (latest checkpoint in output_dir, if any), or a checkpoint/run folder
    tracking: str = "none"  # "none" or "wandb" (offline unless WANDB_API_KEY is set)
    wandb_project: str = "stellar-dist"
    RANGES: ClassVar[dict] = {"seed": "[0, inf)"}
    CHOICES: ClassVar[dict] = {"tracking": ("none", "wandb")}


# Every key's allowed range / choices by dotted name; ssl.<name>.* are in each algorithm's Options.RANGES.
RANGES = dotted_table(Config, "RANGES")
CHOICES = dotted_table(Config, "CHOICES")


def _default_sections() -> dict:
    return {name: algorithm.Options() for name, algorithm in ALGORITHMS.items() if algorithm.Options is not None}


def _build_ssl(values: dict, prefix: str) -> SSLConfig:
    """ssl: its own keys, and the ssl.<algorithm> sections, each built with its algorithm's Options (defaults
    where the YAML is silent)."""
    check_mapping(values, prefix)
    defaults = _default_sections()
    own = {key: value for key, value in values.items() if key not in defaults}
    config = build(SSLConfig, own, prefix, extra_names=("sections", *defaults))
    sections = defaults | {name: build(type(defaults[name]), values[name], f"{prefix}{name}.")
                           for name in defaults if name in values}
    return dataclasses.replace(config, sections=sections)


def _check_combinations(config: Config) -> Config:
    if config.cluster.k == 1:
        raise UserError("config key cluster.k=1 makes one cluster: use 0 (5 x classes) or at least 2")
    if config.cluster.k > config.cluster.fit_samples:
        raise UserError(f"cluster.k={config.cluster.k} is more clusters than the cluster.fit_samples="
                        f"{config.cluster.fit_samples} samples k-means is fit on: raise cluster.fit_samples or lower k")
    algorithm = ALGORITHMS[config.ssl.algorithm]
    if config.cluster.lambda_c > 0 and algorithm.cluster_head == "never":
        raise UserError(f"cluster.lambda_c={config.cluster.lambda_c} adds a cluster head trained on unlabeled weak "
                        f"views; ssl.algorithm={config.ssl.algorithm} has none: set cluster.lambda_c=0 "
                        "(ssl.algorithm=deepcluster trains the cluster head by itself)")
    if config.ssl.distribution_alignment and not algorithm.aligns_distribution:
        # Alignment belongs to the pseudo-labelling algorithms; turning it off (and saying so in the run's
        # config.yaml) lets `ssl.algorithm=supervised` run as the baseline on the very file of the best recipe.
        config = dataclasses.replace(config, ssl=dataclasses.replace(config.ssl, distribution_alignment=False))
    if not config.output_dir.strip():
        raise UserError("config key output_dir is empty: name a folder for the run")
    return config


def config_from_dict(tree: dict) -> Config:
    """A config from nested dicts (a run's config as its model folder keeps it), checked like a YAML file."""
    return _check_combinations(build(Config, tree, "", builders={SSLConfig: _build_ssl}))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    return config_from_dict(read_tree(path, overrides))


def to_dict(config: Config) -> dict:
    """The config as nested dicts, each algorithm's section under ssl.<name> (as the YAML is written)."""
    tree = dataclasses.asdict(config)
    tree["ssl"] |= tree["ssl"].pop("sections")
    return tree


def save_config(config: Config, path: str | Path) -> None:
    from ..core.files import write_atomically

    write_atomically(path, yaml.safe_dump(to_dict(config), sort_keys=False))
