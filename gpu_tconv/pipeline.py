"""A folder run as a pipeline: files are read and decoded, and encoded and written, by a
pool of worker threads while the main thread computes, so every core (and the GPU) has
work; results come out in the order of the files, whatever the number of workers.

::

    workers:  load 1, load 2, load 3 ...           save 1, save 2 ...
    main:            compute 1, compute 2, compute 3 ...

Pillow and NumPy release the GIL while they decode, encode, copy and compute, so the
threads run in parallel. Queues are bounded: at most ``jobs + 1`` files are loaded
ahead of the computation, and at most ``jobs + 1`` results wait to be written, so
memory stays bounded on a folder of any size. With ``jobs = 1`` the same code runs with
every step in the main thread, one after another.

Stacking: a *stage* computes a batch of same-shaped arrays stacked along a new first
axis. :class:`HostStage` computes at once (the numpy and emulated backends);
:class:`CudaStage` copies the batch to the GPU on one CuPy stream through pinned
memory and computes and copies back on another, so that the next batch's copy overlaps
this batch's computation. The pipeline submits a batch before it collects the previous
one, with either stage. Consecutive files of one shape and dtype are stacked up to
``max_batch_bytes`` (a batch of 1 when stacking is off, as on the CPU, where it would
only cost memory).
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np


def default_jobs() -> int:
    """Worker threads by default: the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Outcome:
    """What became of one file: the shapes before and after, or the error."""

    source: Path
    target: Path
    shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    error: Exception | None = None


class _Inline(Executor):
    """An executor that runs each task at once, in the caller's thread (``jobs = 1``)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:  # reported as the file's error, as from a worker
            future.set_exception(error)
        return future


class HostStage:
    """Computes a batch when it is submitted (host backends): nothing to overlap, so the
    pipeline saves its results before it computes the next batch."""

    overlaps = False

    def __init__(self, compute: Callable[[np.ndarray, Any], np.ndarray]):
        self.compute = compute

    def submit(self, batch: np.ndarray, key) -> np.ndarray:
        return self.compute(batch, key)

    def collect(self, handle: np.ndarray) -> np.ndarray:
        return handle


@dataclass
class _Group:
    """Consecutive loaded files computed as one batch."""

    items: list[tuple[Path, Path, np.ndarray | None, Any]]
    handle: Any = None
    error: Exception | None = None


def run(pairs: Iterable[tuple[Path, Path]], load: Callable[[Path], tuple[np.ndarray, Any]],
        stage, save: Callable[[Path, np.ndarray, Any], None], jobs: int,
        max_batch_bytes: int = 0) -> Iterator[Outcome]:
    """Load, compute and save every ``(source, target)`` pair; one :class:`Outcome` per
    pair, in order, as each is written.

    ``load(source)`` gives ``(array, key)``; arrays of one shape, dtype and key are
    stacked into batches of at most ``max_batch_bytes`` (0: one array per batch), and
    ``stage`` computes each batch (``(n, *shape)`` to ``(n, *result shape)``, given the
    key);
    ``save(target, result, key)`` writes one result. An exception from any step
    (``ValueError``, ``TypeError``, ``OSError``) becomes that file's outcome; the run
    goes on.
    """
    pool: Executor = _Inline() if jobs <= 1 else ThreadPoolExecutor(
        jobs, thread_name_prefix="gpu_tconv-io")
    depth = max(1, jobs) + 1
    todo = iter(pairs)
    loads: collections.deque = collections.deque()
    written: collections.deque = collections.deque()   # Outcomes, or (Outcome, Future)

    def refill() -> None:
        while len(loads) < depth:
            pair = next(todo, None)
            if pair is None:
                return
            loads.append((pair, pool.submit(load, pair[0])))

    def finished(block: bool) -> Iterator[Outcome]:
        while written and (block or len(written) > depth or _ready(written[0])):
            yield _settle(written.popleft())

    def save_group(group: _Group) -> None:
        try:
            results = None if group.error else stage.collect(group.handle)
        except (ValueError, TypeError, OSError, RuntimeError) as error:
            group.error = error
        for i, (source, target, array, key) in enumerate(group.items):
            if group.error is not None:
                written.append(Outcome(source, target, error=group.error))
                continue
            outcome = Outcome(source, target, (array.shape, results[i].shape))
            written.append((outcome, pool.submit(save, target, results[i], key)))

    try:
        refill()
        previous: _Group | None = None
        while loads:
            group = _next_group(loads, refill, max_batch_bytes)
            if group.error is None:
                arrays = [a for _, _, a, _ in group.items]
                try:
                    batch = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)
                    group.handle = stage.submit(batch, group.items[0][3])
                except (ValueError, TypeError, OSError, RuntimeError) as error:
                    group.error = error
            if previous is not None:         # submitted the next batch first: overlap
                save_group(previous)
            previous = group
            if not stage.overlaps:
                save_group(previous)
                previous = None
            yield from finished(block=False)
        if previous is not None:
            save_group(previous)
        yield from finished(block=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _next_group(loads, refill, max_batch_bytes: int) -> _Group:
    """The next files of one shape, dtype and key, or the next file that failed to load
    (a group with its error)."""
    items = []
    while loads:
        (source, target), future = loads[0]
        try:
            array, key = future.result()
        except (ValueError, TypeError, OSError) as error:
            if items:
                break
            loads.popleft()
            refill()
            return _Group([(source, target, None, None)], error=error)
        if items and not _same(items[0], array, key, len(items) + 1, max_batch_bytes):
            break
        loads.popleft()
        refill()
        items.append((source, target, array, key))
        if not max_batch_bytes:
            break
    return _Group(items)


def _same(first, array: np.ndarray, key, count: int, max_batch_bytes: int) -> bool:
    _, _, a, k = first
    return (a.shape == array.shape and a.dtype == array.dtype and k == key
            and count * array.nbytes <= max_batch_bytes)


def _ready(entry) -> bool:
    return isinstance(entry, Outcome) or entry[1].done()


def _settle(entry) -> Outcome:
    if isinstance(entry, Outcome):
        return entry
    outcome, future = entry
    try:
        future.result()
    except (ValueError, TypeError, OSError) as error:
        outcome.shapes, outcome.error = None, error
    return outcome


class CudaStage:
    """Batches through the GPU with the copies overlapping the computation.

    The host batch is copied into pinned (page-locked) memory, from which the copy to
    the device runs asynchronously on ``copy_stream``; the computation waits for it on
    ``work_stream``, and copies its result back into pinned memory on that stream. A
    batch submitted while the previous one computes therefore copies in parallel with
    it; :meth:`collect` waits for the batch's last copy only.
    """

    overlaps = True

    def __init__(self, compute: Callable[[Any, Any], Any]):
        import cupy
        import cupyx

        self.cupy, self.cupyx, self.compute = cupy, cupyx, compute
        self.copy_stream = cupy.cuda.Stream(non_blocking=True)
        self.work_stream = cupy.cuda.Stream(non_blocking=True)

    def submit(self, batch: np.ndarray, key):
        cupy = self.cupy
        pinned = self.cupyx.empty_pinned(batch.shape, batch.dtype)
        np.copyto(pinned, batch)
        with self.copy_stream:
            device = cupy.empty(batch.shape, batch.dtype)
            device.set(pinned, stream=self.copy_stream)
            copied = self.copy_stream.record()
        self.work_stream.wait_event(copied)
        with self.work_stream:
            result = self.compute(device, key)
            back = self.cupyx.empty_pinned(result.shape, result.dtype)
            result.get(stream=self.work_stream, out=back, blocking=False)
            done = self.work_stream.record()
        # The buffers stay referenced until collected: freeing one while a copy reads it
        # would hand its memory to the next allocation too early.
        return done, back, (pinned, device, result)

    def collect(self, handle) -> np.ndarray:
        done, back, _ = handle
        done.synchronize()
        return back
