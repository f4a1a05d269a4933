"""Decoding one image file with Pillow, only for bytes whose signature matches a format
diag accepts, and under a pixel cap (decompression bombs)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

import numpy as np

from diag.errors import InputError
from diag.loaders.splits.common import one_line

# Pillow's own default: 8-bit RGB at this size is ~256 MiB once decoded.
MAX_IMAGE_PIXELS = 89_478_485
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def image_format(head: bytes) -> str | None:
    """The Pillow format whose signature `head` starts with, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    # "BM" alone starts many words (a CSV header "BMI,..."): require the zero reserved bytes.
    if head[:2] == b"BM" and head[6:10] == b"\0\0\0\0":
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(shown: Path, fh: IO[bytes]) -> np.ndarray:
    """Pixels as uint8 (H, W) or (H, W, 3). Pillow only sees files whose signature matches."""
    from PIL import Image

    fmt = image_format(fh.read(16))
    if fmt is None:
        raise InputError(shown, "not an image: its bytes match no PNG/JPEG/GIF/BMP/WebP signature")
    fh.seek(0)
    # Pillow warns (not raises) between 1x and 2x its pixel limit: make that an error too.
    # catch_warnings is process-wide; split reading is single-threaded.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(fh, formats=[fmt]) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(shown, _bomb(f"{width} x {height} pixels"))
                mode = "L" if img.mode in _GREY_MODES else "RGB"
                return np.array(img.convert(mode))
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(shown, _bomb(one_line(exc))) from None
        # Decoders raise OSError, SyntaxError, ValueError, struct.error, ... on bad bytes.
        except Exception as exc:
            raise InputError(shown, f"cannot decode image: {one_line(exc)}") from None


def _bomb(what: str) -> str:
    return f"image too large ({what}; cap {MAX_IMAGE_PIXELS} pixels): a decompression bomb?"
