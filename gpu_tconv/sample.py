"""The built-in sample image, drawn in code so that the package ships no binary.

It is small and has what shows an interpolation at work: smooth colour gradients,
hard edges at several angles, a thin ring and a fine checkerboard.
"""

from __future__ import annotations

import numpy as np

SAMPLE_SIZE = 64


def sample_image(size: int = SAMPLE_SIZE) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 RGB test picture, the same on every call."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    # Background: red grows to the right, green downwards, blue along the other diagonal.
    rgb = np.stack([x, y, 1 - (x + y) / 2], axis=-1)

    radius = np.hypot(x - 0.5, y - 0.5)
    rgb[radius < 0.22] = (1.0, 0.95, 0.3)                        # a yellow disc
    rgb[np.abs(radius - 0.3) < 1.2 / size] = 0.0                 # a thin black ring
    rows, cols = np.indices((size, size))
    corner = (y > 0.78) & (x < 0.34)
    rgb[corner] = ((rows // 2 + cols // 2) % 2)[corner, None]   # a 2-pixel checkerboard
    rgb[(x + 2 * y < 0.45)] = (0.1, 0.2, 0.7)                    # a slanted blue corner
    return np.round(255 * np.clip(rgb, 0, 1)).astype(np.uint8)
