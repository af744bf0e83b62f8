"""Run configuration: frozen dataclasses with commented defaults, a YAML file plus dotted overrides.

    config = load_config("configs/demo.yaml", ["ssl.threshold=0.9", "train.steps=200"])

Every key is type-checked; unknown keys are rejected with the list of valid ones. The resolved config is saved as
`OUTPUT_DIR/config.yaml` with every run.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .algorithms import ALGORITHMS
from .errors import UserError


@dataclass(frozen=True)
class DataConfig:
    shards: str = "data/sim-shards"  # folder written by `stellar-dist pack`
    num_workers: int = 2  # dataloader processes per rank
    shuffle_buffer: int = 256  # samples mixed across shards within each worker
    grayscale: bool = False  # single-channel input, as in the original design; RGB keeps the colours
    balanced_labeled: bool = False  # class-balanced labeled stream (rejection sampling by the manifest's counts)
    max_shift_fraction: float = 0.125  # the weak view's random shift, as a fraction of the side (reflect padding);
    # 0 keeps objects centred, as the photometric branch's apertures expect (model.photometry)
    strong_view: str = "sky"  # "sky": FixMatch's RandAugment + Cutout anywhere; "evidence": keeps colours, profile
    # and the centre (flux scale, rotation, noise; Cutout off the central quarter)
    augment_on: str = "auto"  # "workers": views made per sample in the dataloader workers; "device": workers only
    # decode, views made batched on the training device (batch_augment.py); "auto": device on GPUs, else workers


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 400  # optimizer steps (each rank runs exactly this many)
    batch_size: int = 32  # labeled samples per device per step; unlabeled ones are ssl.mu times more
    lr: float = 0.03  # peak learning rate for the global batch
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum, as FixMatch) or "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 20  # linear warmup, then cosine decay to zero at `steps`
    ema_decay: float = 0.999  # EMA of weights used for evaluation
    log_every_steps: int = 10
    mixed_precision: str = "auto"  # "auto": bf16 on GPU, none on CPU; or "no", "bf16", "fp16"
    cpu_threads: int = 0  # torch threads per process on CPU; 0 = cores / local processes (accelerate sets 1)
    logit_adjustment: float = 0.0  # tau of the logit-adjusted supervised loss (Menon et al. 2021; 1.0 typical), 0: off
    channels_last: bool = True  # NHWC convolutions: mobilenet_v2 1.8-2.1x, resnet18 1.0-1.1x faster on CPU


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


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "mobilenet_v2"  # any torchvision classification model
    weights: str = "none"  # "none", "imagenet" (needs the torchvision cache or internet), or a .pt/.pth/.safetensors path
    photometry: bool = False  # a photometric branch: ~80 aperture numbers measured on each whole input image
    # (fluxes, colours, profile, size; data/photometry.py) join the CNN's features before the head
    photometry_dropout: float = 0.0  # in training, the share of samples whose photometric features are zeroed: the
    # CNN must also classify alone (with few labels the branch's MLP memorises them otherwise)
    centre_crop: int = 0  # pixels: the CNN sees the central N x N of the input (0: all of it); the photometric
    # branch still measures the whole field, and the CNN's cost falls with the square of N


@dataclass(frozen=True)
class EvalConfig:
    every_steps: int = 200  # test-split evaluation with the EMA model (and always at the end); 0: only at the end
    batch_size: int = 128  # per device


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 200  # and always at the end; 0: only at the end
    keep_last: int = 3  # older step_* folders are deleted; 0: keep every checkpoint


@dataclass(frozen=True)
class ClusterConfig:
    every_steps: int = 0  # re-cluster every N steps; 0: only at the end (deepcluster: once per epoch-equivalent)
    at_end: bool = True  # cluster the final EMA features and report cluster accuracy / NMI / ARI
    k: int = 0  # clusters; 0 = 5 x the number of classes
    backend: str = "auto"  # "faiss" (gathered to rank 0; GPU with faiss-gpu), "torch" (distributed, no gather) or
    # "auto" (faiss where it is installed, torch elsewhere)
    pca_dim: int = 64  # PCA-whitened dimensions before k-means, as DeepCluster (0 = no PCA)
    iterations: int = 20  # k-means iterations
    lambda_c: float = 0.0  # weight of the DeepCluster loss on the cluster head during fixmatch (0 disables it)
    grid_clusters: int = 12  # clusters shown in plots/cluster_grid.png (largest first)
    fit_samples: int = 200_000  # PCA + k-means are fit on at most this many labeled + unlabeled samples (chosen by
    # id hash); beyond it a second pass assigns the rest, keeping ~30 bytes per sample instead of its 2 KB feature
    probe_samples: int = 50_000  # labeled, and test, samples the cluster report's linear probe uses at most


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 0  # > 0: DeepCluster on the unlabeled images for this many steps first, then ssl.algorithm from
    # those weights (stellar_dist/stages.py); 0: no pretraining


@dataclass(frozen=True)
class DistConfig:
    timeout_s: float = 900.0  # a collective waiting this long for another rank (dead or frozen node) ends the run
    # with one line naming the last good checkpoint; long enough for rank 0's k-means while the others wait


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


CHOICES = {
    "data.strong_view": ("sky", "evidence"),
    "data.augment_on": ("auto", "workers", "device"),
    "train.optimizer": ("sgd", "adamw"),
    "train.mixed_precision": ("auto", "no", "bf16", "fp16"),
    "ssl.algorithm": ALGORITHMS,  # the registry itself: an algorithm added to it is a valid choice
    "cluster.backend": ("auto", "faiss", "torch"),
    "tracking": ("none", "wandb"),
}

# Allowed ranges of every numeric key ("[" inclusive, "(" exclusive). Size-like keys have an upper bound, so that a
# typo cannot grow memory without limit (a shuffle buffer of 10^8 samples, a batch of 10^7 images). 0 means "off" only where a default's comment
# says so (eval/checkpoint/cluster every_steps, cluster.k, cluster.pca_dim, train.cpu_threads, keep_last).
RANGES = {
    "data.num_workers": "[0, 64]", "data.max_shift_fraction": "[0, 0.5)", "data.shuffle_buffer": "[1, 100000]",
    "train.steps": "[1, 1e9]", "train.batch_size": "[1, 65536]", "train.lr": "(0, inf)", "train.momentum": "[0, 1)",
    "train.weight_decay": "[0, inf)", "train.warmup_steps": "[0, inf)", "train.ema_decay": "[0, 1)",
    "train.log_every_steps": "[1, 1e9]", "train.cpu_threads": "[0, 1024]", "train.logit_adjustment": "[0, 10]",
    "ssl.mu": "[1, 64]", "ssl.threshold": "(0, 1)", "ssl.lambda_u": "[0, inf)",  # ssl.<name>.*: in Options.RANGES
    "eval.every_steps": "[0, inf)", "eval.batch_size": "[1, 65536]",
    "checkpoint.every_steps": "[0, inf)", "checkpoint.keep_last": "[0, inf)",
    "cluster.every_steps": "[0, inf)", "cluster.k": "[0, 100000]", "cluster.pca_dim": "[0, 4096]",
    "cluster.iterations": "[1, 10000]", "cluster.lambda_c": "[0, inf)", "cluster.grid_clusters": "[1, 100]",
    "cluster.fit_samples": "[100, 1e8]", "cluster.probe_samples": "[10, 1e7]",
    "model.centre_crop": "[0, 4096]", "model.photometry_dropout": "[0, 1)", "dist.timeout_s": "(0, 86400]",
    "pretrain.steps": "[0, 1e9]",
    "seed": "[0, inf)",
}


def _default_sections() -> dict:
    return {name: algorithm.Options() for name, algorithm in ALGORITHMS.items() if algorithm.Options is not None}


def _check_range(dotted: str, value, spec: str | None) -> None:
    if spec is None:
        return
    low, high = (float(bound) for bound in spec[1:-1].split(","))
    inside = (low <= value if spec[0] == "[" else low < value) and (value <= high if spec[-1] == "]" else value < high)
    if not inside or value != value:  # NaN compares false with everything
        raise UserError(f"config key {dotted}={value!r} is out of range: it must lie in {spec}")


def _check_combinations(config: "Config") -> "Config":
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


def _check_type(dotted: str, value, expected):
    if expected is float and not isinstance(value, bool) and isinstance(value, (int, str)):
        try:
            return float(value)  # YAML reads 1e-3 as a string
        except ValueError:
            pass
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise UserError(f"config key {dotted} must be {expected.__name__}, got {value!r}: fix the YAML or override")
    return value


def _build_sections(values: dict, prefix: str) -> dict:
    """The ssl.<algorithm> sections, each built with its algorithm's Options (defaults where the YAML is silent)."""
    sections = _default_sections()
    for name, section in values.items():
        sections[name] = _build(type(sections[name]), section, f"{prefix}{name}.")
    return sections


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise UserError(f"config section {prefix.rstrip('.') or 'top level'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [item.name for item in dataclasses.fields(cls) if item.name != "sections"]
    if cls is SSLConfig:  # the algorithms' own sections, ssl.<name>
        sections = {name: values[name] for name in _default_sections() if name in values}
        values = {key: value for key, value in values.items() if key not in sections}
        names += list(_default_sections())
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(f"unknown config key(s) {', '.join(prefix + key for key in unknown)}; "
                        f"valid keys here: {', '.join(prefix + name for name in names)}")
    kwargs = {}
    for name, value in values.items():
        expected = hints[name]
        if dataclasses.is_dataclass(expected):
            kwargs[name] = _build(expected, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(prefix + name, value, expected)
            if expected in (int, float):
                _check_range(prefix + name, kwargs[name], RANGES.get(prefix + name) or
                             getattr(cls, "RANGES", {}).get(name))
            allowed = CHOICES.get(prefix + name) or getattr(cls, "CHOICES", {}).get(name)
            if allowed and kwargs[name] not in allowed:
                raise UserError(f"config key {prefix}{name}={value!r} is not one of {', '.join(allowed)}")
    if cls is SSLConfig:
        kwargs["sections"] = _build_sections(sections, prefix)
    return cls(**kwargs)


def _apply_override(tree: dict, override: str) -> None:
    if "=" not in override:
        raise UserError(f"override {override!r} is not KEY=VALUE (e.g. ssl.threshold=0.9)")
    dotted, raw = override.split("=", 1)
    *parents, leaf = dotted.strip().split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {override!r}: {part} is not a config section")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise UserError(f"override {override!r}: {raw!r} is not a valid value ({str(error).splitlines()[0]}); "
                        "quote text, e.g. KEY='[a'") from None
    node[leaf] = raw if value is None else value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise UserError(f"config file {path} does not exist: see configs/ for examples")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise UserError(f"config file {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    for override in overrides:
        _apply_override(tree, override)
    return _check_combinations(_build(Config, tree, ""))


def config_from_dict(tree: dict) -> Config:
    """A config from nested dicts (a run's config as its model folder keeps it), checked like a YAML file."""
    return _check_combinations(_build(Config, tree, ""))


def to_dict(config: Config) -> dict:
    """The config as nested dicts, each algorithm's section under ssl.<name> (as the YAML is written)."""
    tree = dataclasses.asdict(config)
    tree["ssl"] |= tree["ssl"].pop("sections")
    return tree


def save_config(config: Config, path: str | Path) -> None:
    from .files import write_atomically

    write_atomically(path, yaml.safe_dump(to_dict(config), sort_keys=False))
