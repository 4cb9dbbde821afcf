"""Array layouts: which axes of an array hold the batch, the channels and the space.

A layout is a string with one letter per axis of the array: ``N`` is the batch axis,
``C`` the channel axis, and every other letter (``L``, ``D``, ``H``, ``W``, ...) a
spatial axis, 1 to 3 of them. ``"HWC"`` is an RGB image as image libraries store it,
``"NCDHW"`` a batch of volumes as PyTorch stores it, ``"L"`` a single signal. ``N`` and
``C`` may be left out; the convolution then sees a batch or channel axis of size 1.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Default spatial letters by rank, for an array with no batch or channel axis.
SPATIAL_LETTERS = {1: "L", 2: "HW", 3: "DHW"}


@dataclass(frozen=True)
class Layout:
    """A validated layout string; see the module docstring."""

    letters: str

    @property
    def spatial_rank(self) -> int:
        return sum(1 for c in self.letters if c not in "NC")

    def _full(self) -> str:
        # Missing batch and channel axes are put in front, as axes of size 1.
        return "N" * ("N" not in self.letters) + "C" * ("C" not in self.letters) + self.letters

    def axis_order(self) -> list[int]:
        """The transposition to ``(N, C, *spatial)`` once missing N and C lead the array."""
        full = self._full()
        spatial = [i for i, c in enumerate(full) if c not in "NC"]
        return [full.index("N"), full.index("C")] + spatial


def parse_layout(letters: str, ndim: int) -> Layout:
    """Check ``letters`` against an array of ``ndim`` axes; ``ValueError`` says what is wrong."""
    if len(letters) != ndim:
        raise ValueError(f"layout {letters!r} has {len(letters)} letters but the array has "
                         f"{ndim} axes (one letter per axis: N batch, C channels, others spatial)")
    if not letters.isalpha() or len(set(letters)) != len(letters):
        raise ValueError(f"layout {letters!r} must be distinct letters, one per axis "
                         "(N batch, C channels, others spatial)")
    layout = Layout(letters)
    if not 1 <= layout.spatial_rank <= 3:
        raise ValueError(f"layout {letters!r} has {layout.spatial_rank} spatial axes; "
                         "1, 2 or 3 are supported")
    return layout


def spatial_layout(ndim: int) -> Layout:
    """The layout of an array whose every axis is spatial (``"L"``, ``"HW"`` or ``"DHW"``)."""
    if ndim not in SPATIAL_LETTERS:
        raise ValueError(f"an array with {ndim} axes needs a layout naming its batch (N) and "
                         "channel (C) axes, e.g. NCHW; without one, 1 to 3 axes (all spatial) "
                         "are accepted")
    return Layout(SPATIAL_LETTERS[ndim])


def to_batch_channels_space(a, layout: Layout):
    """View of ``a`` (NumPy or CuPy) as ``(N, C, *spatial)``, spatial axes in layout order."""
    for letter in "CN":
        if letter not in layout.letters:
            a = a[None]
    return a.transpose(layout.axis_order())


def from_batch_channels_space(y, layout: Layout):
    """Inverse of :func:`to_batch_channels_space`: ``(N, C, *spatial)`` back to ``layout``."""
    order = layout.axis_order()
    y = y.transpose([order.index(i) for i in range(len(order))])
    missing = ("N" not in layout.letters) + ("C" not in layout.letters)
    return y.reshape(y.shape[missing:])
