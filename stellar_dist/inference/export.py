"""`stellar-dist export`: the model folder's network as ONNX, a torch.export program or TorchScript, checked
against PyTorch.

    stellar-dist export --model runs/demo --format onnx          # writes runs/demo/model/model.onnx
    stellar-dist export --model runs/demo --format pt2           # runs/demo/model/model.pt2 (torch.export.load)
    stellar-dist export --model runs/demo/model --format torchscript --out classifier.pt

The exported graph takes images as the model saw them in training (N x 3 x size x size, pixel / 255, prepared as
config.json says) and returns class probabilities. Before it is kept, the export is run on random images
(onnxruntime for ONNX) and must give PyTorch's probabilities within 1e-4, else nothing is written.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import PathNotFound, UserError
from ..core.outputs import atomic_file, check_paths, claim, take_files
from .model_folder import DESCRIPTION, WEIGHTS, find_model_folder, load_model

TOLERANCE = 1e-4
FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2", "torchscript": "model.torchscript.pt"}  # format: default file


class Probabilities(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).softmax(-1)


def _check(name: str, expected: torch.Tensor, got: np.ndarray) -> float:
    difference = float(np.abs(expected.numpy() - got).max())
    if not difference <= TOLERANCE:
        raise UserError(f"the {name} export differs from PyTorch by {difference:.2e} (> {TOLERANCE}): not written; "
                        "report this with the model's config.json")
    return difference


def export(model_path: str | Path, fmt: str, out: str | Path | None = None, overwrite: bool = False
           ) -> tuple[Path, float]:
    """Write the export (atomically, after the check); returns its path and the largest difference seen. An
    existing file is replaced only when export wrote it (or with `overwrite`); the model's own files never."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} must be one of {', '.join(FORMATS)}")
    folder = find_model_folder(model_path)
    out = Path(out) if out else folder / FORMATS[fmt]
    check_paths({"--out": out}, {"the model's weights": folder / WEIGHTS, "the model's config": folder / DESCRIPTION})
    if not out.parent.is_dir():
        raise PathNotFound(f"--out {out}: folder {out.parent} does not exist")
    model, description = load_model(folder)  # refuses non-finite weights, and config.json that does not match
    (lock,) = take_files({"--out": out}, "export", overwrite)
    try:
        with atomic_file(out) as temporary:
            difference = _write(model, description, fmt, temporary)
        claim(out, "export")
    finally:
        lock.release()
    return out, difference


def _write(model, description: dict, fmt: str, temporary: Path) -> float:
    wrapper = Probabilities(model).eval()
    size, channels = description["image_size"], description.get("channels", 3)
    generator = torch.Generator().manual_seed(0)
    example, check = (torch.rand(n, channels, size, size, generator=generator) for n in (2, 5))
    with torch.no_grad():
        expected = wrapper(check)
    if fmt == "pt2":
        # plain (contiguous) weights: channels_last ones make torch.export's archive warn about "incomplete" tensors
        wrapper = wrapper.to(memory_format=torch.contiguous_format)
        program = torch.export.export(wrapper, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        with open(temporary, "wb") as handle:
            torch.export.save(program, handle)
        with open(temporary, "rb") as handle, torch.no_grad(), warnings.catch_warnings():
            # torch 2.11's archive reader warns about its own read-only buffer (not the user's business)
            warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
            loaded = torch.export.load(handle).module()
            return _check("torch.export", expected, loaded(check).numpy())
    if fmt == "torchscript":
        with warnings.catch_warnings():  # one line of ours instead of three FutureWarnings from torch.jit
            warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
            # The image size is fixed per model: the trace's constants (crop, photometric masks) are right for it.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            with torch.no_grad():
                traced = torch.jit.trace(wrapper, example)
            traced.save(str(temporary))
            got = torch.jit.load(str(temporary))(check).detach().numpy()
        print("note: PyTorch deprecates TorchScript; --format pt2 (torch.export) or onnx are its successors")
        return _check("TorchScript", expected, got)
    try:
        import onnxruntime
    except ImportError:
        raise UserError("ONNX export needs onnx, onnxscript and onnxruntime: pip install onnx onnxscript "
                        "onnxruntime (in a checkout: pip install -e '.[onnx]')") from None
    with warnings.catch_warnings():  # torch 2.11's exporter trips over its own deprecated pytree check
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        torch.onnx.export(wrapper, (example,), str(temporary), input_names=["images"],
                          output_names=["probabilities"], dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                          dynamo=True, verbose=False, external_data=False)
    _describe_onnx(temporary, description)
    session = onnxruntime.InferenceSession(str(temporary), providers=["CPUExecutionProvider"])
    return _check("ONNX", expected, session.run(None, {"images": check.numpy()})[0])


def _describe_onnx(path: Path, description: dict) -> None:
    """What a server needs beside the graph, in the file's metadata: the output's class order and how an input
    image is prepared (`onnx.load(path).metadata_props`)."""
    import json

    import onnx

    graph = onnx.load(str(path))
    values = {"classes": ",".join(description["classes"]), "image_size": str(description["image_size"]),
              "channels": str(description.get("channels", 3)), "bands": ",".join(description.get("bands") or []),
              "preprocess": str(description.get("preprocess")), "normalisation": str(description.get("normalisation")),
              "stretch": json.dumps(description.get("stretch")), "output": "class probabilities, in classes' order"}
    for key, value in values.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))
