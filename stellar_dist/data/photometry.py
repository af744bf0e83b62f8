"""Cheap photometric numbers measured on the images themselves: no training, no labels.

`measure(images)` turns a batch (B x C x S x S: 8-bit images as pixels / 255, or N-band flux in noise units) into
a few dozen numbers per object: per band the background-subtracted flux in six circular apertures (asinh, so
that faint and bright objects both spread), the colours between neighbouring bands in each aperture, each band's
share of the flux, the concentration (inner over outer flux), the central peak; over all bands the cumulative
profile, the size and elongation from second moments, half-light and 90% radii, the brightest pixel outside the
object (a neighbour or an artefact), the sky noise, a signal-to-noise and the saturated share of the centre.
Stars, quasars and galaxies differ in exactly these: colour, point-like or extended. They are what `stellar-dist
select` clusters when no model has been trained yet, what the photometric branch of the network reads
(`model.photometry`), and what the bench's boosted-tree baseline reads.

Every aperture is a fixed pixel mask, so a measurement is a matrix product and the sky a sort: the same numbers
on CPU and GPU, in a batch or one by one, and in an ONNX export of a network that measures its own input.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

APERTURE_FRACTIONS = (0.025, 0.045, 0.07, 0.11, 0.17, 0.25)  # aperture radii as fractions of the image side
# (64 px: 1.6 to 16 px)
PROFILE_FRACTIONS = tuple(np.linspace(0.015, 0.3, 20))  # the fine cumulative profile: half-light and 90% radii
BORDER_FRACTION = 0.1  # the outer 10% of each side: the sky estimate
CENTRE_FRACTION = 0.03  # the central disc (at least 1 px) where the peak and saturation are read
SOFTENING = 0.01  # asinh softening of fluxes, in the images' units (8-bit: 1% of full scale per pixel)
SATURATED = 0.98  # a pixel at 98% of full scale or more is saturated (8-bit images)


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


@lru_cache(maxsize=16)
def _geometry(size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The pixel masks of an S x S image, flattened to S*S: aperture and profile discs as float rows (a flux is
    a matrix product), the sky border, the centre and the outskirts as pixel indices. Built once per size and
    device: the network measures every batch, and `nonzero` would wait for a GPU at each step. Read-only."""
    centre = (size - 1) / 2
    axis = torch.arange(size, device=device, dtype=torch.float32) - centre
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    radius = (x.square() + y.square()).sqrt().flatten()
    border = max(1, round(size * BORDER_FRACTION))
    inside = torch.zeros(size, size, dtype=torch.bool, device=device)
    inside[border:-border, border:-border] = True
    apertures = [max(1.0, fraction * size) for fraction in APERTURE_FRACTIONS]
    profile = [fraction * size for fraction in PROFILE_FRACTIONS]
    return {"x": x.flatten(), "y": y.flatten(), "radii": torch.tensor(apertures, device=device),
            "apertures": torch.stack([(radius <= r).float() for r in apertures]),
            "profile": torch.stack([(radius <= r).float() for r in profile]),
            "fractions": torch.tensor(PROFILE_FRACTIONS, dtype=torch.float32, device=device),
            "sky": torch.nonzero(~inside.flatten()).flatten(),
            "centre": torch.nonzero(radius <= max(1.0, size * CENTRE_FRACTION)).flatten(),
            "outskirts": torch.nonzero(radius > apertures[-2]).flatten()}


def _lower_median(values: torch.Tensor) -> torch.Tensor:
    """The lower median along the last dimension (torch.median's choice), by a sort: exportable to ONNX."""
    return values.sort(dim=-1).values[..., (values.shape[-1] - 1) // 2]


@torch.no_grad()
def measure(images: torch.Tensor) -> torch.Tensor:
    """B x C x S x S images -> B x len(feature_names(C)) float32 numbers (see the module docstring), in float32
    even inside a bf16/fp16 autocast region (a bf16 aperture sum would shift colours by ~0.01)."""
    if torch.is_autocast_enabled(images.device.type):
        with torch.autocast(images.device.type, enabled=False):
            return _measure(images)
    return _measure(images)


def _measure(images: torch.Tensor) -> torch.Tensor:
    pixels = images.float().flatten(2).contiguous()  # B x C x S*S, whatever the layout: the same sums
    channels, size = int(images.shape[1]), int(images.shape[-1])  # fixed per model: constants when exported
    geometry = _geometry(size, images.device)
    ring = pixels.index_select(2, geometry["sky"])
    sky = _lower_median(ring)  # B x C: robust to a star on the edge
    signal = pixels - sky[:, :, None]
    fluxes = signal @ geometry["apertures"].T  # B x C x apertures
    magnitudes = torch.asinh(fluxes / SOFTENING)
    colours = magnitudes[:, :-1] - magnitudes[:, 1:]  # (C - 1) x apertures
    # each band's share of the flux in an aperture: colour that stays finite for the faintest objects
    shares = fluxes.clamp(min=0) / (fluxes.clamp(min=0).sum(dim=1, keepdim=True) + SOFTENING)
    inner, outer = fluxes[:, :, 1].clamp(min=0), fluxes[:, :, -1].clamp(min=0)
    concentration = inner / (outer + SOFTENING * geometry["radii"][-1] ** 2)
    peak = torch.asinh(signal.index_select(2, geometry["centre"]).amax(dim=2) / SOFTENING)
    total = signal.clamp(min=0).sum(dim=1)  # B x S*S, all bands
    weight = total * geometry["apertures"][-1]
    norm = weight.sum(dim=1).clamp(min=1e-6)
    x, y = geometry["x"], geometry["y"]
    xx, yy, xy = ((weight * term).sum(dim=1) / norm for term in (x.square(), y.square(), x * y))
    size_fraction = (xx + yy).clamp(min=0).sqrt() / size
    elongation = ((xx - yy).square() + 4 * xy.square()).sqrt() / (xx + yy).clamp(min=1e-6)
    neighbour = torch.asinh(total.index_select(1, geometry["outskirts"]).amax(dim=1) / SOFTENING)
    profile, half_light, radius_90 = _profile(total, geometry)
    noise = 1.4826 * _lower_median((ring - sky[:, :, None]).abs()).mean(dim=1)
    snr = fluxes[:, :, 2].sum(dim=1) / (noise * geometry["apertures"][2].sum().sqrt() * channels ** 0.5 + 1e-6)
    saturated = (pixels.index_select(2, geometry["centre"]) >= SATURATED).float().mean(dim=(1, 2))
    return torch.cat([magnitudes.flatten(1), colours.flatten(1), shares.flatten(1), concentration, peak, profile,
                      size_fraction[:, None], elongation[:, None], neighbour[:, None], half_light[:, None],
                      radius_90[:, None], torch.asinh(noise[:, None] / SOFTENING), torch.asinh(snr[:, None]),
                      saturated[:, None]], dim=1).float()


def _profile(total: torch.Tensor, geometry: dict[str, torch.Tensor]):
    """The all-band cumulative flux profile normalised by its outermost value, and the radii (as fractions of
    the side) holding half and 90% of it."""
    cumulative = total @ geometry["profile"].T
    profile = cumulative / cumulative[:, -1:].clamp(min=1e-6)
    fractions = geometry["fractions"]
    half = fractions[(profile < 0.5).sum(dim=1).clamp(max=len(PROFILE_FRACTIONS) - 1)]
    ninety = fractions[(profile < 0.9).sum(dim=1).clamp(max=len(PROFILE_FRACTIONS) - 1)]
    return profile, half, ninety


def standardize(features: torch.Tensor) -> torch.Tensor:
    """Each column to median 0 and unit interquartile range / 1.35 (a robust z-score: one saturated star or one
    artefact cannot squash a column); constant columns become 0."""
    median = features.median(dim=0).values
    quartiles = torch.quantile(features[: 200_000].float(), torch.tensor([0.25, 0.75]), dim=0)
    spread = (quartiles[1] - quartiles[0]) / 1.349
    spread = torch.where(spread > 1e-6, spread, torch.ones_like(spread))
    return ((features - median) / spread).clamp(-10, 10)
