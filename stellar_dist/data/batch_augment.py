"""The fast path's views: weak and strong views of a whole uint8 batch, made on the training device in a few
batched ops (`data.augment_on=device`), so dataloader workers only read and decode.

Every random parameter comes from a counter-based hash of (the sample's seed, the view, the parameter's number):
a sample's views depend on its own seed only, as on the CPU path, so exact resume survives (the stream hands each
sample the seed of its position). The ops, their parameter ranges and the op lists of each strong view come from
the one table in `augment.py` (PARAMETERS, CUTOUT_FRACTION, STRONG_OPS), the "evidence" view included; only the
random numbers are drawn differently: the two paths give different, equally distributed views of a sample
(tests/test_augment.py compares the distributions).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .augment import (
    CUTOUT_FRACTION,
    CUTOUT_TRIES,
    KEEP_FRACTION,
    MAX_SHIFT_FRACTION,
    PARAMETERS,
    STRONG_OPS,
)

_GOLDEN = 0x9E3779B97F4A7C15 - 2**64  # splitmix64 constants as signed 64-bit integers
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _hash(x: torch.Tensor) -> torch.Tensor:
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def uniform(seeds: torch.Tensor, salt: int, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Uniform [0, 1) float32 numbers: one per sample (and per element of `shape`), a pure function of (seed,
    salt, element index)."""
    count = math.prod(shape)
    index = torch.arange(count, device=seeds.device, dtype=torch.int64)
    keys = _hash(seeds.long()[:, None] * 1_000_003 + salt)[:, None] + index[None] * _GOLDEN
    bits = _shift_right(_hash(keys), 40)  # 24 random bits: exact in float32
    return (bits.float() / float(1 << 24)).reshape(len(seeds), *shape)


def normal(seeds: torch.Tensor, salt: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal numbers (Box-Muller on two uniform fields)."""
    radius = torch.sqrt(-2 * torch.log1p(-uniform(seeds, salt, shape)))
    return radius * torch.cos(2 * math.pi * uniform(seeds, salt + 1, shape))


def _select(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], new, old)


def weak(images: torch.Tensor, seeds: torch.Tensor, salt: int = 0, max_shift_fraction: float = MAX_SHIFT_FRACTION):
    """Flips, a multiple of 90 degrees (square images), a shift of up to `max_shift_fraction` of the side with
    reflect padding (none at 0)."""
    draws = uniform(seeds, salt, (5,))
    images = _select(draws[:, 0] < 0.5, images.flip(-1), images)
    images = _select(draws[:, 1] < 0.5, images.flip(-2), images)
    turns = (draws[:, 2] * 4).long()
    for k in (1, 2, 3):
        images = _select(turns == k, torch.rot90(images, k, dims=(-2, -1)), images)
    batch, _, size, _ = images.shape
    pad = max(1, round(size * max_shift_fraction)) if max_shift_fraction else 0
    if not pad:
        return images
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    top, left = ((draws[:, 3 + axis] * (2 * pad + 1)).long() for axis in (0, 1))
    rows = (top[:, None] + torch.arange(size, device=images.device))[:, :, None]
    columns = (left[:, None] + torch.arange(size, device=images.device))[:, None, :]
    samples = torch.arange(batch, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[samples, rows, columns].permute(0, 3, 1, 2)


def _rotate(images, degrees, seeds, salt):
    angle = degrees * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _psf_blur(images, sigma, seeds, salt):
    radius = 5
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # [B, 11], one 1-D Gaussian per sample
    batch, channels, height, width = images.shape
    flat = images.reshape(1, batch * channels, height, width)
    weight = kernel.repeat_interleave(channels, 0)[:, None]
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), weight[:, :, None, :], groups=batch * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), weight[:, :, :, None], groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


def _noise(images, std, seeds, salt):
    return images + std[:, None, None, None] * normal(seeds, salt, tuple(images.shape[1:]))


def _contrast(images, factor, seeds, salt):
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) * factor[:, None, None, None] + mean


APPLY = {  # name (augment.PARAMETERS) -> op(images, values, seeds, salt), one value per sample
    "rotate": _rotate,
    "psf_blur": _psf_blur,
    "noise": _noise,
    "sky_noise": _noise,
    "flux_noise": _noise,
    "brightness": lambda images, factor, seeds, salt: images * factor[:, None, None, None],
    "contrast": _contrast,
    "gamma": lambda images, exponent, seeds, salt: images.clamp(0, 1) ** exponent[:, None, None, None],
}


def _cutout_side(images, draw):
    low, high = CUTOUT_FRACTION
    return (images.shape[-1] * (low + (high - low) * draw)).long().clamp(min=1)


def _cutout(images, seeds, salt, trace: dict | None = None):
    draws = uniform(seeds, salt, (3,))
    size = images.shape[-1]
    side = _cutout_side(images, draws[:, 0])
    centre_y, centre_x = (draws[:, 1] * size).long(), (draws[:, 2] * size).long()
    position = torch.arange(size, device=images.device)
    inside_y = (position[None] >= centre_y[:, None] - side[:, None] // 2) & (position[None] <= centre_y[:, None]
                                                                             + side[:, None] // 2)
    inside_x = (position[None] >= centre_x[:, None] - side[:, None] // 2) & (position[None] <= centre_x[:, None]
                                                                             + side[:, None] // 2)
    hole = inside_y[:, :, None] & inside_x[:, None, :]
    if trace is not None:
        trace["cutout"] = CUTOUT_FRACTION[0] + (CUTOUT_FRACTION[1] - CUTOUT_FRACTION[0]) * draws[:, 0]
    return images.masked_fill(hole[:, None], 0.0)


def _cutout_off_centre(images, seeds, salt, trace: dict | None = None, keep_fraction: float = KEEP_FRACTION,
                       tries: int = CUTOUT_TRIES):
    """augment.cutout_off_centre, batched: the first of `tries` seeded positions that misses the central box."""
    size = images.shape[-1]
    keep_low, keep_high = (size - size * keep_fraction) / 2, (size + size * keep_fraction) / 2
    draws = uniform(seeds, salt, (1 + 2 * tries,))
    side = _cutout_side(images, draws[:, 0]).clamp(max=int(keep_low))[:, None]
    top, left = ((draws[:, 1 + axis * tries : 1 + (axis + 1) * tries] * (size - side + 1)).long() for axis in (0, 1))
    misses = (top + side <= keep_low) | (top >= keep_high) | (left + side <= keep_low) | (left >= keep_high)
    first = misses.float().argmax(1, keepdim=True)
    top, left, found = top.gather(1, first), left.gather(1, first), misses.any(1)
    position = torch.arange(size, device=images.device)[None]
    inside_y = (position >= top) & (position < top + side)
    inside_x = (position >= left) & (position < left + side)
    hole = inside_y[:, :, None] & inside_x[:, None, :] & found[:, None, None]
    if trace is not None:
        trace["cutout"] = CUTOUT_FRACTION[0] + (CUTOUT_FRACTION[1] - CUTOUT_FRACTION[0]) * draws[:, 0]
    return images.masked_fill(hole[:, None], 0.0)


def strong(images: torch.Tensor, seeds: torch.Tensor, salt: int = 0, num_ops: int = 2, kind: str = "sky",
           trace: dict | None = None, max_shift_fraction: float = MAX_SHIFT_FRACTION) -> torch.Tensor:
    """Weak view, then `num_ops` of STRONG_OPS[kind] per sample (each op kept only for the samples that drew it),
    then Cutout (anywhere for "sky", off the centre for "evidence"); clamped to [0, 1] before Cutout, as
    augment.strong. `trace`: a dict that receives {op: the values drawn} (for tests)."""
    ops = STRONG_OPS[kind, False]
    images = weak(images, seeds, salt, max_shift_fraction)
    scores = uniform(seeds, salt + 10, (len(ops),))
    chosen = scores.argsort(dim=1)[:, :num_ops]
    draws = uniform(seeds, salt + 11, (len(ops),))
    for index, name in enumerate(ops):
        # Every op runs on the whole batch and `where` keeps it for the samples that drew it: no data-dependent
        # shapes, so no host-device synchronisation (len(ops) / num_ops times the arithmetic, cheap on a GPU).
        drew = (chosen == index).any(1)
        low, high = PARAMETERS[name]
        values = low + (high - low) * draws[:, index]
        if trace is not None:
            trace[name] = values[drew]
        images = torch.where(drew[:, None, None, None], APPLY[name](images, values, seeds, salt + 20 + index), images)
    cut = _cutout if kind == "sky" else _cutout_off_centre
    return cut(images.clamp(0, 1), seeds, salt + 30, trace)


def make_views(images_uint8: torch.Tensor, seeds: torch.Tensor, views: tuple[str, ...],
               kind: str = "sky", max_shift_fraction: float = MAX_SHIFT_FRACTION) -> dict[str, torch.Tensor]:
    """{view name: float views in [0, 1]} of a uint8 [B, 3, H, W] batch; the i-th view uses salts 100 i + ...,
    so "weak" and the weak part of "strong" differ, as two separate draws do on the CPU path. `kind`: the
    strong view (data.strong_view)."""
    images = images_uint8.float().div_(255.0)
    return {view: strong(images, seeds, salt=100 * index, kind=kind, max_shift_fraction=max_shift_fraction)
            if view.startswith("strong") else weak(images, seeds, salt=100 * index,
                                                   max_shift_fraction=max_shift_fraction)
            for index, view in enumerate(views)}
