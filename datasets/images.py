"""MRI key image decoding, shared by training and serving: a file or bytes -> (H, W) float32 in
[0, 1]."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 128
MAX_PIXELS = 4096 * 4096  # refuse decompression bombs long before they fill memory


class ImageError(ValueError):
    """The bytes are not a usable PNG or JPEG image."""


# What Pillow raises for bytes that are not a sound image: OSError (truncated, unknown format),
# ValueError (an oversized text chunk: "Decompressed Data Too Large"), SyntaxError (a broken PNG
# chunk), the bomb error; all mean the same to a caller.
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _opened(source: str | Path | bytes):
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def _checked(img: Image.Image) -> Image.Image:
    if img.format not in ("PNG", "JPEG"):
        raise ImageError(f"must be a PNG or JPEG image; got {img.format}")
    if img.width * img.height > MAX_PIXELS:
        raise ImageError(f"must be at most {MAX_PIXELS:,} pixels; got {img.width}x{img.height}")
    return img


def image_pixels(source: str | Path | bytes) -> int:
    """Width x height from the image's header alone (nothing is decoded): cheap, for pixel
    budgets."""
    try:
        with _opened(source) as img:
            return _checked(img).width * img.height
    except ImageError:
        raise
    except _UNREADABLE as err:
        raise ImageError(f"must be a readable PNG or JPEG image ({type(err).__name__})") from None


def load_image(source: str | Path | bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    try:
        with _opened(source) as img:
            gray = _checked(img).convert("L")
            if gray.size != (size, size):
                gray = gray.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(gray, dtype=np.float32) / 255.0
    except ImageError:
        raise
    except _UNREADABLE as err:
        raise ImageError(f"must be a readable PNG or JPEG image ({type(err).__name__})") from None
