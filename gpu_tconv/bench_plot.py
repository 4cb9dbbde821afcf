"""The GPU benchmark's plot, as a self-contained SVG (no plotting library needed).

One row per (configuration, dtype): a bar for the speedup of gpu_tconv's best variant
over the best peer, ``best peer ms / best variant ms``, on a log2 axis (right of the
middle line: gpu_tconv is faster), and a tick for the ``simple`` kernel's speedup.
"""

from __future__ import annotations

import math
from html import escape

_ROW, _LABEL, _PLOT, _MARGIN = 16, 330, 480, 24
_SPAN = 6  # the axis runs from 2**-6 to 2**6


def _x(speedup: float) -> float:
    clamped = max(-_SPAN, min(_SPAN, math.log2(speedup)))
    return _LABEL + _PLOT / 2 * (1 + clamped / _SPAN)


def speedup_svg(result: dict) -> str:
    """The plot of ``result`` (as written by :func:`gpu_tconv.bench_gpu.run_from_args`)."""
    rows = result["rows"]
    height = 2 * _MARGIN + _ROW * (len(rows) + 2)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LABEL + _PLOT + _MARGIN}" '
             f'height="{height}" font-family="sans-serif" font-size="10">',
             f'<text x="{_LABEL}" y="{_MARGIN - 8}">{escape(result["device"]["name"])}: '
             'speedup of the best gpu_tconv variant over the best peer (bar), of simple '
             '(tick); log scale</text>']
    for exponent in range(-_SPAN, _SPAN + 1, 2):
        x = _x(2.0 ** exponent)
        parts.append(f'<line x1="{x:.1f}" y1="{_MARGIN}" x2="{x:.1f}" y2="{height - _MARGIN}" '
                     f'stroke="{"#000" if exponent == 0 else "#ddd"}"/>')
        label = f"{2 ** exponent}x" if exponent >= 0 else f"1/{2 ** -exponent}x"
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle">{label}</text>')
    for i, row in enumerate(rows):
        y = _MARGIN + _ROW * (i + 1)
        parts.append(f'<text x="{_LABEL - 6}" y="{y + 11}" text-anchor="end">'
                     f'{escape(row["name"])} {row["dtype"]}</text>')
        peer = row["ms"].get(row.get("best_peer"))
        best = row["ms"].get(row.get("best_variant"))
        if peer and best:
            x0, x1 = _x(1.0), _x(peer / best)
            colour = "#2a7" if x1 >= x0 else "#c44"
            parts.append(f'<rect x="{min(x0, x1):.1f}" y="{y + 3}" width="{abs(x1 - x0):.1f}" '
                         f'height="{_ROW - 6}" fill="{colour}"><title>{escape(row["best_variant"])}'
                         f': {best:.3f} ms, {escape(row["best_peer"])}: {peer:.3f} ms</title></rect>')
        if peer and "simple" in row["ms"]:
            xs = _x(peer / row["ms"]["simple"])
            parts.append(f'<line x1="{xs:.1f}" y1="{y + 1}" x2="{xs:.1f}" y2="{y + _ROW - 1}" '
                         'stroke="#000" stroke-width="2"/>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
