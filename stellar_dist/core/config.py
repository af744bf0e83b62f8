"""The ground floor of configuration: frozen dataclass sections with commented defaults, each declaring the
ranges (`RANGES`, "[" inclusive, "(" exclusive) and choices (`CHOICES`) of its keys, and the machinery that builds
any such dataclass from nested dicts (type, range and choice checks, unknown keys refused with the valid ones)
and applies dotted KEY=VALUE overrides. It knows no algorithm: the run's whole config (`Config`, with the
algorithms' own sections) is composed in training/config.py.

Size-like keys have an upper bound, so that a typo cannot grow memory without limit (a shuffle buffer of 10^8
samples, a batch of 10^7 images). 0 means "off" only where a default's comment says so.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import yaml

from .errors import PathNotFound, UserError


@dataclass(frozen=True)
class DataConfig:
    shards: str = "data/sim-shards"  # folder written by `stellar-dist pack`
    num_workers: int = 2  # dataloader processes per rank
    shuffle_buffer: int = 256  # samples mixed across shards within each worker
    grayscale: bool = False  # single-channel input, as in the original design; RGB keeps the colours
    balanced_labeled: bool = False  # class-balanced labeled stream (rejection sampling by the manifest"s counts)
    max_shift_fraction: float = 0.125  # the weak view"s random shift, as a fraction of the side (reflect padding);
    # 0 keeps objects centred, as the photometric branch"s apertures expect (model.photometry)
    strong_view: str = "sky"  # "sky": FixMatch"s RandAugment + Cutout anywhere; "evidence": keeps colours, profile
    # and the centre (flux scale, rotation, noise; Cutout off the central quarter)
    augment_on: str = "auto"  # "workers": views made per sample in the dataloader workers; "device": workers only
    # decode, views made batched on the training device (batch_augment.py); "auto": device on GPUs, else workers
    RANGES: ClassVar[dict] = {
        "num_workers": "[0, 64]", "max_shift_fraction": "[0, 0.5)", "shuffle_buffer": "[1, 100000]"
    }
    CHOICES: ClassVar[dict] = {"strong_view": ("sky", "evidence"), "augment_on": ("auto", "workers", "device")}


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
    RANGES: ClassVar[dict] = {
        "steps": "[1, 1e9]", "batch_size": "[1, 65536]", "lr": "(0, inf)", "momentum": "[0, 1)",
        "weight_decay": "[0, inf)", "warmup_steps": "[0, inf)", "ema_decay": "[0, 1)", "log_every_steps": "[1, 1e9]",
        "cpu_threads": "[0, 1024]", "logit_adjustment": "[0, 10]"
    }
    CHOICES: ClassVar[dict] = {"optimizer": ("sgd", "adamw"), "mixed_precision": ("auto", "no", "bf16", "fp16")}


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "mobilenet_v2"  # any torchvision classification model
    weights: str = "none"  # "none", "imagenet" (needs the torchvision cache or internet), or a .pt/.pth/.safetensors path
    photometry: bool = False  # a photometric branch: ~80 aperture numbers measured on each whole input image
    # (fluxes, colours, profile, size; data/photometry.py) join the CNN"s features before the head
    photometry_dropout: float = 0.0  # in training, the share of samples whose photometric features are zeroed: the
    # CNN must also classify alone (with few labels the branch"s MLP memorises them otherwise)
    centre_crop: int = 0  # pixels: the CNN sees the central N x N of the input (0: all of it); the photometric
    # branch still measures the whole field, and the CNN"s cost falls with the square of N
    RANGES: ClassVar[dict] = {"centre_crop": "[0, 4096]", "photometry_dropout": "[0, 1)"}


@dataclass(frozen=True)
class EvalConfig:
    every_steps: int = 200  # test-split evaluation with the EMA model (and always at the end); 0: only at the end
    batch_size: int = 128  # per device
    RANGES: ClassVar[dict] = {"every_steps": "[0, inf)", "batch_size": "[1, 65536]"}


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 200  # and always at the end; 0: only at the end
    keep_last: int = 3  # older step_* folders are deleted; 0: keep every checkpoint
    RANGES: ClassVar[dict] = {"every_steps": "[0, inf)", "keep_last": "[0, inf)"}


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
    probe_samples: int = 50_000  # labeled, and test, samples the cluster report"s linear probe uses at most
    RANGES: ClassVar[dict] = {
        "every_steps": "[0, inf)", "k": "[0, 100000]", "pca_dim": "[0, 4096]", "iterations": "[1, 10000]",
        "lambda_c": "[0, inf)", "grid_clusters": "[1, 100]", "fit_samples": "[100, 1e8]",
        "probe_samples": "[10, 1e7]"
    }
    CHOICES: ClassVar[dict] = {"backend": ("auto", "faiss", "torch")}


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 0  # > 0: DeepCluster on the unlabeled images for this many steps first, then ssl.algorithm from
    # those weights (training/stages.py); 0: no pretraining
    RANGES: ClassVar[dict] = {"steps": "[0, 1e9]"}


@dataclass(frozen=True)
class DistConfig:
    timeout_s: float = 900.0  # a collective waiting this long for another rank (dead or frozen node) ends the run
    # with one line naming the last good checkpoint; long enough for rank 0"s k-means while the others wait
    RANGES: ClassVar[dict] = {"timeout_s": "(0, 86400]"}


def check_range(dotted: str, value, spec: str | None) -> None:
    if spec is None:
        return
    low, high = (float(bound) for bound in spec[1:-1].split(","))
    inside = (low <= value if spec[0] == "[" else low < value) and (value <= high if spec[-1] == "]" else value < high)
    if not inside or value != value:  # NaN compares false with everything
        raise UserError(f"config key {dotted}={value!r} is out of range: it must lie in {spec}")


def check_type(dotted: str, value, expected):
    if expected is float and not isinstance(value, bool) and isinstance(value, (int, str)):
        try:
            return float(value)  # YAML reads 1e-3 as a string
        except ValueError:
            pass
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise UserError(f"config key {dotted} must be {expected.__name__}, got {value!r}: fix the YAML or override")
    return value


def check_mapping(values, prefix: str) -> None:
    if not isinstance(values, dict):
        raise UserError(f"config section {prefix.rstrip('.') or 'top level'} must be a mapping, got {values!r}")


def build(cls, values: dict, prefix: str = "", builders: dict | None = None, extra_names: tuple[str, ...] = ()):
    """`cls` (a frozen dataclass) from `values`, every key checked; a nested dataclass field is built the same
    way, or by `builders[its class](values, prefix)` where the caller composes it (training/config.py's ssl)."""
    builders = builders or {}
    check_mapping(values, prefix)
    names = [item.name for item in dataclasses.fields(cls) if item.name not in extra_names] + list(extra_names)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(f"unknown config key(s) {', '.join(prefix + key for key in unknown)}; "
                        f"valid keys here: {', '.join(prefix + name for name in names)}")
    hints, kwargs = typing.get_type_hints(cls), {}
    for name, value in values.items():
        expected = hints[name]
        if expected in builders:
            kwargs[name] = builders[expected](value, f"{prefix}{name}.")
        elif dataclasses.is_dataclass(expected):
            kwargs[name] = build(expected, value, f"{prefix}{name}.", builders)
        else:
            allowed = getattr(cls, "CHOICES", {}).get(name)
            if expected is str and isinstance(value, bool) and allowed:  # a word, not a path: the choices say
                value = "yes" if value else "no"  # YAML 1.1 reads a bare no / yes as a boolean (mixed_precision: no)
            kwargs[name] = check_type(prefix + name, value, expected)
            if expected in (int, float):
                check_range(prefix + name, kwargs[name], getattr(cls, "RANGES", {}).get(name))
            if allowed and kwargs[name] not in allowed:
                raise UserError(f"config key {prefix}{name}={value!r} is not one of {', '.join(allowed)}")
    return cls(**kwargs)


def dotted_table(cls, attribute: str, prefix: str = "") -> dict:
    """Every key's RANGES or CHOICES entry under its dotted name (`stellar-dist config --keys`, the tests)."""
    table = {prefix + key: value for key, value in getattr(cls, attribute, {}).items()}
    for item in dataclasses.fields(cls):
        kind = typing.get_type_hints(cls)[item.name]
        if dataclasses.is_dataclass(kind):
            table |= dotted_table(kind, attribute, f"{prefix}{item.name}.")
    return table


def apply_override(tree: dict, override: str) -> None:
    """One dotted KEY=VALUE into the nested dicts of a YAML file (the value read as YAML)."""
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


def read_tree(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """A YAML file (or nothing) plus dotted overrides, as nested dicts."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise PathNotFound(f"config file {path} does not exist: see configs/ for examples")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise UserError(f"config file {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    for override in overrides:
        apply_override(tree, override)
    return tree
