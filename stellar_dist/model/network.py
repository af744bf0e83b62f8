"""Classifier = any torchvision backbone (its last Linear removed), optionally beside a photometric branch, + a
class head (+ a cluster head, DeepCluster)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from ..core.errors import PathNotFound, UserError
from ..data.photometry import feature_names, measure

WEIGHT_FILES = (".pt", ".pth", ".safetensors")  # a local state dict: torch.load(weights_only=True) or safetensors


def _strip_last_linear(model: nn.Module) -> int:
    """Replace the model's final nn.Linear with Identity; returns its input width (the feature dimension)."""
    name, last = None, None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name, last = module_name, module
    if last is None:
        raise UserError("model.arch has no final Linear layer: choose a torchvision classification model")
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
    return last.in_features


def _load_backbone(arch: str, weights: str) -> nn.Module:
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(f"model.arch={arch!r} is not a torchvision classification model "
                        "(e.g. mobilenet_v2, resnet18, efficientnet_b0, convnext_tiny)")
    if weights == "none" or Path(weights).suffix in WEIGHT_FILES:
        return torchvision.models.get_model(arch, weights=None)
    if weights != "imagenet":
        raise UserError(f"model.weights={weights!r} must be none, imagenet, or a path to a .pt/.pth/.safetensors state dict")
    try:
        return torchvision.models.get_model(arch, weights="DEFAULT")
    except Exception as error:  # no network, no cache: torchvision raises URLError/RuntimeError
        raise UserError(
            f"ImageNet weights for {arch} are not available ({type(error).__name__}): put them in the torch hub "
            "cache, pass model.weights=/path/to/weights.pth, or use model.weights=none"
        ) from None


def _adapt_first_conv(model: nn.Module, channels: int, pretrained: bool) -> None:
    """Give the model's first convolution `channels` inputs (N-band FITS). Pretrained RGB filters are averaged over
    R, G, B and spread over the N bands (x 3/N), so a flat image gives the same activations as in RGB."""
    name = next((module_name for module_name, module in model.named_modules() if isinstance(module, nn.Conv2d)),
                None)
    if name is None:
        raise UserError("model.arch has no Conv2d layer to take the bands: choose a convolutional torchvision model")
    old = model.get_submodule(name)
    if old.in_channels == channels:
        return
    if old.groups != 1:
        raise UserError(f"model.arch's first convolution is grouped: it cannot take {channels} bands; choose "
                        "another model.arch (resnet18, mobilenet_v2, efficientnet_b0, convnext_tiny)")
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    bias=old.bias is not None, padding_mode=old.padding_mode)
    if pretrained:
        with torch.no_grad():
            new.weight.copy_(old.weight.mean(1, keepdim=True).expand_as(new.weight) * (old.in_channels / channels))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)


class PhotometricBranch(nn.Module):
    """The aperture numbers of `data/photometry.measure`, read off the whole input image (no gradient: they are
    measurements), batch-normalised (their scales differ by orders of magnitude) and clipped (one artefact cannot
    dominate), then a two-layer MLP. A boosted tree on the same numbers rivals a CNN on these cutouts (issue 32):
    with the branch the network starts from what the tree knows and the CNN adds what apertures miss.
    `dropout`: in training, the share of samples whose branch output is zeroed, so that the CNN learns to classify
    on its own too (with ~100 labels the MLP otherwise memorises them and the head leans on it alone)."""

    def __init__(self, channels: int, width: int = 256, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout
        count = len(feature_names(channels))
        self.norm = nn.BatchNorm1d(count)
        self.mlp = nn.Sequential(nn.Linear(count, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
                                 nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True))
        self.width = width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        numbers = measure(images)
        features = self.mlp(self.norm(numbers).clamp(-10, 10))
        if self.training and self.dropout:
            keep = torch.rand(features.shape[0], 1, device=features.device) >= self.dropout
            features = features * keep
        return features


class StellarNet(nn.Module):
    def __init__(self, arch: str, num_classes: int, weights: str = "none", num_clusters: int = 0,
                 in_channels: int = 3, photometry: bool = False, centre_crop: int = 0,
                 photometry_dropout: float = 0.0):
        super().__init__()
        self.backbone = _load_backbone(arch, weights)
        self.centre_crop = centre_crop
        self.photometry = PhotometricBranch(in_channels, dropout=photometry_dropout) if photometry else None
        self.feature_dim = _strip_last_linear(self.backbone) + (self.photometry.width if photometry else 0)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.cluster_head = nn.Linear(self.feature_dim, num_clusters) if num_clusters else None
        if weights not in ("none", "imagenet"):
            self._load_local(Path(weights))
        # After loading: RGB weights (ImageNet or a local file) are adapted, not dropped.
        _adapt_first_conv(self.backbone, in_channels, pretrained=weights != "none")

    def _load_local(self, path: Path) -> None:
        if not path.exists():
            raise PathNotFound(f"model.weights file {path} does not exist: fix the path or use model.weights=none")
        if path.suffix == ".safetensors":  # a model folder's weights (a checkpoint's model/model.safetensors)
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
        own = self.backbone.state_dict()
        usable = {key.removeprefix("backbone."): value for key, value in state.items()
                  if key.removeprefix("backbone.") in own and own[key.removeprefix("backbone.")].shape == value.shape}
        if not usable:
            raise UserError(f"model.weights file {path} has no tensors matching the {type(self.backbone).__name__} "
                            "backbone: is it for another model.arch?")
        self.backbone.load_state_dict(usable, strict=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features of the (centre-cropped) image, joined by the photometric branch's of the whole
        image when the model has one."""
        seen = images
        if self.centre_crop and self.centre_crop < images.shape[-1]:
            start = (images.shape[-1] - self.centre_crop) // 2
            seen = images[..., start : start + self.centre_crop, start : start + self.centre_crop]
        features = self.backbone(seen)
        return features if self.photometry is None else torch.cat([features, self.photometry(images)], dim=1)

    def forward(self, images: torch.Tensor, with_clusters: bool = False):
        """Class logits; with `with_clusters`, (class logits, cluster logits) from one backbone pass. (A flag, not
        a second method, so that DDP's forward hooks see every call.)"""
        features = self.features(images)
        if not with_clusters:
            return self.classifier(features)
        return self.classifier(features), self.cluster_head(features)

    @torch.no_grad()
    def reset_cluster_head(self, generator: torch.Generator) -> None:
        """Fresh cluster head after each re-clustering (the cluster ids mean something new), same on all ranks."""
        bound = 1 / self.feature_dim**0.5
        self.cluster_head.weight.copy_(torch.rand(self.cluster_head.weight.shape, generator=generator) * 2 * bound
                                       - bound)
        self.cluster_head.bias.zero_()


def build_model(arch: str, num_classes: int, *, weights: str = "none", num_clusters: int = 0, in_channels: int = 3,
                channels_last: bool = False, photometry: bool = False, centre_crop: int = 0,
                photometry_dropout: float = 0.0) -> StellarNet:
    """The one way a network is made: for training (session), and for every command that loads one (the model
    folder reader), in the run's layout (channels_last: the convolutions run NHWC whatever the input's layout,
    and a loaded model evaluates to the same numbers as in its run)."""
    model = StellarNet(arch, num_classes, weights, num_clusters=num_clusters, in_channels=in_channels,
                       photometry=photometry, centre_crop=centre_crop, photometry_dropout=photometry_dropout)
    return model.to(memory_format=torch.channels_last) if channels_last else model
