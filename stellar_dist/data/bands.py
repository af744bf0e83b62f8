"""FITS cutouts in any number of bands: reading, cropping/rebinning, the asinh stretch, and an RGB view for humans.

A catalog row points to its bands in one of two ways (see shards/README.md):
- one FITS file holding every band: one 2-D image HDU per band (found by EXTNAME or FILTER when the names match
  `--bands`, else taken in file order), or a single 3-D cube (bands x height x width);
- one FITS file per band: `image_path` contains `{band}` (e.g. `cutouts/{band}/1237.fits`), `--bands` names them.

Shards keep the cutout's pixel values (float32 .npy, lossless). The stretch pack measured is applied when reading:
first the pixels become sky-subtracted flux in units of the band's sky noise, `(x - sky) / softening` (where the
photometric augmentations act: a flux scale multiplies every band alike and keeps the colours, noise is noise),
then `asinh(flux) / scale`, so a typical bright centre is near 1 and the sky near 0 in every band.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import TYPE_CHECKING

import numpy as np

from ..core.errors import UserError
from ..core.files import open_regular
from .images import check_image_shapes

if TYPE_CHECKING:  # torch is imported where it is used: pack's worker processes never need it
    import pandas as pd
    import torch

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz", ".fits.gz", ".fit.gz", ".fts.gz")
STRETCH_SAMPLE = 256  # cutouts read to measure the stretch (seeded choice among the training rows)
MAX_HDUS = 64  # a cutout file has one HDU per band (or a cube); more is refused before reading any
MAX_BAD_FRACTION = 0.5  # a cutout with more non-finite pixels than this is unusable (off the survey's edge)


def is_fits(path: str) -> bool:
    return str(path).lower().endswith(FITS_SUFFIXES)


@contextlib.contextmanager
def _open(path: str):
    """The FITS file at `path`, a regular file (a FIFO or device is refused, not waited on)."""
    from astropy.io import fits

    with open_regular(path) as handle, fits.open(handle, memmap=False) as hdul:
        yield hdul


def _shape(hdu) -> tuple[int, ...]:
    """An HDU's data shape from its header alone (compressed HDUs: the image's), before any pixel is read."""
    naxis = int(hdu.header.get("NAXIS", 0))
    return tuple(int(hdu.header.get(f"NAXIS{axis}", 0)) for axis in range(naxis, 0, -1))


def _image_hdus(hdul) -> list:
    """The HDUs holding images of 2 or 3 axes; the file is refused before any data is read when it holds too
    many HDUs or pixels (a compressed FITS of a few MB can decompress to many GB) or odd image shapes."""
    hdus = []
    for index, hdu in enumerate(hdul):
        if index >= MAX_HDUS:
            raise ValueError(f"has more than {MAX_HDUS} HDUs: not a cutout")
        if hdu.is_image and len(_shape(hdu)) >= 2 and all(_shape(hdu)):
            hdus.append(hdu)
    check_image_shapes([_shape(hdu) for hdu in hdus])
    return hdus


def _hdu_name(hdu) -> str:
    name = hdu.header.get("EXTNAME") or hdu.header.get("FILTER") or ""
    return str(name).strip()


def infer_bands(path: str) -> tuple[str, ...]:
    """Band names of a multi-band FITS file: its HDUs' EXTNAME/FILTER, or band0, band1, ... for a cube."""
    if "{band}" in path:
        raise ValueError("image_path contains {band} (one file per band): pass --bands, e.g. --bands u,g,r,i,z")
    with _open(path) as hdul:
        hdus = _image_hdus(hdul)
        if len(hdus) == 1 and len(_shape(hdus[0])) == 3:
            return tuple(f"band{index}" for index in range(_shape(hdus[0])[0]))
        names = [_hdu_name(hdu) for hdu in hdus]
    if len(set(names)) == len(names) and all(names) and "PRIMARY" not in names:
        return tuple(names)
    return tuple(f"band{index}" for index in range(len(names)))


def input_pixel_scale(path: str) -> float | None:
    """Arcseconds per pixel of an input image: a FITS cutout's celestial WCS (None without one); 8-bit images
    carry none (pack --pixel-scale gives it)."""
    if not is_fits(path):
        return None
    try:
        from astropy.wcs import WCS
        from astropy.wcs.utils import proj_plane_pixel_scales

        with warnings.catch_warnings(), _open(path) as hdul:
            warnings.simplefilter("ignore")
            wcs = WCS(_image_hdus(hdul)[0].header).celestial
            return float(proj_plane_pixel_scales(wcs).mean() * 3600) if wcs.naxis == 2 and wcs.has_celestial else None
    except Exception:  # noqa: BLE001  (no usable WCS: the scale is unknown, not an error)
        return None


def packed_pixel_scale(first_path: str, options) -> float | None:
    """Arcseconds per packed pixel: the input scale (--pixel-scale, else a FITS cutout's WCS) for a centre crop;
    times input width / image size for an area resize (the first image's width: cutouts of one survey share it)."""
    scale = options.pixel_scale or input_pixel_scale(first_path)
    if not scale:
        return None
    if options.preprocess == "crop":
        return scale
    try:
        if is_fits(first_path):
            with _open(first_path) as hdul:
                width = _shape(_image_hdus(hdul)[0])[-1]
        else:
            from PIL import Image

            with open_regular(first_path) as handle, Image.open(handle) as image:
                width = image.size[0]
    except (OSError, ValueError, IndexError):
        return None
    return scale * width / options.image_size


def _select(hdus: list, bands: tuple[str, ...]) -> list[np.ndarray]:
    """The planes of `bands`: by HDU name (EXTNAME or FILTER); by position only when the HDUs carry no names (or
    the bands themselves are positional, band0, band1, ...): named bands that differ are never read as others."""
    names = [_hdu_name(hdu) for hdu in hdus]
    by_name = {name.casefold(): hdu for name, hdu in zip(names, hdus)}
    if all(band.casefold() in by_name for band in bands):
        return [by_name[band.casefold()].data for band in bands]
    named = [name for name in names if name and name.upper() != "PRIMARY"]
    if named and not all(re.fullmatch(r"band\d+", band) for band in bands):
        raise ValueError(f"names its bands {','.join(named)}, not {','.join(bands)}: a band would be read as "
                         "another; give the HDUs the bands' names (EXTNAME), or pack with --bands naming them")
    if len(hdus) == len(bands):
        return [hdu.data for hdu in hdus]
    found = ", ".join(_hdu_name(hdu) or "?" for hdu in hdus)
    raise ValueError(f"has {len(hdus)} image HDU(s) ({found}), not the {len(bands)} bands {','.join(bands)}")


def read_cutout(path: str, bands: tuple[str, ...]) -> np.ndarray:
    """The cutout as a (bands, height, width) float32 array; ValueError/OSError say why it cannot be used."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns about non-standard headers; the pixels are what we need
        if "{band}" in path:
            planes = []
            for band in bands:
                with _open(path.replace("{band}", band)) as hdul:
                    hdus = _image_hdus(hdul)
                    if not hdus or len(_shape(hdus[0])) != 2:
                        raise ValueError(f"{path.replace('{band}', band)} holds no 2-D image")
                    planes.append(np.asarray(hdus[0].data, dtype=np.float32))
        else:
            with _open(path) as hdul:
                hdus = _image_hdus(hdul)
                if len(hdus) == 1 and len(_shape(hdus[0])) == 3:
                    planes = list(np.asarray(hdus[0].data, dtype=np.float32))
                    if len(planes) != len(bands):
                        raise ValueError(f"is a cube of {len(planes)} planes, not the {len(bands)} bands "
                                         f"{','.join(bands)}")
                else:
                    planes = [np.asarray(data, dtype=np.float32) for data in _select(hdus, bands)]
    if any(plane.ndim != 2 or plane.shape != planes[0].shape for plane in planes):
        raise ValueError(f"bands differ in shape ({', '.join(str(plane.shape) for plane in planes)})")
    return _fill_bad(np.stack(planes))


def _fill_bad(cube: np.ndarray) -> np.ndarray:
    """Non-finite pixels (masked, off the edge) become the band's median; mostly-bad cutouts are refused."""
    bad = ~np.isfinite(cube)
    if bad.any():
        if bad.mean() > MAX_BAD_FRACTION:
            raise ValueError(f"{bad.mean():.0%} of its pixels are NaN or infinite")
        for band in range(cube.shape[0]):
            if bad[band].all():
                raise ValueError(f"band {band} has no finite pixel")
            cube[band][bad[band]] = np.median(cube[band][~bad[band]])
    return cube


def resize_cutout(cube: np.ndarray, image_size: int, mode: str) -> np.ndarray:
    """As pack does for 8-bit images: "crop" = centre crop at full resolution; "resize" = centre square,
    area-averaged to `image_size` (a rebinning: surface brightness is kept)."""
    height, width = cube.shape[-2:]
    if mode == "crop":
        if min(height, width) < image_size:
            raise ValueError(f"cutout is {width}x{height}, smaller than --image-size {image_size}")
        side = image_size
    else:
        side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = cube[:, top : top + side, left : left + side]
    if side == image_size:
        return np.ascontiguousarray(square, dtype=np.float32)
    if side % image_size == 0:  # an integer rebinning: block means
        factor = side // image_size
        blocks = square.astype(np.float64).reshape(len(cube), image_size, factor, image_size, factor)
        return blocks.mean(axis=(2, 4)).astype(np.float32)
    import torch
    import torch.nn.functional as F

    pooled = F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(square)).double(), image_size)
    return pooled.float().numpy()


def measure_stretch(cubes: list[np.ndarray]) -> dict:
    """Per band: sky (median), softening (the sky noise, 1.4826 x MAD) and scale (asinh of the 99.9th percentile
    of the sky-subtracted flux in noise units), measured on a sample of training cutouts."""
    stack = np.stack(cubes).astype(np.float64)
    sky, softening, scale = [], [], []
    for band in range(stack.shape[1]):
        pixels = stack[:, band].ravel()
        level = float(np.median(pixels))
        noise = 1.4826 * float(np.median(np.abs(pixels - level)))
        if not noise > 0:
            noise = float(pixels.std())
        if not noise > 0:
            raise ValueError(f"band {band} is constant over {len(cubes)} cutouts")
        sky.append(level)
        softening.append(noise)
        scale.append(float(np.arcsinh(max(np.percentile(pixels - level, 99.9) / noise, 1.0))))
    return {"kind": "asinh", "sky": sky, "softening": softening, "scale": scale, "measured_on": len(cubes)}


def fits_pixels(frame: pd.DataFrame, splits: np.ndarray, options) -> dict:
    """Bands and asinh stretch of a FITS catalog, measured on a seeded sample of its training rows (before
    anything is written; the test split, or a validation split and the set-aside test rows, are never looked at)."""
    training = np.flatnonzero(np.isin(splits, ("labeled", "unlabeled")))
    order = np.random.default_rng(options.seed + 2).permutation(training)
    paths = frame["image_path"].to_numpy()
    bands = tuple(band.strip() for band in options.bands.split(",") if band.strip())
    cubes, problems = [], []
    for row in order:
        try:
            bands = bands or infer_bands(paths[row])
            cubes.append(resize_cutout(read_cutout(paths[row], bands), options.image_size, options.preprocess))
        except UserError:  # a refusal of ours keeps its own message
            raise
        except (OSError, ValueError, TypeError, EOFError) as error:
            problems.append(f"{paths[row]}: {str(error).splitlines()[0][:200]}")
        if len(cubes) == STRETCH_SAMPLE or len(problems) > max(20, len(cubes)):
            break
    if len(cubes) < min(len(training), STRETCH_SAMPLE) // 2:
        raise UserError(f"{len(problems)} of the first {len(problems) + len(cubes)} FITS cutouts cannot be used, "
                        f"first {problems[0]}: fix the files (or --bands) before packing")
    try:
        stretch = measure_stretch(cubes)
    except ValueError as error:
        raise UserError(f"cannot measure the asinh stretch: {error} (bands {','.join(bands)}): "
                        "check that the cutouts hold sky images") from None
    return {"encoding": "npy", "channels": len(bands), "bands": list(bands), "stretch": stretch}


def input_pixels(frame: pd.DataFrame, splits: np.ndarray, options, catalog) -> dict:
    """What the shards will hold: 8-bit RGB images (PNG/JPEG) or, for a FITS catalog, N-band float arrays."""
    fits_rows = frame["image_path"].map(is_fits)
    if fits_rows.any() and not fits_rows.all():
        raise UserError(f"catalog {catalog} mixes FITS cutouts ({int(fits_rows.sum())}) and 8-bit images "
                        f"({int((~fits_rows).sum())}): pack each kind into its own shards")
    if fits_rows.all():
        return fits_pixels(frame, splits, options)
    if options.bands:
        raise UserError(f"--bands {options.bands} applies to FITS cutouts, but catalog {catalog} lists 8-bit images: "
                        "drop --bands")
    return {"encoding": options.encoding, "channels": 3}


class Stretch:
    """A manifest's per-band asinh stretch as [bands, 1, 1] tensors, made once: readers apply it to every sample."""

    def __init__(self, parameters: dict):
        import torch

        self.sky, self.softening, self.scale = (torch.tensor(parameters[key], dtype=torch.float32)[:, None, None]
                                                for key in ("sky", "softening", "scale"))
        self.channels = len(parameters["sky"])

    def to_noise_units(self, cube: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Sky-subtracted flux in units of each band's sky noise: where augmentations act."""
        import torch

        return (torch.as_tensor(cube, dtype=torch.float32) - self.sky) / self.softening

    def apply_asinh(self, flux: torch.Tensor) -> torch.Tensor:
        """What the network sees: asinh(flux in noise units) / scale, per band."""
        import torch

        return torch.asinh(flux) / self.scale


def to_rgb(image: torch.Tensor | np.ndarray, bands: list[str] | None = None) -> np.ndarray:
    """An 8-bit RGB picture of a stretched image for people (thumbnails, W&B): i, r, g as R, G, B when those bands
    exist, else the last three bands (one band: grey)."""
    import torch

    image = torch.as_tensor(image, dtype=torch.float32)
    names = [band.casefold() for band in (bands or [])]
    if image.shape[0] == 3 and not names:
        channels = [0, 1, 2]
    elif all(band in names for band in ("i", "r", "g")):
        channels = [names.index("i"), names.index("r"), names.index("g")]
    elif image.shape[0] >= 3:
        channels = list(range(image.shape[0]))[-3:][::-1]
    else:
        channels = [0, 0, 0]
    rgb = image[channels].clamp(0, 1).mul(255).round().to(torch.uint8)
    return rgb.permute(1, 2, 0).contiguous().numpy()
