"""Opening user images safely: decode errors and decompression bombs become clear errors."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from tracer.errors import InputError
from tracer.limits import MAX_PIXELS, MAX_SIDE

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}


class ImageError(InputError):
    """An image that cannot be used: not an image, corrupt, too large, or an unsupported format."""


def _reason(err: BaseException) -> str:
    """PIL's message without the object reprs it embeds (`<_io.BytesIO object at 0x...>`)."""
    if isinstance(err, UnidentifiedImageError):
        return "not a PNG, JPEG or WebP file"
    text = " ".join(str(err).split())
    if "<_io." in text or " object at 0x" in text or not text:
        return type(err).__name__
    return text[:200]


def open_image(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB PIL image from a path, bytes, a file object or a PIL image."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if hasattr(source, "__array_interface__"):  # a uint8 (H, W, 3) array, as graphs store images
        return Image.fromarray(source).convert("RGB")
    name = str(source) if isinstance(source, (str, Path)) else "the uploaded image"
    if isinstance(source, (str, Path)) and not Path(source).exists():
        raise ImageError(f"{name}: no such file")
    data = source if isinstance(source, (bytes, bytearray)) else None
    try:
        handle = io.BytesIO(data) if data is not None else source
        # PIL warns (DecompressionBombWarning) above its own limit before our check can refuse:
        # make the warning an error, caught below as the same clean refusal
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle) as probe:
                fmt = probe.format
                width, height = probe.size
                if fmt not in ALLOWED_FORMATS:
                    raise ImageError(f"{name}: format {fmt} is not supported (use PNG, JPEG or WebP)")
                if width * height > max_pixels or max(width, height) > MAX_SIDE:
                    raise ImageError(f"{name}: {width}x{height} pixels is too large "
                                     f"(limit {max_pixels:,} pixels, {MAX_SIDE} per side)")
                probe.load()  # decode fully now, so truncation shows up here
                return probe.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageError(f"{name}: the image is too large to decode safely (limit {max_pixels:,} pixels)") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"{name}: not a readable image ({_reason(err)})") from err
