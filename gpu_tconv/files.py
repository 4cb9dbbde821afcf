"""Reading and writing the files the command line works on: images and ``.npy`` arrays.

Images (PNG, JPEG, TIFF) go through Pillow and become arrays of shape ``(H, W)`` or
``(H, W, C)`` in their stored dtype (uint8, uint16 for 16-bit grey, int32, float32).
Writes are atomic: the data goes to a hidden file beside the target, which is renamed
over it when complete, so an interrupted run never leaves a truncated output that a
resumed run would mistake for a finished one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy",)
SUFFIXES = IMAGE_SUFFIXES + ARRAY_SUFFIXES

# Image modes that become an array as they are; others are converted first.
_ARRAY_MODES = {"L", "LA", "RGB", "RGBA", "I;16", "I", "F"}
_JPEG_QUALITY = 95  # Pillow's default of 75 would visibly degrade an upsampled image


def is_supported(path: Path) -> bool:
    """Whether ``path`` has the suffix of an image or array this module reads."""
    return path.suffix.lower() in SUFFIXES


def read(path: Path) -> tuple[np.ndarray, str | None]:
    """The array in ``path`` and, for an image, its layout (``"HW"`` or ``"HWC"``).

    ``.npy`` files have no known layout (``None``). Raises ``ValueError`` naming the
    file if it is missing, of an unknown kind or unreadable.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if suffix in ARRAY_SUFFIXES:
        try:
            return np.load(path, allow_pickle=False), None
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable .npy array ({error})") from error
    if suffix in IMAGE_SUFFIXES:
        array = _read_image(path)
        return array, "HW" if array.ndim == 2 else "HWC"
    raise ValueError(f"{path}: unsupported file type {path.suffix!r} "
                     f"(supported: {', '.join(SUFFIXES)})")


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            # Turned upright as viewers show it: the result is written without EXIF tags.
            image = ImageOps.exif_transpose(image)
            if image.mode.startswith("I;16"):
                return np.asarray(image).astype(np.uint16)  # any byte order to native
            if image.mode == "1":
                image = image.convert("L")
            elif image.mode not in _ARRAY_MODES:
                # Palette indices and CMYK/YCbCr/LAB values do not interpolate: use colours.
                image = image.convert("RGBA" if image.has_transparency_data else "RGB")
            return np.array(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from error


def write(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` atomically, as ``.npy`` or as the image its suffix names.

    Images must be ``(H, W)`` or ``(H, W, C)`` with C in 1..4 and a dtype the format
    holds; ``ValueError`` says so otherwise.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        _write_atomically(path, lambda f: np.save(f, array, allow_pickle=False))
    elif suffix in IMAGE_SUFFIXES:
        _write_atomically(path, _image_writer(path, array))
    else:
        raise ValueError(f"{path}: cannot write {path.suffix!r} files "
                         f"(supported: {', '.join(SUFFIXES)})")


def _image_writer(path: Path, array: np.ndarray) -> Callable[[BinaryIO], None]:
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] <= 4)):
        raise ValueError(f"{path}: an image must be (H, W) or (H, W, C) with C <= 4, "
                         f"got shape {array.shape}")
    try:
        image = Image.fromarray(np.ascontiguousarray(array))
    except TypeError as error:
        raise ValueError(f"{path}: {array.dtype} data of shape {array.shape} cannot be "
                         f"an image ({error})") from error
    Image.init()
    image_format = Image.registered_extensions()[path.suffix.lower()]
    options = {"quality": _JPEG_QUALITY} if image_format == "JPEG" else {}

    def save(f: BinaryIO) -> None:
        try:
            image.save(f, format=image_format, **options)
        except (OSError, ValueError, KeyError) as error:  # e.g. RGBA or 16-bit as JPEG
            raise ValueError(f"{path}: cannot save {image.mode} data as {image_format} "
                             f"({error})") from error
    return save


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    # A random hidden name in the target's folder: the rename stays on one file system,
    # and the file is created with the usual permissions (mkstemp would make it 0600).
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        with open(partial, "xb") as f:
            write(f)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
