"""`stellar-dist export`: the model as ONNX, a torch.export program or TorchScript, checked against PyTorch
(inference/export.py).

    stellar-dist export --model runs/demo --format onnx          # writes runs/demo/model/model.onnx
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="a run folder, its model/ folder or a checkpoints/step_*")
    parser.add_argument("--format", required=True, choices=["onnx", "pt2", "torchscript"], help="onnx (onnxruntime-checked), pt2 "
                        "(torch.export, load with torch.export.load) or torchscript (deprecated by PyTorch)")
    parser.add_argument("--out", help="file to write (default: model.onnx / model.pt2 / model.torchscript.pt in the "
                        "model folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out that export did not "
                        "write (its own earlier exports are replaced without it)")
    return parser


def run(args: argparse.Namespace) -> None:
    from ..inference.export import export

    path, difference = export(args.model, args.format, args.out, args.overwrite)
    print(f"wrote {path} ({args.format}; largest difference from PyTorch {difference:.1e})")
