"""Cheap photometric numbers measured on the packed images themselves: no training, no labels.

`measure(images)` turns a batch (B x C x S x S: 8-bit images as pixels / 255, or N-band flux in noise units) into
a few dozen numbers per object: per band the background-subtracted flux in four circular apertures (asinh, so
that faint and bright objects both spread), the colours between neighbouring bands in each aperture, the
concentration (inner over outer flux), the central peak; over all bands the size and elongation from second
moments and the brightest pixel outside the object (a neighbour or an artefact). Stars, quasars and galaxies
differ in exactly these: colour, point-like or extended. They are what `stellar-dist select` clusters when no
model has been trained yet, and what the bench's boosted-tree baseline reads.
"""

from __future__ import annotations

import numpy as np
import torch

APERTURE_FRACTIONS = (0.025, 0.045, 0.07, 0.11, 0.17, 0.25)  # aperture radii as fractions of the image side
# (64 px: 1.6 to 16 px)
PROFILE_FRACTIONS = tuple(np.linspace(0.015, 0.3, 20))  # the fine cumulative profile: half-light and 90% radii
BORDER_FRACTION = 0.1  # the outer 10% of each side: the sky estimate
SOFTENING = 0.01  # asinh softening of fluxes, in the images' units (8-bit: 1% of full scale per pixel)


def feature_names(channels: int) -> list[str]:
    """The name of each number `measure` returns, in order."""
    names = [f"flux_b{band}_r{index}" for band in range(channels) for index in range(len(APERTURE_FRACTIONS))]
    names += [f"colour_b{band}-b{band + 1}_r{index}" for band in range(channels - 1)
              for index in range(len(APERTURE_FRACTIONS))]
    names += [f"share_b{band}_r{index}" for band in range(channels) for index in range(len(APERTURE_FRACTIONS))]
    names += [f"concentration_b{band}" for band in range(channels)] + [f"peak_b{band}" for band in range(channels)]
    names += [f"profile_r{index}" for index in range(len(PROFILE_FRACTIONS))]
    return names + ["size", "elongation", "neighbour_peak", "half_light_radius", "radius_90", "noise",
                    "signal_to_noise", "saturated"]


def _grid(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    centre = (size - 1) / 2
    y, x = torch.meshgrid(torch.arange(size, device=device, dtype=torch.float32) - centre,
                          torch.arange(size, device=device, dtype=torch.float32) - centre, indexing="ij")
    return x, y, (x.square() + y.square()).sqrt()


@torch.no_grad()
def measure(images: torch.Tensor) -> torch.Tensor:
    """B x C x S x S images -> B x len(feature_names(C)) float32 numbers (see the module docstring)."""
    images = images.float()
    batch, channels, size, _ = images.shape
    x, y, radius = _grid(size, images.device)
    border = max(1, round(size * BORDER_FRACTION))
    ring = torch.ones(size, size, dtype=torch.bool, device=images.device)
    ring[border:-border, border:-border] = False
    sky = images[:, :, ring].median(dim=2).values  # B x C: robust to a star on the edge
    signal = images - sky[:, :, None, None]
    radii = [max(1.0, fraction * size) for fraction in APERTURE_FRACTIONS]
    fluxes = torch.stack([signal[:, :, radius <= r].sum(dim=2) for r in radii], dim=2)  # B x C x apertures
    magnitudes = torch.asinh(fluxes / SOFTENING)
    colours = magnitudes[:, :-1] - magnitudes[:, 1:]  # (C - 1) x apertures
    # each band's share of the flux in an aperture: colour that stays finite for the faintest objects
    shares = fluxes.clamp(min=0) / (fluxes.clamp(min=0).sum(dim=1, keepdim=True) + SOFTENING)
    inner, outer = fluxes[:, :, 1].clamp(min=0), fluxes[:, :, -1].clamp(min=0)
    concentration = inner / (outer + SOFTENING * radii[-1] ** 2)
    centre = radius <= max(1.0, size * 0.03)
    peak = torch.asinh(signal[:, :, centre].amax(dim=2) / SOFTENING)
    total = signal.clamp(min=0).sum(dim=1)  # B x S x S, all bands
    weight = total * (radius <= radii[-1])
    norm = weight.sum(dim=(1, 2)).clamp(min=1e-6)
    xx = (weight * x.square()).sum(dim=(1, 2)) / norm
    yy = (weight * y.square()).sum(dim=(1, 2)) / norm
    xy = (weight * x * y).sum(dim=(1, 2)) / norm
    size_px = (xx + yy).clamp(min=0).sqrt() / size
    elongation = ((xx - yy).square() + 4 * xy.square()).sqrt() / (xx + yy).clamp(min=1e-6)
    neighbour = torch.asinh(total[:, radius > radii[-2]].amax(dim=1) / SOFTENING)
    profile, half_light, radius_90 = _profile(total, radius, size)
    noise = 1.4826 * (images[:, :, ring] - sky[:, :, None]).abs().median(dim=2).values.mean(dim=1)
    snr = fluxes[:, :, 2].sum(dim=1) / (noise * (radius <= radii[2]).sum().sqrt() * channels ** 0.5 + 1e-6)
    saturated = (images[:, :, centre] >= 0.98).float().mean(dim=(1, 2))
    return torch.cat([magnitudes.flatten(1), colours.flatten(1), shares.flatten(1), concentration, peak, profile,
                      size_px[:, None], elongation[:, None], neighbour[:, None], half_light[:, None],
                      radius_90[:, None], torch.asinh(noise[:, None] / SOFTENING), torch.asinh(snr[:, None]),
                      saturated[:, None]], dim=1).float()


def _profile(total: torch.Tensor, radius: torch.Tensor, size: int):
    """The all-band cumulative flux profile normalised by its outermost value, and the radii (as fractions of
    the side) holding half and 90% of it."""
    radii = torch.tensor(PROFILE_FRACTIONS, dtype=torch.float32) * size
    cumulative = torch.stack([total[:, radius <= r].sum(dim=1) for r in radii.tolist()], dim=1)
    profile = cumulative / cumulative[:, -1:].clamp(min=1e-6)
    fractions = torch.tensor(PROFILE_FRACTIONS, dtype=torch.float32)
    half = fractions[(profile < 0.5).sum(dim=1).clamp(max=len(fractions) - 1)]
    ninety = fractions[(profile < 0.9).sum(dim=1).clamp(max=len(fractions) - 1)]
    return profile, half, ninety


def standardize(features: torch.Tensor) -> torch.Tensor:
    """Each column to median 0 and unit interquartile range / 1.35 (a robust z-score: one saturated star or one
    artefact cannot squash a column); constant columns become 0."""
    median = features.median(dim=0).values
    quartiles = torch.quantile(features[: 200_000].float(), torch.tensor([0.25, 0.75]), dim=0)
    spread = (quartiles[1] - quartiles[0]) / 1.349
    spread = torch.where(spread > 1e-6, spread, torch.ones_like(spread))
    return ((features - median) / spread).clamp(-10, 10)
