"""Weak and strong views for FixMatch, made for sky images (no preferred "up", flux-like pixel values).

Every function takes a CHW float tensor (8-bit images: in [0, 1]; N-band FITS: flux in noise units, any number of
channels) and an explicit `torch.Generator`, so a sample's views depend
only on its own seed: streams can skip ahead on resume and still produce the same views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def weak(image: torch.Tensor, generator: torch.Generator, max_shift_fraction: float = 0.125) -> torch.Tensor:
    """Flips, a multiple of 90 degrees, and a shift of up to 12.5% (reflect padding)."""
    flips = torch.rand(2, generator=generator)
    if flips[0] < 0.5:
        image = image.flip(-1)
    if flips[1] < 0.5:
        image = image.flip(-2)
    image = torch.rot90(image, int(torch.randint(4, (), generator=generator)), dims=(-2, -1))
    size = image.shape[-1]
    pad = max(1, int(round(size * max_shift_fraction)))
    padded = F.pad(image.unsqueeze(0), (pad, pad, pad, pad), mode="reflect").squeeze(0)
    top, left = (int(value) for value in torch.randint(2 * pad + 1, (2,), generator=generator))
    return padded[:, top : top + size, left : left + size]


def _rotate(image, generator):
    return TF.rotate(image, _uniform(generator, 0, 360), interpolation=TF.InterpolationMode.BILINEAR)


def _psf_blur(image, generator):
    sigma = _uniform(generator, 0.3, 1.5)  # pixels: a seeing change of up to ~1.4 arcsec FWHM at 0.4"/px
    kernel = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def _noise(image, generator):
    return image + _uniform(generator, 0.0, 0.06) * torch.randn(image.shape, generator=generator)


def _brightness(image, generator):
    return image * _uniform(generator, 0.6, 1.4)


def _contrast(image, generator):
    mean = image.mean()
    return (image - mean) * _uniform(generator, 0.6, 1.4) + mean


def _gamma(image, generator):
    return image.clamp(0, 1) ** _uniform(generator, 0.6, 1.6)


STRONG_OPS = (_rotate, _psf_blur, _noise, _brightness, _contrast, _gamma)


def cutout(image: torch.Tensor, generator: torch.Generator, max_fraction: float = 0.5) -> torch.Tensor:
    """Blank a square of up to half the side (FixMatch's Cutout), centred anywhere."""
    size = image.shape[-1]
    side = max(1, int(size * _uniform(generator, 0.1, max_fraction)))
    centre_y, centre_x = (int(value) for value in torch.randint(size, (2,), generator=generator))
    image = image.clone()
    image[:, max(0, centre_y - side // 2) : centre_y + side // 2 + 1,
          max(0, centre_x - side // 2) : centre_x + side // 2 + 1] = 0.0
    return image


# Ops that keep what separates the classes: the colour ratios between bands (a flux scale multiplies every band
# alike; gamma and contrast do not) and the light profile against the PSF (blur changes it).
def _sky_noise(image, generator):
    return image + _uniform(generator, 0.0, 0.02) * torch.randn(image.shape, generator=generator)


EVIDENCE_OPS = (_rotate, _sky_noise, _brightness)  # noise at sky level: 0.06 buries a faint source's colour


def cutout_off_centre(image: torch.Tensor, generator: torch.Generator, max_fraction: float = 0.5,
                      keep_fraction: float = 0.25) -> torch.Tensor:
    """Cutout that never touches the central `keep_fraction` x side box, where the target object is.

    The square is placed uniformly among the positions that miss the box (a few seeded tries, else no cutout)."""
    size = image.shape[-1]
    keep_low, keep_high = (size - size * keep_fraction) / 2, (size + size * keep_fraction) / 2
    side = min(max(1, int(size * _uniform(generator, 0.1, max_fraction))), int(keep_low))  # fits beside the box
    for _ in range(8):
        top, left = (int(value) for value in torch.randint(size - side + 1, (2,), generator=generator))
        misses = top + side <= keep_low or top >= keep_high or left + side <= keep_low or left >= keep_high
        if misses:
            image = image.clone()
            image[:, top : top + side, left : left + side] = 0.0
            return image
    return image


# N-band images, in flux units of each band's sky noise, before the asinh stretch (bands.py): a flux scale
# multiplies every band alike (colours kept), noise is added sky noise (up to half the sky's own), blur is seeing.
def _flux_noise(image, generator):
    return image + _uniform(generator, 0.0, 0.5) * torch.randn(image.shape, generator=generator)


FLUX_OPS = (_rotate, _psf_blur, _flux_noise, _brightness)
EVIDENCE_FLUX_OPS = (_rotate, _flux_noise, _brightness)


def strong(image: torch.Tensor, generator: torch.Generator, num_ops: int = 2, kind: str = "sky",
           flux: bool = False) -> torch.Tensor:
    """Weak view, then `num_ops` random ops (RandAugment-style), then Cutout.

    kind "sky": all astronomy-aware ops, Cutout anywhere (FixMatch's recipe; it can erase the target or change
    its colours). kind "evidence": only ops that keep colour ratios and the profile, Cutout off the centre.
    `flux`: the image is N-band flux in noise units (not [0, 1]): photometric ops only, no clamping; Cutout
    sets the sky level (0)."""
    if flux:
        ops = FLUX_OPS if kind == "sky" else EVIDENCE_FLUX_OPS
    else:
        ops = STRONG_OPS if kind == "sky" else EVIDENCE_OPS
    image = weak(image, generator)
    for index in torch.randperm(len(ops), generator=generator)[:num_ops].tolist():
        image = ops[index](image, generator)
    return (cutout if kind == "sky" else cutout_off_centre)(image if flux else image.clamp(0, 1), generator)
