"""Run logging on the main process only: OUTPUT_DIR/log.jsonl always, Weights & Biases when asked.

W&B goes through Accelerate's tracker, so only the main process ever talks to it (images logged from every rank
hang multi-GPU runs). Without WANDB_API_KEY (or a `wandb login`) it runs offline, never prompting:
`wandb sync OUTPUT_DIR/wandb/offline-run-*` uploads later.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import time
from pathlib import Path

from ..core import dist
from ..core.errors import UserError
from ..core.files import open_append, open_regular, write_atomically


def prepare_wandb_environment(output_dir: Path) -> None:
    """Called before the Accelerator is built: offline unless a key is configured, quiet, files under the run."""
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    logged_in = netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="replace")
    if not (os.environ.get("WANDB_API_KEY") or logged_in) and os.environ.get("WANDB_MODE") not in ("online",
                                                                                                 "disabled"):
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DIR", str(output_dir))
    # artifact staging and cache under the run too, not in the home folder (44 MB per demo run otherwise)
    os.environ.setdefault("WANDB_DATA_DIR", str(output_dir / "wandb" / "staging"))
    os.environ.setdefault("WANDB_CACHE_DIR", str(output_dir / "wandb" / "cache"))


class RunTracker:
    def __init__(self, accelerator, config_dict: dict, output_dir: Path, use_wandb: bool, project: str):
        self.accelerator, self.output_dir, self.use_wandb = accelerator, output_dir, use_wandb
        self.is_main = dist.is_main()  # only the main process logs
        if use_wandb:
            accelerator.init_trackers(project, config=config_dict, init_kwargs={"wandb": {
                "dir": str(output_dir), "name": output_dir.name, "id": self._run_id(), "resume": "allow"}})
        try:
            self._log_file = open_append(output_dir / "log.jsonl") if self.is_main else None
        except OSError as error:  # a planted link or hard link: never appended through
            raise UserError(f"cannot append to {output_dir / 'log.jsonl'} ({error.strerror or error}): remove it if "
                            "it is not the run's own log, or choose another output_dir") from None

    def _run_id(self) -> str | None:
        """One W&B run per output folder: a resumed or requeued job logs to the run it started (the id is kept in
        OUTPUT_DIR/wandb_run_id)."""
        if not self.is_main:
            return None
        path = self.output_dir / "wandb_run_id"
        if not path.exists():
            alphabet = string.ascii_lowercase + string.digits  # W&B's own id alphabet and length
            write_atomically(path, "".join(secrets.choice(alphabet) for _ in range(8)) + "\n")
        with open_regular(path, 4096) as handle:
            return handle.read().decode(errors="replace").strip()

    def log(self, metrics: dict, step: int) -> None:
        if not self.is_main:
            return
        self._log_file.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")
        self._log_file.flush()
        if self.use_wandb:
            self.accelerator.log(metrics, step=step)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        if not (self.is_main and self.use_wandb):
            return
        import wandb

        self.accelerator.log({key: wandb.Image(str(path)) for key, path in images.items()}, step=step)

    def log_evaluation(self, gathered: dict, manifest: dict, shards_dir: str, step: int, worst: int = 24) -> None:
        """The final evaluation on W&B: an interactive confusion matrix, and a table of the worst-classified test
        objects (lowest probability of their true class) with their images."""
        if not (self.is_main and self.use_wandb):
            return
        import numpy as np
        import wandb

        from .evaluation import read_test_images

        classes, labels, predictions = manifest["classes"], gathered["label"], gathered["prediction"]
        confusion = wandb.plot.confusion_matrix(y_true=labels.tolist(), preds=predictions.tolist(),
                                                class_names=list(classes))
        p_true = gathered["probability"][np.arange(len(labels)), labels]
        order = np.argsort(p_true, kind="stable")[:worst]
        images = read_test_images(shards_dir, gathered, order, manifest)
        table = wandb.Table(columns=["id", "objid", "true_class", "predicted_class", "p_true_class", "image"])
        for index in order:
            sample_id = int(gathered["id"][index])
            pixels, objid = images.get(sample_id, (None, None))
            table.add_data(sample_id, None if objid is None else str(objid), classes[int(labels[index])],
                           classes[int(predictions[index])], float(p_true[index]),
                           wandb.Image(pixels) if pixels is not None else None)
        self.accelerator.log({"test/confusion_matrix_interactive": confusion, "test/worst_classified": table},
                             step=step)

    def log_artifacts(self, model_dir: Path, manifest_path: Path) -> None:
        """The portable model folder and the shards' manifest as W&B Artifacts of this run."""
        if not (self.is_main and self.use_wandb) or not model_dir.is_dir():
            return
        import wandb

        run = self.accelerator.get_tracker("wandb", unwrap=True)
        description = json.loads((model_dir / "config.json").read_text())
        model = wandb.Artifact(f"model-{run.id}", type="model", metadata=description)
        model.add_dir(str(model_dir))
        run.log_artifact(model)
        shards = wandb.Artifact(f"shards-{run.id}", type="dataset", description="the shards' manifest (splits, "
                                "counts, hashes)")
        shards.add_file(str(manifest_path))
        run.log_artifact(shards)

    def summary(self, values: dict) -> None:
        if self.is_main and self.use_wandb:
            self.accelerator.get_tracker("wandb", unwrap=True).summary.update(values)

    def wandb_dir(self) -> str | None:
        if self.is_main and self.use_wandb:
            return self.accelerator.get_tracker("wandb", unwrap=True).dir
        return None

    def finish(self) -> None:
        if self._log_file:
            self._log_file.close()
        if self.use_wandb:
            self.accelerator.end_training()
