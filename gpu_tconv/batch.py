"""Where each result goes, and which work a resumed run still has to do.

A run over a folder mirrors the input tree into the output folder, file for file under
the same relative names. An output that already exists counts as done (outputs are
written atomically, see :mod:`gpu_tconv.files`, so an existing one is complete) and
is skipped unless overwriting is asked for; that is what makes an interrupted run
resumable by running the same command again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .files import is_supported


def default_output(source: Path, scale: int) -> Path:
    """``photo.png`` -> ``photo_x2.png`` beside it; folder ``shots`` -> ``shots_x2`` beside it."""
    source = Path(source)
    if source.is_dir():
        return source.resolve().with_name(f"{source.resolve().name}_x{scale}")
    return source.with_name(f"{source.stem}_x{scale}{source.suffix}")


@dataclass
class FolderPlan:
    """The files of one folder run, each as ``(input, output)`` where it has one."""

    todo: list[tuple[Path, Path]] = field(default_factory=list)
    done: list[tuple[Path, Path]] = field(default_factory=list)   # output exists: skipped
    ignored: list[Path] = field(default_factory=list)            # not an image or .npy


def plan_folder(source: Path, target: Path, overwrite: bool = False) -> FolderPlan:
    """Pair every file below ``source`` with its place below ``target``, in sorted order.

    Raises ``ValueError`` when ``target`` lies inside ``source``: a second run would
    take the first run's results for new inputs.
    """
    source, target = Path(source).resolve(), Path(target).resolve()
    if target == source or target.is_relative_to(source):
        raise ValueError(f"the output folder {target} must not be inside the input folder "
                         f"{source}")
    plan = FolderPlan()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        if not is_supported(path):
            plan.ignored.append(path)
            continue
        pair = (path, target / path.relative_to(source))
        (plan.done if pair[1].exists() and not overwrite else plan.todo).append(pair)
    return plan
