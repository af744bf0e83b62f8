"""FixMatch training images/s: our step against the naive loop of the original design, same model and batch sizes,
on synthetic batches (this isolates the step from the input pipeline; bench/data_speed.py measures that).

    python bench/step_speed.py                                   # resnet18 and mobilenet_v2, 32 and 64 px, CPU
    python bench/step_speed.py --arch resnet18 --size 64 --batch 64 --mu 7 --repeats 7 --out bench/results/step.json

Variants, each timed over --steps optimizer steps after --warmup steps, median of --repeats:
- naive: labeled, weak and strong views in three separate forward passes, fp32, NCHW (kekmodel-style loops);
- ours: one forward pass of the concatenated batch (the engine's step: shared batch-norm statistics), NCHW;
- ours+channels_last: the same with NHWC weights (`train.channels_last=true`);
- ours+bf16 (GPU only): bf16 autocast, as the engine uses on GPUs.
Images/s counts every image forwarded: batch x (1 + 2 mu).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch.nn.functional as F  # noqa: E402

from stellar_dist.algorithms.fixmatch import masked_cross_entropy  # noqa: E402
from stellar_dist.model.network import StellarNet  # noqa: E402


def make_step(variant: str, model, optimizer, device):
    def step(labeled, labels, weak, strong):
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.endswith("bf16"))
        with autocast:
            if variant == "naive":
                logits = [model(labeled), model(weak), model(strong)]
            else:
                logits = model(torch.cat([labeled, weak, strong])).split([len(labeled), len(weak), len(strong)])
            confidence, pseudo_labels = logits[1].detach().float().softmax(-1).max(-1)  # FixMatch's terms
            loss = F.cross_entropy(logits[0].float(), labels) + masked_cross_entropy(
                logits[2].float(), pseudo_labels, (confidence >= 0.95).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def measure(arch: str, size: int, batch: int, mu: int, variant: str, args, device) -> float:
    torch.manual_seed(0)
    model = StellarNet(arch, 3).to(device)
    if "channels_last" in variant:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    labeled, weak, strong = (torch.rand(n, 3, size, size, device=device) for n in (batch, batch * mu, batch * mu))
    labels = torch.randint(3, (batch,), device=device)
    step = make_step(variant, model, optimizer, device)
    rates = []
    for _ in range(args.repeats):
        for _ in range(args.warmup):
            step(labeled, labels, weak, strong)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.steps):
            step(labeled, labels, weak, strong)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(args.steps * batch * (1 + 2 * mu) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--size", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mu", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the rows as JSON")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants = ["naive", "ours", "ours+channels_last"] + (["ours+channels_last+bf16"] if device.type == "cuda" else [])
    rows = []
    print(f"| arch | px | batch x (1 + 2 mu) | {' | '.join(variants)} | ours+channels_last / naive |")
    print("|---|---|---|" + "---|" * len(variants) + "---|")
    for arch in args.arch:
        for size in args.size:
            rates = {variant: measure(arch, size, args.batch, args.mu, variant, args, device) for variant in variants}
            rows.append({"arch": arch, "size": size, "batch": args.batch, "mu": args.mu, "device": str(device),
                         "threads": torch.get_num_threads(), "images_per_s": rates})
            cells = " | ".join(f"{rates[variant]:.0f}" for variant in variants)
            print(f"| {arch} | {size} | {args.batch} x {1 + 2 * args.mu} | {cells} | "
                  f"{rates['ours+channels_last'] / rates['naive']:.2f}x |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
