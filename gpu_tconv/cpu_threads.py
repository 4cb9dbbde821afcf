"""Run independent pieces of NumPy work (parts of a batch) on several CPU cores.

BLAS spreads one GEMM over every core, but the additions and copies between GEMMs run
on one core while the others wait. Giving each core pieces of its own, with BLAS limited
to its share of the cores, overlaps them: on 2 cores large layers of the NumPy backend
ran a quarter to a third faster that way than with 2-thread GEMMs one after another.

BLAS's thread count is process-wide, and only the thread that lowered it may restore
it, so one call at a time runs pieces this way; a call that overlaps it runs its pieces
in order. BLAS promises no bit pattern across thread counts (OpenBLAS's Haswell kernels
on an AMD EPYC round some GEMMs differently with 1 and 2 threads), so the parts agree
with a computation in one piece within the backend's seam tolerance
(``numpy_backend.SEAM_TOLERANCE_ULPS``); the same call with the same threads gives the
same bits.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
from threadpoolctl import ThreadpoolController

_LOCK = threading.Lock()
_controller: ThreadpoolController | None = None
_blas: list = []       # its BLAS libraries
_busy = False          # a call is running pieces (and holds BLAS's thread count down)
_pool: ThreadPoolExecutor | None = None


def _forget_after_fork() -> None:
    # A forked child has none of the parent's threads: a pool that refers to them would
    # never run a task, and a call the parent was running is not running here.
    global _pool, _busy, _LOCK
    _pool, _busy, _LOCK = None, False, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def blas_threads() -> int:
    """Threads BLAS uses now: the cores this process computes on (1 while a call runs
    pieces, which makes overlapping calls run theirs in order)."""
    global _controller, _blas
    with _LOCK:
        if _controller is None:  # scanning the loaded libraries takes milliseconds: once
            _controller = ThreadpoolController()
            # (selecting them again costs microseconds on every call of the backend)
            _blas = _controller.select(user_api="blas").lib_controllers
        counts = [lib.num_threads for lib in _blas]
    return max(counts) if counts else os.cpu_count() or 1


def run_pieces(pieces: Sequence[Callable[[], None]], cores: int) -> None:
    """Run ``pieces``, which share no buffers, on up to ``cores`` cores at once. With one
    core or one piece, or while another call runs its pieces, they run in order on this
    thread. NumPy's floating-point warnings are off inside them, as in the backend."""
    global _busy, _pool
    threads = blas_threads()
    workers = min(cores, len(pieces), threads)
    with _LOCK:
        mine = workers > 1 and not _busy
        if mine:
            _busy = True
            if _pool is None or _pool._max_workers < workers:
                _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpu_tconv")
            pool = _pool
    if not mine:
        for piece in pieces:
            piece()
        return

    def run(piece: Callable[[], None]) -> None:
        with np.errstate(all="ignore"):
            piece()

    try:
        # threadpoolctl lets only the thread that lowered the count restore it: this one.
        with _controller.limit(limits=max(1, threads // workers), user_api="blas"):
            futures = [pool.submit(run, piece) for piece in pieces]
            wait(futures)  # every piece has stopped before this call returns
            for future in futures:
                future.result()
    finally:
        with _LOCK:
            _busy = False
