"""The one image decoder: the dataset check, training, validation and inference all read images here.

Orientation rule: an image's EXIF orientation (tag 0x0112) is applied, so pixels are used the way image
viewers and annotation tools (labelme, CVAT) show them; masks must be drawn on that upright image. Masks
themselves are never rotated (PNG masks carry no orientation).

Accepted pixel formats: 8-bit grey/RGB/RGBA/palette/CMYK (converted to RGB, alpha dropped) and 16-bit
grey (scaled to 8 bits by 255/65535; a 32-bit integer image, as older Pillow opens 16-bit PNGs, gets the
same fixed scale and is refused when it holds values outside 0..65535). Float images (e.g. 32-bit TIFF) are refused with a message: their value range
is not defined, so any conversion would be a guess.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112
# Large images are legitimate in segmentation (aerial tiles); PIL's decompression-bomb limit would
# otherwise refuse them during training although the check passed. The check and training share it.
_MAX_PIXELS = 1 << 30
# PIL reads its limit from a module global, when a file is opened and again when a TIFF is loaded; the
# dataset check decodes on threads, so raising and restoring it is serialised: around every open (a
# header parse: cheap) and around the load of the rare image above PIL's own limit.
_LIMIT_LOCK = threading.Lock()


class ImageDecodeError(ValueError):
    """An image that cannot be used; ``reason`` is a short sentence for people."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 = upright, 2..8 = mirrored and/or rotated) of an opened image."""
    try:
        value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: treat as upright, like viewers do
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def decode_image_with_orientation(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(RGB uint8 H x W x 3 array, EXIF orientation of the file) with the orientation rule applied."""
    path = Path(path)
    try:
        with _raised_limit():
            im = Image.open(path)
        with im:
            orientation = exif_orientation(im)  # as stored in the file
            limit = Image.MAX_IMAGE_PIXELS
            large = limit is not None and im.width * im.height > limit
            with _raised_limit() if large else contextlib.nullcontext():
                im.load()  # a full decode: a truncated file fails here, not in a training worker
            # PIL's TIFF decoder applies the orientation itself while loading (and drops the tag)
            pending = exif_orientation(im)
            mode = im.mode
            if mode in ("F", "I;16F") or mode.startswith("F"):
                raise ImageDecodeError(path, f"floating-point image (mode {mode}); save it as 8-bit RGB "
                                             f"(or 16-bit grey) PNG/JPEG/TIFF")
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                arr = np.asarray(im).astype(np.float64)
                if mode == "I" and (arr.min(initial=0) < 0 or arr.max(initial=0) > 65535):
                    raise ImageDecodeError(path, "32-bit integer image with values outside 0..65535; save it "
                                                 "as 8-bit RGB or 16-bit grey")
                im2 = Image.fromarray(np.round(arr * (255.0 / 65535.0)).astype(np.uint8), "L")
            else:
                im2 = im
            if pending != 1:
                im2 = _transpose(im2, pending)
            rgb = np.asarray(im2.convert("RGB"))
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for damaged files
        empty = path.is_file() and path.stat().st_size == 0
        raise ImageDecodeError(path, "empty file, 0 bytes" if empty else
                               f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                               ) from None
    return np.ascontiguousarray(rgb), orientation


@contextlib.contextmanager
def _raised_limit():
    """PIL's decompression-bomb limit raised to _MAX_PIXELS (its warning silenced) inside the block only."""
    with _LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        if old is not None and old < _MAX_PIXELS:  # never lower a limit someone raised or removed
            Image.MAX_IMAGE_PIXELS = _MAX_PIXELS
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


_TRANSPOSE = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180],
              4: [Image.Transpose.FLIP_TOP_BOTTOM], 5: [Image.Transpose.TRANSPOSE],
              6: [Image.Transpose.ROTATE_270], 7: [Image.Transpose.TRANSVERSE], 8: [Image.Transpose.ROTATE_90]}


def _transpose(im: Image.Image, orientation: int) -> Image.Image:
    """EXIF orientation applied to a converted image (which no longer carries the EXIF block)."""
    for op in _TRANSPOSE.get(orientation, []):
        im = im.transpose(op)
    return im


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 (H, W, 3) array of ``path`` with its EXIF orientation applied; ImageDecodeError if unusable."""
    return decode_image_with_orientation(path)[0]
