"""Image and mask files: the one place that reads and writes them.

Reading decodes with Pillow, which refuses truncated files (OpenCV fills the missing part with
grey and says nothing), turns the pixels upright by the EXIF orientation tag, and converts
grayscale, palette, RGBA, CMYK, 16-bit and floating-point ([0, 1]) images to 8-bit RGB. Images
larger than `pixel_limit()` (100 megapixels, or the environment variable `PCONV_MAX_PIXELS`)
are refused from their header, before any decoding. Writing uses OpenCV, which also
writes 16-bit colour PNGs.

Mask files are read with an explicit convention: `holes='white'` (pixels >= 128 are holes: the
NVIDIA test set, `write-test-set`, `inpaint.py`'s default) or `holes='black'` (the NVIDIA
training set, QD-IMD). In memory a mask is float32 (H, W, 1) with 1 = valid, 0 = hole; masks are
only ever resized nearest-neighbour, so they stay binary.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pconv_jax.convention import MASK_THRESHOLD

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_FILE_THRESHOLD = 128  # a mask file's pixel (0..255) counts as white from this value on

Holes = Literal["white", "black"]
HOLE_CONVENTIONS = ("white", "black")


# ----------------------------------------------------------------------------- reading

MAX_PIXELS = 100_000_000  # default limit on width × height of an image file read
MAX_PIXELS_VARIABLE = "PCONV_MAX_PIXELS"  # the environment variable that changes it


def pixel_limit() -> int:
    """The largest width × height an image file may have: `PCONV_MAX_PIXELS` if set, else
    `MAX_PIXELS`. A small file can hold a huge image (a 280 KB PNG decodes to 2.9 GB)."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not value:
        return MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"the environment variable {MAX_PIXELS_VARIABLE} must be a positive "
                         f"number of pixels (width × height), got {value!r}")
    return limit


class ImageTooLargeError(ValueError):
    """A readable image file above the pixel limit."""


def _check_size(path: str, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image {path!r} is {width}x{height} pixels, above the limit of {max_pixels} "
            f"pixels; to read it, raise the limit with the environment variable "
            f"{MAX_PIXELS_VARIABLE} (e.g. {MAX_PIXELS_VARIABLE}={width * height})")


def _decode(path: str, max_pixels: int | None = None) -> Image.Image:
    """Opens and fully decodes an image file, upright; clear errors for anything unusable.

    The size is checked from the header, before decoding: at most `max_pixels` pixels
    (default `pixel_limit()`).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r} does not exist")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated files would "
                           "pass as images; unset it")
    max_pixels = pixel_limit() if max_pixels is None else max_pixels
    corrupt = (OSError, SyntaxError, ValueError)  # SyntaxError: Pillow's broken-header error
    try:
        image = Image.open(path)  # reads the header only
    except UnidentifiedImageError as error:
        raise ValueError(f"cannot decode image {path!r}: not an image format Pillow "
                         f"reads") from error
    except Image.DecompressionBombError as error:  # Pillow's own limit, above ours by default
        raise ValueError(f"image {path!r} is too large to decode safely: {error} (Pillow's "
                         f"own limit, which {MAX_PIXELS_VARIABLE} cannot raise)") from error
    except corrupt as error:
        raise ValueError(f"cannot decode image {path!r}: the file is truncated or corrupt "
                         f"({error})") from error
    with image:
        _check_size(path, image.size, max_pixels)
        try:
            image.load()  # raises OSError on a truncated file
            return ImageOps.exif_transpose(image)
        except corrupt as error:
            raise ValueError(f"cannot decode image {path!r}: the file is truncated or corrupt "
                             f"({error})") from error


def _to_array(image: Image.Image, path: str) -> np.ndarray:
    """Pixels of a decoded image: uint8 (H, W) or (H, W, C); 16-bit gray scaled to 8 bits,
    floating-point gray (which must lie in [0, 1]) to 0..255."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, np.int64)
        return (np.clip(pixels, 0, 65535) >> 8).astype(np.uint8)
    if image.mode == "F":
        pixels = np.asarray(image, np.float32)
        if not np.isfinite(pixels).all():
            raise ValueError(f"image {path!r} has NaN or infinite pixel values; replace them "
                             f"with numbers in [0, 1]")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0 or high > 1:
            raise ValueError(f"image {path!r} has floating-point pixels from {low:g} to "
                             f"{high:g}; floating-point images must lie in [0, 1]: scale it, "
                             f"or save it with 8 or 16 bits")
        return np.round(pixels * 255).astype(np.uint8)
    return np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Converts a grayscale, RGBA or 16-bit array to uint8 RGB (H, W, 3) (alpha is dropped)."""
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def read_image(path: str, *, max_pixels: int | None = None) -> np.ndarray:
    """An image file as upright uint8 RGB (H, W, 3).

    `max_pixels`: the largest width × height read (checked before decoding); default
    `pixel_limit()`, which the environment variable `PCONV_MAX_PIXELS` sets.

    Raises:
      FileNotFoundError: there is no such file.
      ValueError: the file is not an image, is larger than `max_pixels`, is truncated or
        corrupt, or has floating-point pixels outside [0, 1].
    """
    return to_rgb_uint8(_to_array(_decode(path, max_pixels), path))


def decode_image_bytes(data: bytes) -> np.ndarray | None:
    """Encoded image bytes (a dataset record: JPEG, PNG, ...) as uint8 RGB (H, W, 3); None if
    they do not decode.

    OpenCV: the fast path for records a dataset builder has already checked. Files on disk go
    through `read_image`, which also refuses truncated files.
    """
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None or image.size == 0:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 (or uint16) pixels as float32 in [0, 1]."""
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    return np.asarray(image, np.float32) / scale


# ----------------------------------------------------------------------------- masks

def check_holes(holes: str) -> None:
    if holes not in HOLE_CONVENTIONS:
        raise ValueError(f"the mask hole colour must be 'white' or 'black', got {holes!r}")


def read_hole_map(path: str, holes: Holes = "white") -> np.ndarray:
    """A mask file as a boolean hole map (H, W), True = hole.

    `holes`: 'white' (pixels >= `MASK_FILE_THRESHOLD` are holes) or 'black' (the others are).
    Colour masks are converted to gray first.
    """
    check_holes(holes)
    pixels = _to_array(_decode(path), path)
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(np.ascontiguousarray(pixels[..., :3]), cv2.COLOR_RGB2GRAY)
    white = pixels >= MASK_FILE_THRESHOLD
    return white if holes == "white" else ~white


def resize_nearest(hole: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A boolean hole map resized nearest-neighbour to `size` (side, or (height, width))."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if hole.shape == (h, w):
        return hole
    return cv2.resize(hole.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0


def to_valid_mask(hole: np.ndarray) -> np.ndarray:
    """A boolean hole map (H, W) as the in-memory mask: float32 (H, W, 1), 1 = valid."""
    return (~np.asarray(hole, bool)).astype(np.float32)[..., None]


def hole_map(mask: np.ndarray) -> np.ndarray:
    """The boolean hole map of an in-memory mask (1 = valid): the network's own threshold."""
    mask = np.asarray(mask)
    return (mask[..., 0] if mask.ndim == 3 else mask) <= MASK_THRESHOLD


def read_mask(path: str, holes: Holes = "white", size: int | tuple[int, int] | None = None, *,
              warn_if_resized: bool = False) -> np.ndarray:
    """A mask file as float32 (H, W, 1), 1 = valid, 0 = hole.

    Resized nearest-neighbour to `size` if given (with a warning if `warn_if_resized`).
    """
    hole = read_hole_map(path, holes)
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if warn_if_resized and hole.shape != (h, w):
            warnings.warn(f"mask {path!r} is {hole.shape[1]}x{hole.shape[0]} but the image is "
                          f"{w}x{h}; resizing the mask nearest-neighbour", stacklevel=2)
        hole = resize_nearest(hole, (h, w))
    return to_valid_mask(hole)


# ----------------------------------------------------------------------------- writing

def write_image(path: str, image: np.ndarray, *, bits: int = 8, jpeg_quality: int = 95) -> None:
    """Writes an RGB (H, W, 3) or gray (H, W) image; the format comes from the extension.

    `image`: float in [0, 1] (written with `bits` = 8 or 16 bits per channel), uint8 (8 bits) or
    uint16 (16 bits). 16 bits need .png or .tif. Creates the parent folder.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        bits = 8
    elif image.dtype == np.uint16:
        bits = 16
    elif bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"cannot write {path!r}: use one of the extensions "
                         f"{', '.join(IMAGE_EXTENSIONS)}")
    if bits == 16 and ext not in (".png", ".tif", ".tiff"):
        raise ValueError(f"cannot write 16 bits to {path!r}: use .png or .tif")
    if image.dtype.kind == "f":
        dtype, top = (np.uint8, 255) if bits == 8 else (np.uint16, 65535)
        image = np.round(np.clip(image, 0.0, 1.0) * top).astype(dtype)
    data = encode_image(image, ext, jpeg_quality=jpeg_quality)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def encode_image(image: np.ndarray, ext: str = ".png", *, jpeg_quality: int = 95) -> bytes:
    """uint8 or uint16 RGB (H, W, 3) or gray (H, W) pixels as the bytes of an `ext` file."""
    if image.ndim == 3 and image.shape[-1] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(ext, image, params)
    if not ok:
        raise ValueError(f"cannot encode an image of shape {image.shape} as {ext}")
    return data.tobytes()


def write_mask(path: str, mask: np.ndarray, holes: Holes = "white") -> None:
    """Writes an in-memory mask (1 = valid) as an 8-bit PNG, holes 255 or 0 by `holes`."""
    check_holes(holes)
    hole = hole_map(mask)
    write_image(path, np.where(hole == (holes == "white"), 255, 0).astype(np.uint8))
