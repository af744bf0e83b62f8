"""The first minute of a GPU lease: does every GPU path of the project run at all? Every check runs and records
its result even when another fails (exit status 1 if any failed); results are written after each check.

    python3 bench/gpu_smoke.py --shards /tmp/scratch/shards-u8 --out /tmp/scratch/smoke --json $OUT/smoke.json

1. a bf16 forward/backward of resnet18 through Accelerate (fp32 on a CPU dry run);
2. both views made on the device from a uint8 batch (data/batch_augment.py);
3. torch k-means on the device (clustering/cluster.py);
4. per algorithm, four engine steps (views on the device) with the syncing ops counted at the dispatcher per step
   and source line (training/syncs.py; steps 1-3 are not log steps: they must have none), and on CUDA the host
   synchronisations torch.cuda.set_sync_debug_mode("warn") reports in those steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bf16_step(device: torch.device) -> dict:
    from accelerate import Accelerator

    from stellar_dist.model.network import build_model

    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if device.type == "cuda" else "no")
    model = build_model("resnet18", 3, weights="none", num_clusters=0, in_channels=3, channels_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer = accelerator.prepare(model, optimizer)
    images, labels = torch.rand(64, 3, 64, 64, device=device), torch.randint(0, 3, (64,), device=device)
    with accelerator.autocast():
        loss = torch.nn.functional.cross_entropy(model(images), labels)
    accelerator.backward(loss)
    optimizer.step()
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()}")
    return {"loss": round(loss.item(), 4), "mixed_precision": accelerator.mixed_precision}


def device_views(device: torch.device) -> dict:
    from stellar_dist.data.batch_augment import make_views

    images = torch.randint(0, 256, (128, 3, 64, 64), dtype=torch.uint8, device=device)
    views = make_views(images, torch.arange(128, device=device), ("weak", "strong"))
    for name, view in views.items():
        if view.shape != (128, 3, 64, 64) or view.device.type != device.type or not torch.isfinite(view).all():
            raise RuntimeError(f"{name} view: {tuple(view.shape)} on {view.device}")
    return {"views": sorted(views)}


def device_kmeans(device: torch.device) -> dict:
    from stellar_dist.clustering.cluster import kmeans_torch

    features = torch.randn(20000, 64, device=device)
    centroids, assignment, inertia = kmeans_torch(features, torch.arange(20000, device=device), 50, seed=42,
                                                  iterations=5)
    if assignment.device.type != device.type or torch.bincount(assignment, minlength=50).min() == 0:
        raise RuntimeError("k-means left an empty cluster or ran off the device")
    return {"inertia": round(inertia, 1)}


ALGORITHMS = (["ssl.algorithm=fixmatch", "ssl.distribution_alignment=true"], ["ssl.algorithm=softmatch"],
              ["ssl.algorithm=flexmatch"], ["ssl.algorithm=freematch"], ["ssl.algorithm=mixmatch"],
              ["ssl.algorithm=supervised"])


def engine_steps(shards: str, out: str, device: torch.device, quick: bool = False) -> dict:
    from stellar_dist.training.config import load_config
    from stellar_dist.training.engine import train_loop
    from stellar_dist.training.session import setup
    from stellar_dist.training.syncs import SyncCounter

    results = {}
    for index, choice in enumerate(ALGORITHMS[:1] + ALGORITHMS[-1:] if quick else ALGORITHMS):
        config = load_config("configs/sdss.yaml", [*(["model.arch=shufflenet_v2_x0_5"] if quick else []),
            f"data.shards={shards}", f"output_dir={out}/{index}", "train.steps=4", "train.batch_size=16", "ssl.mu=2",
            "eval.every_steps=0", "checkpoint.every_steps=0", "cluster.at_end=false", "cluster.every_steps=0",
            "tracking=none", "train.log_every_steps=4", "data.num_workers=2", "resume=none",
            "data.augment_on=" + ("device" if device.type == "cuda" else "workers"), *choice])
        run = setup(config)
        with warnings.catch_warnings(record=True) as caught, SyncCounter(step=lambda: run.step, on_host=(run.ema.n_averaged,)) as syncs:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn") if device.type == "cuda" else None
            try:
                train_loop(run)
            finally:
                torch.cuda.set_sync_debug_mode("default") if device.type == "cuda" else None
        reported = [str(item.message) for item in caught if "synchroniz" in str(item.message)]
        results[choice[0].split("=")[1] + ("+alignment" if len(choice) > 1 else "")] = {
            "syncs_per_step": syncs.by_step(), "quiet_step_syncs_by_line": syncs.by_line({1, 2, 3}),
            "log_step_syncs_by_line": syncs.by_line({4}), "cuda_sync_warnings": len(reported)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--out", required=True, help="scratch folder for the three-step run")
    parser.add_argument("--json", required=True, help="where the results go")
    parser.add_argument("--quick", action="store_true", help="two algorithms, a small network: the suite's dry run")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)",
               "torch": torch.__version__}
    checks = (("bf16_step", lambda: bf16_step(device)), ("device_views", lambda: device_views(device)),
              ("device_kmeans", lambda: device_kmeans(device)),
              ("engine_steps", lambda: engine_steps(args.shards, args.out, device, args.quick)))
    failed = []
    for name, check in checks:
        started = time.perf_counter()
        try:
            results[name] = check() | {"seconds": round(time.perf_counter() - started, 2)}
            print(f"smoke: {name} ok {json.dumps(results[name])}", flush=True)
        except BaseException as error:  # SystemExit too: the engine's one-line errors exit
            results[name] = {"failed": f"{type(error).__name__}: {error}"}
            failed.append(name)
            print(f"smoke: {name} FAILED: {type(error).__name__}: {error}", flush=True)
        Path(args.json).write_text(json.dumps(results, indent=2))  # after every check: a killed run keeps them
    sys.exit(1 if failed else 0)

if __name__ == "__main__":
    main()
