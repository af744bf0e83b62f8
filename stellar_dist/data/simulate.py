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
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..core.errors import UserError, sigterm_as_exit
from ..core.files import discard_private, finish_private, private_folder
from ..core.outputs import OutputLock
from ..core.progress import progress
from .pack import ignore_interrupts

CLASS_FRACTIONS = {"GALAXY": 0.57, "STAR": 0.32, "QSO": 0.11}  # DR16 spectroscopic proportions
IMAGE_PIXELS = 128
PIXEL_SCALE_ARCSEC = 0.396
BANDS = ("g", "r", "i")  # the JPEG composite's bands
FITS_BANDS = ("u", "g", "r", "i", "z")  # --format fits: all five SDSS bands, one image HDU each
# Electrons of a 0th-magnitude source are 10**(0.4*zp). These are ~2 mag deeper than one 54 s SDSS exposure
# so that the sky noise of the JPEGs matches SkyServer's (measured on ../shared/sdss_dr16); sky in mag/arcsec^2.
# u and z keep SDSS's relative depth (about 1.7 and 1.5 mag shallower than g).
ZERO_POINT_MAG = {"u": 28.9, "g": 30.6, "r": 30.3, "i": 29.9, "z": 29.1}
SKY_MAG_PER_ARCSEC2 = {"u": 22.1, "g": 21.9, "r": 20.9, "i": 20.2, "z": 18.8}
FORMATS = ("jpg", "fits", "both")
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
    u_g: float = 0.0  # drawn from the object's second seed: the g, r, i draws (and JPEGs) are unchanged by them
    i_z: float = 0.0


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


def _outer_colours(cls: str, g_r: float, r_i: float, redshift: float, rng: np.random.Generator) -> tuple:
    """u-g and i-z: the UV excess of low-redshift QSOs (u-g ~ 0.2, against ~1 and more for stars of the same g-r)
    disappears above z ~ 2.5 as the Lyman forest enters u; M stars are red in i-z, QSOs flat."""
    if cls == "QSO":
        u_g = 0.2 + max(0.0, redshift - 2.3) * 1.6 + rng.normal(0, 0.12)
        i_z = 0.08 + rng.normal(0, 0.1)
    elif cls == "STAR":
        u_g = (0.35 if g_r < 0.05 else min(2.7, 0.75 + 1.4 * g_r)) + rng.normal(0, 0.1)
        i_z = 0.53 * r_i + rng.normal(0, 0.04)
    else:
        u_g = 1.3 + 0.6 * (g_r - 0.5) + rng.normal(0, 0.15)
        i_z = 0.25 + 0.3 * redshift + rng.normal(0, 0.08)
    return round(float(u_g), 3), round(float(i_z), 3)


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
    u_g, i_z = _outer_colours(str(cls), g_r, r_i, redshift, np.random.default_rng([seed, index, 7]))
    row = SimulatedObject(
        objid=1237600000000000000 + (seed % 10_000) * 10_000_000 + index,
        cls=str(cls),
        r_mag=round(float(r_mag), 3),
        g_r=round(float(g_r), 3),
        r_i=round(float(r_i), 3),
        redshift=round(float(redshift), 4),
        psf_fwhm_arcsec=round(psf_fwhm, 3),
        u_g=u_g,
        i_z=i_z,
    )
    render = {
        "shape": shape,
        "neighbours": neighbours,
        "centre_offset_pixels": rng.uniform(-0.5, 0.5, size=2).tolist(),
        "noise_seed": int(rng.integers(1, 2**31 - 1)),
    }
    return row, render


def _band_mags(r_mag: float, g_r: float, r_i: float, u_g: float = 0.0, i_z: float = 0.0) -> dict[str, float]:
    return {"u": r_mag + g_r + u_g, "g": r_mag + g_r, "r": r_mag, "i": r_mag - r_i, "z": r_mag - r_i - i_z}


def _profile(galsim, half_light_arcsec: float, bulge_fraction: float, flux: float):
    if half_light_arcsec <= 0:
        return galsim.DeltaFunction(flux=flux)
    disk = galsim.Exponential(half_light_radius=half_light_arcsec, flux=flux * (1 - bulge_fraction))
    bulge = galsim.DeVaucouleurs(half_light_radius=0.6 * half_light_arcsec, flux=flux * bulge_fraction)
    return disk + bulge if bulge_fraction > 0 else disk


def render_bands(row: SimulatedObject, render: dict, bands: tuple[str, ...] = BANDS) -> dict[str, np.ndarray]:
    """Calibrated images (nanomaggies, sky-subtracted, GalSim's y axis up) of one object in `bands`. Noise is drawn
    band by band in the given order: g, r, i first gives the JPEG path's exact g, r, i pixels."""
    import galsim

    band_images = {}
    noise_rng = galsim.BaseDeviate(render["noise_seed"])
    for band in bands:
        # Seeing is a little worse in the blue than in the red, as in SDSS.
        psf = galsim.Moffat(beta=3.5, fwhm=row.psf_fwhm_arcsec * (1.08 - 0.04 * (FITS_BANDS.index(band) - 1)))
        image = galsim.ImageF(IMAGE_PIXELS, IMAGE_PIXELS, scale=PIXEL_SCALE_ARCSEC)
        flux = 10 ** (-0.4 * (_band_mags(row.r_mag, row.g_r, row.r_i, row.u_g, row.i_z)[band] - ZERO_POINT_MAG[band]))
        shape = render["shape"]
        if shape:
            source = _profile(galsim, shape["half_light_arcsec"], shape["bulge_fraction"], flux)
            source = source.shear(q=shape["axis_ratio"], beta=shape["position_angle_rad"] * galsim.radians)
        else:
            source = galsim.DeltaFunction(flux=flux)
        galsim.Convolve(source, psf).drawImage(image=image, offset=render["centre_offset_pixels"])
        for neighbour in render["neighbours"]:
            mags = _band_mags(neighbour["r_mag"], neighbour["g_r"], neighbour["r_i"], 1.2, 0.3)
            neighbour_flux = 10 ** (-0.4 * (mags[band] - ZERO_POINT_MAG[band]))
            profile = _profile(galsim, neighbour["half_light_arcsec"], 0.3, neighbour_flux)
            offset = [value / PIXEL_SCALE_ARCSEC for value in neighbour["offset_arcsec"]]
            galsim.Convolve(profile, psf).drawImage(image=image, offset=offset, add_to_image=True)
        sky_per_pixel = 10 ** (-0.4 * (SKY_MAG_PER_ARCSEC2[band] - ZERO_POINT_MAG[band])) * PIXEL_SCALE_ARCSEC**2
        image.addNoise(galsim.CCDNoise(noise_rng, sky_level=sky_per_pixel, gain=1.0, read_noise=READ_NOISE_ELECTRONS))
        # Calibrated flux in nanomaggies (sky-subtracted), as SkyServer's composites use.
        band_images[band] = image.array * 10 ** (-0.4 * (ZERO_POINT_MAG[band] - 22.5))
    return band_images


def render_object(row: SimulatedObject, render: dict) -> np.ndarray:
    """Render one object as a 128x128x3 uint8 SkyServer-like colour composite."""
    from astropy.visualization import make_lupton_rgb

    band_images = render_bands(row, render, BANDS)
    with np.errstate(divide="ignore", invalid="ignore"):  # astropy divides 0 by 0 where a pixel is dark, then
        rgb = make_lupton_rgb(                            # masks it: the pixel is 0 either way, the warning noise
            band_images["i"] * LUPTON_BAND_SCALE["i"],
            band_images["r"] * LUPTON_BAND_SCALE["r"],
            band_images["g"] * LUPTON_BAND_SCALE["g"],
            minimum=0.0,
            stretch=LUPTON_STRETCH,
            Q=LUPTON_Q,
        )
    return np.flipud(rgb)  # GalSim's y axis points up; image rows go down.


def write_fits(path: Path, band_images: dict[str, np.ndarray]) -> None:
    """One image HDU per band (EXTNAME and FILTER = the band, float32 nanomaggies) after an empty primary HDU."""
    from astropy.io import fits

    hdus = [fits.PrimaryHDU()]
    for band, pixels in band_images.items():
        hdu = fits.ImageHDU(pixels.astype(np.float32), name=band)
        hdu.header["FILTER"], hdu.header["BUNIT"] = band, "nanomaggy"
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path)


def _simulate_one(task: tuple[int, int, str, str]) -> SimulatedObject:
    from PIL import Image

    index, seed, out_dir, image_format = task
    row, render = draw_object(index, seed)
    stem = Path(out_dir) / "images" / row.cls / str(row.objid)
    if image_format in ("jpg", "both"):
        Image.fromarray(render_object(row, render)).save(stem.with_suffix(".jpg"), quality=JPEG_QUALITY)
    if image_format in ("fits", "both"):
        band_images = render_bands(row, render, BANDS + ("u", "z"))  # g, r, i first: the JPEG's noise
        write_fits(stem.with_suffix(".fits"), {band: band_images[band] for band in FITS_BANDS})
    return row


def simulate(out_dir: str | Path, num: int, seed: int = 0, workers: int = 0, image_format: str = "jpg") -> Path:
    """Render `num` objects into `out_dir` (images/<Class>/<objid>.jpg + catalog.csv; `image_format` "fits": ugriz
    FITS files instead; "both": both, catalog.csv for the JPEGs and catalog_fits.csv for the FITS files of the
    same objects, same noise); returns the first CSV's path."""
    _require_galsim()
    out_dir = Path(out_dir)
    if num < 1 or workers < 0:
        raise UserError(f"--num must be at least 1 and --workers at least 0 (got {num}, {workers})")
    if image_format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)} (got {image_format})")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"output folder {out_dir} is not empty: choose a new --out or remove it first")
    out_dir = out_dir.resolve()  # a symlink to an empty folder: fill its target
    with OutputLock(out_dir, "stellar-dist simulate"), sigterm_as_exit():
        if out_dir.exists() and any(out_dir.iterdir()):  # filled while this one waited to start
            raise UserError(f"output folder {out_dir} is not empty: choose a new --out or remove it first")
        _render(out_dir, num, seed, workers, image_format)
    return out_dir / "catalog.csv"


def _render(out_dir: Path, num: int, seed: int, workers: int, image_format: str) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = private_folder(out_dir.parent, out_dir.name)  # 0700 while written; a killed run's is swept
    try:
        for cls in CLASS_FRACTIONS:
            (staging / "images" / cls).mkdir(parents=True)
        tasks = [(index, seed, str(staging), image_format) for index in range(num)]
        workers = workers or os.cpu_count() or 1
        with get_context("spawn").Pool(min(workers, num), initializer=ignore_interrupts) as pool:
            rows = []
            with progress(num, "simulate", "img") as bar:
                for row in pool.imap(_simulate_one, tasks, chunksize=16):
                    rows.append(row)
                    bar.update()
        suffixes = {"jpg": {"catalog.csv": "jpg"}, "fits": {"catalog.csv": "fits"},
                    "both": {"catalog.csv": "jpg", "catalog_fits.csv": "fits"}}[image_format]
        for name, suffix in suffixes.items():
            _write_catalog(staging / name, rows, suffix)
        finish_private(staging)  # the umask's permissions: others of the group can read the images
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        discard_private(staging)
        raise


def _write_catalog(path: Path, rows: list[SimulatedObject], suffix: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "Class", "objid", "r_mag", "g_r", "r_i", "u_g", "i_z", "redshift",
                         "psf_fwhm_arcsec"])
        for row in rows:
            writer.writerow([f"images/{row.cls}/{row.objid}.{suffix}", row.cls, row.objid, row.r_mag, row.g_r,
                             row.r_i, row.u_g, row.i_z, row.redshift if row.cls != "STAR" else "",
                             row.psf_fwhm_arcsec])
