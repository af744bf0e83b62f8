"""One 8-bit input image as the shards hold it: read (refusing what would be clipped or is too large), centre
cropped or area-resized to the shards' size, and encoded. pack and predict prepare images with the same code."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..core.errors import UserError
from ..core.files import open_regular

MAX_INPUT_PIXELS = 8192 * 8192  # an input image (all its bands) larger than this is skipped and listed, never decoded
MIN_SIDE = 8  # pixels: a smaller image holds no object to classify
MAX_ASPECT = 4  # a cutout is about square; a strip is no cutout (its centre square would be all there is)


def check_image_shapes(shapes: list[tuple[int, ...]]) -> None:
    """Refuse, from the header alone, an image too large in total, too small, or too far from square."""
    total = sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes)
    if total > MAX_INPUT_PIXELS:
        raise ValueError(f"holds {total} pixels ({' + '.join('x'.join(map(str, shape)) for shape in shapes)}), over "
                         f"the {MAX_INPUT_PIXELS}-pixel cap: cut smaller cutouts around the objects")
    for shape in shapes:
        height, width = shape[-2:]
        if min(height, width) < MIN_SIDE or max(height, width) > MAX_ASPECT * min(height, width):
            raise ValueError(f"is {width}x{height} pixels: a cutout is at least {MIN_SIDE} pixels a side and at "
                             f"most {MAX_ASPECT}:1 in aspect")


# Pillow modes holding more than 8 bits per channel: convert("RGB") clips them to white without a word.
HIGH_BIT_DEPTH_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N", "I;32", "I;32B", "I;32L")


class UnsupportedImage(UserError):
    """An image pack cannot convert faithfully: the whole pack stops (skipping would drop the whole catalog)."""


def preprocess_image(path: str, image_size: int, mode: str) -> Image.Image:
    """Load an image as RGB at `image_size` x `image_size` (raises OSError/ValueError for unusable files)."""
    with open_regular(path) as handle, Image.open(handle) as image:
        if image.mode in HIGH_BIT_DEPTH_MODES:
            raise UnsupportedImage(
                f"image {path} has {image.mode} pixels (16/32-bit or float): pack reads 8-bit images only and would "
                "clip it; convert it to 8 bits with your own stretch (for example asinh) first")
        check_image_shapes([(image.size[1], image.size[0])])  # from the header, before decoding
        image.load()
        image = image.convert("RGB")
    width, height = image.size
    if mode == "crop":
        if min(width, height) < image_size:
            raise ValueError(f"image is {width}x{height}, smaller than --image-size {image_size}")
        left, top = (width - image_size) // 2, (height - image_size) // 2
        return image.crop((left, top, left + image_size, top + image_size))
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square if side == image_size else square.resize((image_size, image_size), Image.Resampling.BOX)


def encode(image: Image.Image, encoding: str) -> bytes:
    buffer = io.BytesIO()
    if encoding == "png":
        image.save(buffer, format="PNG", compress_level=1)
    elif encoding == "u8":  # H x W x 3 uint8 in NumPy's format: reading it is a copy, not a decode
        np.save(buffer, np.asarray(image, dtype=np.uint8), allow_pickle=False)
    else:
        image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()
