"""One picture of what the kernels do: a crop upsampled with each kernel, side by side,
each labelled (``gpu-tconv upsample --compare OUT.png``; the README's picture).
"""

from __future__ import annotations

import numpy as np

from .sample import sample_image
from .upsample import upsample

COMPARED = ("nearest", "bilinear", "bicubic", "lanczos")
#: The sample's corner with the checkerboard, the thin ring and the slanted edges.
SAMPLE_CROP = (slice(34, 58), slice(2, 26))
GAP, LABEL_HEIGHT, BACKGROUND = 4, 14, 255


def kernel_comparison(image: np.ndarray | None = None, scale: int = 6,
                      backend: str = "auto") -> np.ndarray:
    """``image`` (``(H, W, 3)`` uint8; default: a 24x24 crop of the built-in sample)
    upsampled by ``scale`` with each of :data:`COMPARED`, left to right with a gap,
    a label above each: an ``(LABEL_HEIGHT + scale*H, 4*scale*W + 3*GAP, 3)`` uint8."""
    from PIL import Image, ImageDraw, ImageFont

    if image is None:
        image = sample_image()[SAMPLE_CROP]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3]
    tiles = [upsample(image, scale, kernel, layout="HWC", backend=backend)
             for kernel in COMPARED]
    h, w = tiles[0].shape[:2]
    canvas = np.full((LABEL_HEIGHT + h, len(tiles) * w + (len(tiles) - 1) * GAP, 3),
                     BACKGROUND, np.uint8)
    for i, tile in enumerate(tiles):
        canvas[LABEL_HEIGHT:, i * (w + GAP):i * (w + GAP) + w] = tile
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    # Pillow's built-in bitmap font (not the FreeType default where FreeType exists):
    # the same pixels on every installation, so the picture regenerates exactly.
    font = ImageFont.load_default_imagefont()
    for i, kernel in enumerate(COMPARED):
        draw.text((i * (w + GAP) + 2, 1), f"{kernel} x{scale}", fill=(0, 0, 0), font=font)
    return np.asarray(picture)
