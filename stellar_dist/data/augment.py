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

MAX_SHIFT_FRACTION = 0.125  # the weak view's default random shift (data.max_shift_fraction), fraction of the side


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def weak(image: torch.Tensor, generator: torch.Generator,
         max_shift_fraction: float = MAX_SHIFT_FRACTION) -> torch.Tensor:
    """Flips, a multiple of 90 degrees, and a shift of up to `max_shift_fraction` of the side (reflect padding;
    none at 0)."""
    flips = torch.rand(2, generator=generator)
    if flips[0] < 0.5:
        image = image.flip(-1)
    if flips[1] < 0.5:
        image = image.flip(-2)
    image = torch.rot90(image, int(torch.randint(4, (), generator=generator)), dims=(-2, -1))
    size = image.shape[-1]
    pad = max(1, int(round(size * max_shift_fraction))) if max_shift_fraction else 0
    if not pad:
        return image
    padded = F.pad(image.unsqueeze(0), (pad, pad, pad, pad), mode="reflect").squeeze(0)
    top, left = (int(value) for value in torch.randint(2 * pad + 1, (2,), generator=generator))
    return padded[:, top : top + size, left : left + size]


# The one definition of the strong ops, shared with the batched device path (batch_augment.py): each op's one
# random parameter is value = low + (high - low) * u, u uniform in [0, 1).
PARAMETERS = {
    "rotate": (0.0, 360.0),  # degrees
    "psf_blur": (0.3, 1.5),  # Gaussian sigma in pixels: a seeing change of up to ~1.4 arcsec FWHM at 0.4"/px
    "noise": (0.0, 0.06),  # std of added Gaussian noise, pixels in [0, 1]
    "sky_noise": (0.0, 0.02),  # the same at sky level: 0.06 buries a faint source's colour
    "flux_noise": (0.0, 0.5),  # N-band flux: std in units of each band's sky noise (up to half the sky's own)
    "brightness": (0.6, 1.4),  # flux scale, every band alike (colour ratios kept)
    "contrast": (0.6, 1.4),  # scale of the deviations from the image mean
    "gamma": (0.6, 1.6),  # exponent on [0, 1] pixels
}
CUTOUT_FRACTION = (0.1, 0.5)  # side of Cutout's blank square, as a fraction of the image side
KEEP_FRACTION = 0.25  # the "evidence" view's Cutout never touches the central KEEP_FRACTION x side box
CUTOUT_TRIES = 8  # seeded positions tried for that Cutout before giving it up
# The ops a strong view draws from, by (data.strong_view, N-band flux). "evidence" keeps what separates the
# classes: the colour ratios between bands (gamma and contrast change them) and the light profile against the
# PSF (blur changes it); on N-band flux only photometric ops apply, without clamping.
STRONG_OPS = {
    ("sky", False): ("rotate", "psf_blur", "noise", "brightness", "contrast", "gamma"),
    ("evidence", False): ("rotate", "sky_noise", "brightness"),
    ("sky", True): ("rotate", "psf_blur", "flux_noise", "brightness"),
    ("evidence", True): ("rotate", "flux_noise", "brightness"),
}


def _blur(image, sigma):
    kernel = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def _add_noise(image, std, generator):
    return image + std * torch.randn(image.shape, generator=generator)


def _contrast(image, factor):
    mean = image.mean()
    return (image - mean) * factor + mean


APPLY = {  # name -> op(image, value, generator)
    "rotate": lambda image, value, generator: TF.rotate(image, value, interpolation=TF.InterpolationMode.BILINEAR),
    "psf_blur": lambda image, value, generator: _blur(image, value),
    "noise": _add_noise,
    "sky_noise": _add_noise,
    "flux_noise": _add_noise,
    "brightness": lambda image, value, generator: image * value,
    "contrast": lambda image, value, generator: _contrast(image, value),
    "gamma": lambda image, value, generator: image.clamp(0, 1) ** value,
}


def cutout(image: torch.Tensor, generator: torch.Generator, trace: list | None = None) -> torch.Tensor:
    """Blank a square of up to half the side (FixMatch's Cutout), centred anywhere."""
    size = image.shape[-1]
    fraction = _uniform(generator, *CUTOUT_FRACTION)
    if trace is not None:
        trace.append(("cutout", fraction))
    side = max(1, int(size * fraction))
    centre_y, centre_x = (int(value) for value in torch.randint(size, (2,), generator=generator))
    image = image.clone()
    image[:, max(0, centre_y - side // 2) : centre_y + side // 2 + 1,
          max(0, centre_x - side // 2) : centre_x + side // 2 + 1] = 0.0
    return image


def cutout_off_centre(image: torch.Tensor, generator: torch.Generator, trace: list | None = None,
                      keep_fraction: float = KEEP_FRACTION) -> torch.Tensor:
    """Cutout that never touches the central `keep_fraction` x side box, where the target object is.

    The square is placed uniformly among the positions that miss the box (a few seeded tries, else no cutout)."""
    size = image.shape[-1]
    keep_low, keep_high = (size - size * keep_fraction) / 2, (size + size * keep_fraction) / 2
    fraction = _uniform(generator, *CUTOUT_FRACTION)
    if trace is not None:
        trace.append(("cutout", fraction))
    side = min(max(1, int(size * fraction)), int(keep_low))  # fits beside the box
    for _ in range(CUTOUT_TRIES):
        top, left = (int(value) for value in torch.randint(size - side + 1, (2,), generator=generator))
        misses = top + side <= keep_low or top >= keep_high or left + side <= keep_low or left >= keep_high
        if misses:
            image = image.clone()
            image[:, top : top + side, left : left + side] = 0.0
            return image
    return image


def strong(image: torch.Tensor, generator: torch.Generator, num_ops: int = 2, kind: str = "sky",
           flux: bool = False, trace: list | None = None,
           max_shift_fraction: float = MAX_SHIFT_FRACTION) -> torch.Tensor:
    """Weak view, then `num_ops` random ops of STRONG_OPS[kind, flux] (RandAugment-style), then Cutout.

    kind "sky": all astronomy-aware ops, Cutout anywhere (FixMatch's recipe; it can erase the target or change
    its colours). kind "evidence": only ops that keep colour ratios and the profile, Cutout off the centre.
    `flux`: the image is N-band flux in noise units (not [0, 1]): photometric ops only, no clamping; Cutout
    sets the sky level (0). `trace`: a list that receives (op, parameter) as drawn (for tests)."""
    ops = STRONG_OPS[kind, flux]
    image = weak(image, generator, max_shift_fraction)
    for index in torch.randperm(len(ops), generator=generator)[:num_ops].tolist():
        name = ops[index]
        value = _uniform(generator, *PARAMETERS[name])
        if trace is not None:
            trace.append((name, value))
        image = APPLY[name](image, value, generator)
    return (cutout if kind == "sky" else cutout_off_centre)(image if flux else image.clamp(0, 1), generator, trace)
