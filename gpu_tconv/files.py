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
import stat
import threading
import warnings
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from . import memory

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy",)
SUFFIXES = IMAGE_SUFFIXES + ARRAY_SUFFIXES

# Image modes that become an array as they are; others are converted first.
_ARRAY_MODES = {"L", "LA", "RGB", "RGBA", "I;16", "I", "F"}
_JPEG_QUALITY = 95  # Pillow's default of 75 would visibly degrade an upsampled image


def is_supported(path: Path) -> bool:
    """Whether ``path`` has the suffix of an image or array this module reads."""
    return path.suffix.lower() in SUFFIXES


def what_is(path: Path) -> str:
    """What is at ``path`` when it is not a regular file: ``"no such file"``, ``"a folder,
    not a file"``, ``"a character device, not a file"`` (``/dev/null``) and so on."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return f"{kind}, not a file"
    return "a regular file"


def read(path: Path, allow_large: bool = False) -> tuple[np.ndarray, str | None]:
    """The array in ``path`` and, for an image, its layout (``"HW"`` or ``"HWC"``).

    ``.npy`` files have no known layout (``None``). Raises ``ValueError`` naming the
    file if it is missing or not a regular file, of an unknown kind, unreadable, too
    large for memory, or an image above Pillow's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``) unless ``allow_large``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ValueError(f"{path}: {what_is(path)}")
    if suffix in ARRAY_SUFFIXES:
        try:
            return np.load(path, allow_pickle=False), None
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable .npy array ({error})") from error
    if suffix in IMAGE_SUFFIXES:
        array = _read_image(path, allow_large)
        return array, "HW" if array.ndim == 2 else "HWC"
    raise ValueError(f"{path}: unsupported file type {path.suffix!r} "
                     f"(supported: {', '.join(SUFFIXES)})")


_LIMIT_LOCK = threading.RLock()


def _open_image(path: Path, allow_large: bool):
    """Pillow's lazy image: only the header is read. Its decompression-bomb warning (an
    image of more than ``Image.MAX_IMAGE_PIXELS``) becomes an error, unless allowed."""
    from PIL import Image

    # catch_warnings changes the process's filters: one thread at a time (only the
    # header is read here, so the lock is held briefly).
    with _LIMIT_LOCK, warnings.catch_warnings():
        # Caught here, not only warned about: the check is the point (and a warning
        # would not stop a folder run from decoding a few gigabytes).
        warnings.simplefilter("ignore" if allow_large else "error",
                              Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            if not allow_large or isinstance(error, Image.DecompressionBombWarning):
                raise ValueError(f"{path}: {_bomb_message(error)}") from error
            image = None
    if image is None:   # above twice the limit, which Pillow refuses even without warnings
        with _LIMIT_LOCK:  # the limit is Pillow's global: one thread lifts it at a time
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    return image


def _bomb_message(error: Exception) -> str:
    from PIL import Image

    del error  # Pillow's text repeats the limit, twice as large for its hard error
    return (f"more pixels than Pillow's limit against decompression bombs "
            f"({Image.MAX_IMAGE_PIXELS}: a file made to exhaust memory looks like this); "
            "if the image is genuine, --allow-large-images reads it")


def _read_image(path: Path, allow_large: bool = False) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        image = _open_image(path, allow_large)
    except (OSError, ValueError) as error:
        if str(error).startswith(f"{path}: "):   # already says what is wrong
            raise
        raise ValueError(f"{path}: not a readable image ({error})") from error
    bytes_per_value = 2 if image.mode.startswith("I;16") else 4 if image.mode in "IF" else 1
    try:
        memory.check_decoded(str(path), image.width * image.height,
                             len(image.getbands()) * bytes_per_value)
    except ValueError:
        image.close()
        raise
    try:
        with image:
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
    holds; ``ValueError`` says so otherwise, and when ``path`` is something other than
    a regular file (a folder, ``/dev/null``): the rename would replace it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if os.path.lexists(path) and not path.is_file():
        raise ValueError(f"{path}: {what_is(path)}; give a file name to write")
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
