"""SDSS-like cutout simulator: the embedded default dataset.

Each object is rendered with GalSim in g, r and i at the SDSS pixel scale, with sky, Poisson and read
noise, then combined like SkyServer's JPEG cutouts (i, r, g -> R, G, B through the Lupton asinh stretch).
The populations are chosen to be as hard as the DR16 spectroscopic sample: many galaxies are small, faint
BOSS-like red galaxies, and QSOs are point sources that differ from stars by colour alone (the stellar locus
and the QSO locus cross near redshift 2.7). Every object draws from its own seed, so a catalog is the same
for a given seed whatever the worker count.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import UserError, sigterm_as_exit

CLASS_FRACTIONS = {"GALAXY": 0.57, "STAR": 0.32, "QSO": 0.11}  # DR16 spectroscopic proportions
IMAGE_PIXELS = 128
PIXEL_SCALE_ARCSEC = 0.396
BANDS = ("g", "r", "i")
# Electrons of a 0th-magnitude source are 10**(0.4*zp). These are ~2 mag deeper than one 54 s SDSS exposure
# so that the sky noise of the JPEGs matches SkyServer's (measured on ../shared/sdss_dr16); sky in mag/arcsec^2.
ZERO_POINT_MAG = {"g": 30.6, "r": 30.3, "i": 29.9}
SKY_MAG_PER_ARCSEC2 = {"g": 21.9, "r": 20.9, "i": 20.2}
READ_NOISE_ELECTRONS = 5.0
# SkyServer-like colour balance and stretch, tuned by eye against ../shared/sdss_dr16 (docs/montage.png).
LUPTON_BAND_SCALE = {"i": 1.0, "r": 1.15, "g": 1.6}
LUPTON_STRETCH = 1.2
LUPTON_Q = 8.0
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SimulatedObject:
    """The catalog row of one simulated object (magnitudes are the r band)."""

    objid: int
    cls: str
    r_mag: float
    g_r: float
    r_i: float
    redshift: float
    psf_fwhm_arcsec: float


def _require_galsim():
    try:
        import galsim  # noqa: F401
        from astropy.visualization import make_lupton_rgb  # noqa: F401
    except ImportError as error:
        raise UserError(
            f"the simulator needs GalSim and Astropy ({error.name} is missing): "
            "pip install 'stellar-dist[sim]'"
        ) from None


def _star_colours(rng: np.random.Generator) -> tuple[float, float]:
    """g-r and r-i on the stellar locus: F/G turnoff stars, K/M dwarfs, and blue white dwarfs/BHBs."""
    kind = rng.choice(3, p=[0.6, 0.28, 0.12])
    if kind == 0:
        g_r = rng.normal(0.35, 0.15)
    elif kind == 1:
        g_r = rng.uniform(0.8, 1.6)
    else:
        g_r = rng.uniform(-0.4, 0.05)
    r_i = 0.38 * g_r - 0.05 if g_r < 1.2 else 0.406 + 4.0 * (g_r - 1.2)
    return g_r, r_i + rng.normal(0, 0.06)


def _qso_colours(rng: np.random.Generator) -> tuple[float, float, float]:
    """Redshift, g-r and r-i for a QSO: blue power law, Lyman-alpha forest reddens g-r beyond z~2.2."""
    redshift = rng.uniform(0.4, 2.2) if rng.random() < 0.55 else rng.uniform(2.2, 3.6)
    g_r = 0.15 + max(0.0, redshift - 2.2) * 0.55 + rng.normal(0, 0.12)
    r_i = 0.12 + 0.05 * max(0.0, redshift - 2.5) + rng.normal(0, 0.1)
    return redshift, g_r, r_i


def draw_object(index: int, seed: int) -> tuple[SimulatedObject, dict]:
    """Draw the parameters of object `index` from its own seed; returns the catalog row and render params."""
    rng = np.random.default_rng([seed, index])
    cls = rng.choice(list(CLASS_FRACTIONS), p=list(CLASS_FRACTIONS.values()))
    psf_fwhm = float(rng.uniform(1.0, 1.8))
    shape: dict = {}
    if cls == "GALAXY":
        if rng.random() < 0.45:  # main sample: brighter, nearby, resolved
            r_mag, redshift = rng.uniform(14.5, 17.77), rng.uniform(0.02, 0.2)
            half_light_arcsec = float(np.exp(rng.normal(np.log(2.2), 0.4)) * 10 ** (-0.2 * (r_mag - 16.5)))
            red = rng.random() < 0.5
            g_r = rng.normal(0.85 if red else 0.5, 0.08) + 0.8 * redshift
            r_i = rng.normal(0.4 if red else 0.25, 0.06) + 0.3 * redshift
            bulge_fraction = rng.uniform(0.5, 1.0) if red else rng.uniform(0.0, 0.4)
        else:  # BOSS-like luminous red galaxies: faint, compact, red
            r_mag, redshift = rng.uniform(18.0, 20.3), rng.uniform(0.3, 0.7)
            half_light_arcsec = float(np.exp(rng.normal(np.log(0.9), 0.3)))
            g_r, r_i = rng.normal(1.55, 0.2), rng.normal(0.75, 0.15)
            bulge_fraction = rng.uniform(0.6, 1.0)
        shape = {
            "half_light_arcsec": max(0.3, half_light_arcsec),
            "bulge_fraction": float(bulge_fraction),
            "axis_ratio": float(rng.uniform(0.3, 1.0)),
            "position_angle_rad": float(rng.uniform(0, math.pi)),
        }
    elif cls == "STAR":
        r_mag, redshift = rng.uniform(14.5, 20.5), 0.0
        g_r, r_i = _star_colours(rng)
    else:
        redshift, g_r, r_i = _qso_colours(rng)
        r_mag = rng.uniform(17.5, 21.3)
    neighbours = []
    for _ in range(rng.poisson(2.0)):  # field objects: mostly faint, sometimes bright
        neighbours.append(
            {
                "offset_arcsec": rng.uniform(-24, 24, size=2).tolist(),
                "r_mag": float(rng.uniform(16.0, 22.5)),
                "g_r": float(rng.normal(0.9, 0.4)),
                "r_i": float(rng.normal(0.4, 0.2)),
                "half_light_arcsec": float(rng.uniform(0.3, 1.5)) if rng.random() < 0.4 else 0.0,
            }
        )
    row = SimulatedObject(
        objid=1237600000000000000 + (seed % 10_000) * 10_000_000 + index,
        cls=str(cls),
        r_mag=round(float(r_mag), 3),
        g_r=round(float(g_r), 3),
        r_i=round(float(r_i), 3),
        redshift=round(float(redshift), 4),
        psf_fwhm_arcsec=round(psf_fwhm, 3),
    )
    render = {
        "shape": shape,
        "neighbours": neighbours,
        "centre_offset_pixels": rng.uniform(-0.5, 0.5, size=2).tolist(),
        "noise_seed": int(rng.integers(1, 2**31 - 1)),
    }
    return row, render


def _band_mags(r_mag: float, g_r: float, r_i: float) -> dict[str, float]:
    return {"g": r_mag + g_r, "r": r_mag, "i": r_mag - r_i}


def _profile(galsim, half_light_arcsec: float, bulge_fraction: float, flux: float):
    if half_light_arcsec <= 0:
        return galsim.DeltaFunction(flux=flux)
    disk = galsim.Exponential(half_light_radius=half_light_arcsec, flux=flux * (1 - bulge_fraction))
    bulge = galsim.DeVaucouleurs(half_light_radius=0.6 * half_light_arcsec, flux=flux * bulge_fraction)
    return disk + bulge if bulge_fraction > 0 else disk


def render_object(row: SimulatedObject, render: dict) -> np.ndarray:
    """Render one object as a 128x128x3 uint8 SkyServer-like colour composite."""
    import galsim
    from astropy.visualization import make_lupton_rgb

    band_images = {}
    noise_rng = galsim.BaseDeviate(render["noise_seed"])
    for band_index, band in enumerate(BANDS):
        # Seeing is a little worse in g than in i, as in SDSS.
        psf = galsim.Moffat(beta=3.5, fwhm=row.psf_fwhm_arcsec * (1.08 - 0.04 * band_index))
        image = galsim.ImageF(IMAGE_PIXELS, IMAGE_PIXELS, scale=PIXEL_SCALE_ARCSEC)
        flux = 10 ** (-0.4 * (_band_mags(row.r_mag, row.g_r, row.r_i)[band] - ZERO_POINT_MAG[band]))
        shape = render["shape"]
        if shape:
            source = _profile(galsim, shape["half_light_arcsec"], shape["bulge_fraction"], flux)
            source = source.shear(q=shape["axis_ratio"], beta=shape["position_angle_rad"] * galsim.radians)
        else:
            source = galsim.DeltaFunction(flux=flux)
        galsim.Convolve(source, psf).drawImage(image=image, offset=render["centre_offset_pixels"])
        for neighbour in render["neighbours"]:
            mags = _band_mags(neighbour["r_mag"], neighbour["g_r"], neighbour["r_i"])
            neighbour_flux = 10 ** (-0.4 * (mags[band] - ZERO_POINT_MAG[band]))
            profile = _profile(galsim, neighbour["half_light_arcsec"], 0.3, neighbour_flux)
            offset = [value / PIXEL_SCALE_ARCSEC for value in neighbour["offset_arcsec"]]
            galsim.Convolve(profile, psf).drawImage(image=image, offset=offset, add_to_image=True)
        sky_per_pixel = 10 ** (-0.4 * (SKY_MAG_PER_ARCSEC2[band] - ZERO_POINT_MAG[band])) * PIXEL_SCALE_ARCSEC**2
        image.addNoise(galsim.CCDNoise(noise_rng, sky_level=sky_per_pixel, gain=1.0, read_noise=READ_NOISE_ELECTRONS))
        # Calibrated flux in nanomaggies (sky-subtracted), as SkyServer's composites use.
        band_images[band] = image.array * 10 ** (-0.4 * (ZERO_POINT_MAG[band] - 22.5))
    rgb = make_lupton_rgb(
        band_images["i"] * LUPTON_BAND_SCALE["i"],
        band_images["r"] * LUPTON_BAND_SCALE["r"],
        band_images["g"] * LUPTON_BAND_SCALE["g"],
        minimum=0.0,
        stretch=LUPTON_STRETCH,
        Q=LUPTON_Q,
    )
    return np.flipud(rgb)  # GalSim's y axis points up; image rows go down.


def _simulate_one(task: tuple[int, int, str]) -> SimulatedObject:
    from PIL import Image

    index, seed, out_dir = task
    row, render = draw_object(index, seed)
    path = Path(out_dir) / "images" / row.cls / f"{row.objid}.jpg"
    Image.fromarray(render_object(row, render)).save(path, quality=JPEG_QUALITY)
    return row


def simulate(out_dir: str | Path, num: int, seed: int = 0, workers: int = 0) -> Path:
    """Render `num` objects into `out_dir` (images/<Class>/<objid>.jpg + catalog.csv); returns the CSV path."""
    _require_galsim()
    out_dir = Path(out_dir)
    if num < 1 or workers < 0:
        raise UserError(f"--num must be at least 1 and --workers at least 0 (got {num}, {workers})")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"output folder {out_dir} is not empty: choose a new --out or remove it first")
    out_dir = out_dir.resolve()  # a symlink to an empty folder: fill its target
    with sigterm_as_exit():
        _render(out_dir, num, seed, workers)
    return out_dir / "catalog.csv"


def _render(out_dir: Path, num: int, seed: int, workers: int) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for cls in CLASS_FRACTIONS:
            (staging / "images" / cls).mkdir(parents=True)
        tasks = [(index, seed, str(staging)) for index in range(num)]
        workers = workers or os.cpu_count() or 1
        with get_context("spawn").Pool(workers) as pool:
            rows = list(tqdm(pool.imap(_simulate_one, tasks, chunksize=16), total=num, desc="simulate", unit="img"))
        with open(staging / "catalog.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image_path", "Class", "objid", "r_mag", "g_r", "r_i", "redshift", "psf_fwhm_arcsec"])
            for row in rows:
                writer.writerow(
                    [f"images/{row.cls}/{row.objid}.jpg", row.cls, row.objid, row.r_mag, row.g_r, row.r_i,
                     row.redshift if row.cls != "STAR" else "", row.psf_fwhm_arcsec]
                )
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
