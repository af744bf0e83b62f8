"""Before a run writes anything: is output_dir free, or which checkpoint continues it, and does it fit this config?

Everything here only reads, so every rank can call it before the Accelerator, W&B or config.yaml exist: a refused
run has changed nothing. A run that has checkpoints is never restarted from step 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..clustering import head
from ..core.errors import UserError
from ..core.files import read_json
from . import checkpoint
from .config import Config, load_config

# Keys whose change makes a checkpoint unusable (another network, other losses; the cluster head names its own in
# head.must_match) and keys whose change only breaks the bit-exact continuation of the data order.
MUST_MATCH = ("model.arch", "model.photometry", "model.centre_crop", "ssl.algorithm")
SAME_ORDER = ("data.num_workers", "train.batch_size", "ssl.mu", "seed", "data.shards")
SCHEDULE = ("train.steps", "train.warmup_steps", "train.lr")  # the learning-rate curve is recomputed from these
# The names a run writes in its output_dir; anything else there is the user's and is never touched.
RUN_NAMES = ("checkpoints", "model", "plots", "config.yaml", "metrics.json", "log.jsonl", "predictions.csv",
             "assignments.csv", "wandb", "wandb_run_id", "pretrain")
RUN_MARKER = ".stellar-dist-run"  # written when a run first takes its folder


def check_run_folder(output_dir: Path) -> None:
    """A folder that is not a run of ours but holds files under a run's names is refused: training would
    overwrite or delete them. Other files of the user's in the folder are fine (a run never touches them)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output_dir {output_dir} is a file: choose a folder path")
    if not output_dir.is_dir() or (output_dir / RUN_MARKER).exists() or any(
            checkpoint.is_checkpoint(folder) for folder in checkpoint.candidates(output_dir)):
        return
    foreign = [name for name in RUN_NAMES if (output_dir / name).exists() or (output_dir / name).is_symlink()]
    if foreign:
        raise UserError(f"output_dir {output_dir} holds {', '.join(foreign)}, which no stellar-dist run wrote; a "
                        "run writes under these names and would replace them: choose another output_dir (nothing "
                        "was changed)")


@dataclass
class ResumePoint:
    folder: Path
    skipped: list = field(default_factory=list)  # (newer checkpoint, why it was not used)
    warnings: list = field(default_factory=list)


def _value(config: Config, key: str):
    section, _, name = key.rpartition(".")
    return getattr(getattr(config, section), name) if section else getattr(config, name)


def _fixed(config: Config) -> dict:
    """What a run's checkpoints fix: the network and loss keys, and what the cluster head says it needs."""
    return {key: _value(config, key) for key in MUST_MATCH} | head.must_match(config)


def _compare(previous: Config, config: Config, world_size: int, state: dict) -> list[str]:
    trained, asked = _fixed(previous), _fixed(config)
    for key in trained:
        if trained[key] != asked[key]:
            raise UserError(f"{config.output_dir} was trained with {key}={trained[key]!r}, this run asks for "
                            f"{asked[key]!r}: its checkpoints cannot continue it; use the run's value or "
                            "another output_dir")
    changed = [f"{key} {_value(previous, key)!r} -> {_value(config, key)!r}" for key in SAME_ORDER
               if _value(previous, key) != _value(config, key)]
    if state.get("world_size", world_size) != world_size:
        changed.append(f"processes {state['world_size']} -> {world_size}")
    warnings = []
    if changed:
        warnings.append(f"resuming with {', '.join(changed)}: the run continues, but not on the data order an "
                        "uninterrupted run would have seen (exact resume needs the same values)")
    schedule = [f"{key} {_value(previous, key)!r} -> {_value(config, key)!r}" for key in SCHEDULE
                if _value(previous, key) != _value(config, key)]
    if schedule:
        warnings.append(f"resuming with {', '.join(schedule)}: the learning-rate schedule (warmup, then cosine to "
                        f"zero at train.steps) is recomputed, so from step {state['step']} on the learning rate "
                        "follows the new curve, not the one the run was trained on so far")
    return warnings


def _check_classes(state: dict, manifest: dict, folder: Path) -> None:
    trained = state.get("classes")
    if trained is not None and list(trained) != list(manifest["classes"]):
        raise UserError(f"checkpoint {folder} was trained on classes {list(trained)}, the shards have "
                        f"{manifest['classes']}: use the shards it was trained on")


# What the checkpoint's weights were made to read (its model/config.json) against the shards now given.
DATA_KEYS = ("encoding", "channels", "bands", "image_size", "preprocess")


def _check_data(folder: Path, manifest: dict) -> None:
    """The shards must hold images of the kind the checkpoint was trained on: the refusal names the change."""
    description_path = folder / "model" / "config.json"
    try:
        trained = read_json(description_path, 16 << 20) if description_path.is_file() else None
    except (OSError, ValueError):
        trained = None  # checked when the checkpoint is loaded
    if not isinstance(trained, dict):
        return
    now = {"encoding": manifest["encoding"], "channels": manifest.get("channels", 3),
           "bands": manifest.get("bands", ["R", "G", "B"]), "image_size": manifest["image_size"],
           "preprocess": manifest["preprocess"]}
    changed = [f"{key} {trained.get(key)!r} -> {now[key]!r}" for key in DATA_KEYS
               if key in trained and trained[key] != now[key]]
    if changed:
        raise UserError(f"checkpoint {folder} was trained on other images than data.shards holds "
                        f"({', '.join(changed)}): its weights cannot continue on them; use the shards the run was "
                        "trained on, or another output_dir (nothing was changed)")


def find_resume_point(config: Config, manifest: dict, world_size: int) -> ResumePoint | None:
    """The checkpoint to continue from (None: a fresh run), or a one-line refusal."""
    output_dir = Path(config.output_dir)
    check_run_folder(output_dir)
    if config.resume == "none":
        if checkpoint.has_checkpoints(output_dir) or (output_dir / "metrics.json").exists():
            raise UserError(f"output_dir {output_dir} already holds a run ({_describe(output_dir)}): pass "
                            "resume=auto to continue it, or choose another output_dir")
        return None
    if config.resume == "auto":
        folder, skipped = checkpoint.newest_complete(output_dir)
        if folder is None and skipped:
            raise UserError(f"output_dir {output_dir} has checkpoints but none is complete ({skipped[0][0].name} "
                            f"{skipped[0][1]}): restore one or choose another output_dir; nothing was changed")
        if folder is None:
            return None
    else:
        folder, skipped = checkpoint.resolve(config.resume), []
    state = checkpoint.load_trainer_state(folder)
    _check_classes(state, manifest, folder)
    _check_data(folder, manifest)
    if int(state["step"]) > config.train.steps:
        raise UserError(f"checkpoint {folder} is at step {state['step']}, beyond train.steps={config.train.steps}: "
                        f"set train.steps to at least {state['step']} to continue or re-report the run")
    point = ResumePoint(folder, skipped)
    saved = folder.parent.parent / "config.yaml"
    if saved.is_file():
        try:
            previous = load_config(saved)
        except UserError:  # written by another version of the project: nothing to compare against
            previous = None
        if previous is not None:
            point.warnings += _compare(previous, config, world_size, state)
    return point


def _describe(output_dir: Path) -> str:
    latest = checkpoint.candidates(output_dir)
    return latest[0].name if latest else "metrics.json"


def finished_report(config: Config) -> dict | None:
    """The saved metrics of a run that already did what `config` asks (resume=auto, the same config, metrics.json
    beside a final checkpoint at train.steps): running it again would only append duplicate log rows and a second
    W&B run, so the caller returns these instead. None when there is anything to do."""
    import json

    import yaml

    from .config import to_dict

    output_dir = Path(config.output_dir)
    metrics_path, saved_config = output_dir / "metrics.json", output_dir / "config.yaml"
    if config.resume != "auto" or not metrics_path.is_file() or not saved_config.is_file():
        return None
    latest = checkpoint.find_latest(output_dir)
    if latest is None or int(latest.name.rsplit("_", 1)[-1]) != config.train.steps:
        return None
    try:
        metrics, saved = json.loads(metrics_path.read_text()), yaml.safe_load(saved_config.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    asked = to_dict(config)
    if metrics.get("steps") != config.train.steps or {**saved, "resume": None} != {**asked, "resume": None}:
        return None
    return metrics
