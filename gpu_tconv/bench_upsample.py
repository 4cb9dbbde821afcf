"""``gpu-tconv bench --upsample``: images per second of a folder run, beside Pillow and
PyTorch on the same images in the same run, and where the time goes.

A folder of photo-like images (smooth colour, edges and sensor-like noise, so that PNG
and JPEG compress as they do photos) is generated in a temporary folder, in PNG and
JPEG at a few sizes. Each method then upsamples the whole folder into a fresh folder:

- ``gpu-tconv`` through the command line's own pipeline (:mod:`gpu_tconv.pipeline`),
  with ``--jobs 1`` and ``--jobs N``;
- a Pillow loop (open, ``Image.resize`` with the same filter, save with the same
  options), one file per task on a pool of 1 and of N threads;
- PyTorch's ``interpolate`` (when importable; no Lanczos there), decoded and encoded by
  Pillow, on a pool of N threads.

Decode, compute and encode are timed around each call and summed over the threads
(thread-seconds: with N threads they add up to about N times the wall time). The
machine may be shared, so only ratios within one run are meaningful. ``--upsample-photo``
adds one 12-megapixel JPEG upsampled x2 by ``gpu-tconv upsample`` and by Pillow, each
in its own process, with the wall time and the peak resident memory of each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import files, pipeline
from .sample import sample_image
from .upsample import upsample

SIZES = ((480, 640), (768, 1024), (240, 320))     # (height, width)
FORMATS = (".png", ".jpg")
PILLOW_FILTERS = {"nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC",
                  "lanczos": "LANCZOS"}
PHOTO_SIZE = (3000, 4000)                          # 12 megapixels


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """An ``(height, width, 3)`` uint8 picture: the sample scaled up, plus noise."""
    from PIL import Image

    base = Image.fromarray(sample_image(128)).resize((width, height), Image.BICUBIC)
    noise = np.random.default_rng(seed).normal(0, 6, (height, width, 3))
    return np.clip(np.asarray(base) + noise, 0, 255).astype(np.uint8)


def make_folder(folder: Path, per_kind: int, formats=FORMATS) -> list[Path]:
    """``per_kind`` images of every size and format in ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (h, w) in SIZES:
        for suffix in formats:
            for i in range(per_kind):
                path = folder / f"{h}x{w}_{i}{suffix}"
                files.write(path, photo_like(h, w, seed=len(paths)))
                paths.append(path)
    return paths


class Clock:
    """Thread-seconds spent in each step, summed over threads."""

    def __init__(self):
        self.seconds = {"decode": 0.0, "compute": 0.0, "encode": 0.0}
        self._lock = threading.Lock()

    @contextmanager
    def step(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[name] += time.perf_counter() - start


def _ours(paths, out: Path, scale: int, kernel: str, backend: str, jobs: int, clock: Clock):
    def load(path):
        with clock.step("decode"):
            array, layout = files.read(path)
        return array, layout

    def compute(batch, layout):
        with clock.step("compute"):
            return upsample(batch, scale, kernel, layout="N" + layout, backend=backend)

    def save(target, result, layout):
        with clock.step("encode"):
            files.write(target, result)

    stage = pipeline.HostStage(compute)
    batch_bytes = 0
    if backend == "cuda":
        stage, batch_bytes = pipeline.CudaStage(compute), 64 * 2**20
    pairs = [(p, out / p.name) for p in paths]
    for outcome in pipeline.run(pairs, load, stage, save, jobs, batch_bytes):
        if outcome.error is not None:
            raise outcome.error


def _pillow(paths, out: Path, scale: int, kernel: str, jobs: int, clock: Clock):
    from PIL import Image

    method = getattr(Image, PILLOW_FILTERS[kernel])

    def one(path: Path):
        with clock.step("decode"):
            image = Image.open(path)
            image.load()
        with clock.step("compute"):
            image = image.resize((image.width * scale, image.height * scale), method)
        with clock.step("encode"):
            options = {"quality": 95} if path.suffix == ".jpg" else {}
            image.save(out / path.name, **options)

    _on_pool(one, paths, jobs)


def _torch(paths, out: Path, scale: int, kernel: str, jobs: int, clock: Clock):
    import torch
    import torch.nn.functional as F

    def one(path: Path):
        with clock.step("decode"):
            array = files.read(path)[0]
        with clock.step("compute"):
            x = torch.from_numpy(array).permute(2, 0, 1)[None].float()
            kw = {} if kernel == "nearest" else {"align_corners": False}
            y = F.interpolate(x, scale_factor=scale, mode=kernel, **kw)
            y = y.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        with clock.step("encode"):
            files.write(out / path.name, y)

    _on_pool(one, paths, jobs)


def _on_pool(one, paths, jobs: int) -> None:
    if jobs <= 1:
        for path in paths:
            one(path)
        return
    with ThreadPoolExecutor(jobs) as pool:
        for future in [pool.submit(one, p) for p in paths]:
            future.result()


def time_methods(paths: list[Path], work: Path, scale: int, kernel: str, backend: str,
                 jobs: int) -> list[dict]:
    """One row per method and pool size: images/s and thread-seconds per step."""
    runs = [("gpu-tconv", 1, lambda o, c: _ours(paths, o, scale, kernel, backend, 1, c)),
            ("gpu-tconv", jobs, lambda o, c: _ours(paths, o, scale, kernel, backend, jobs, c)),
            ("pillow resize", 1, lambda o, c: _pillow(paths, o, scale, kernel, 1, c)),
            ("pillow resize", jobs, lambda o, c: _pillow(paths, o, scale, kernel, jobs, c))]
    try:
        import torch  # noqa: F401
        if kernel != "lanczos":
            runs.append(("torch interpolate", jobs,
                         lambda o, c: _torch(paths, o, scale, kernel, jobs, c)))
    except ImportError:
        pass
    rows = []
    for i, (name, n, go) in enumerate(runs):
        out = work / f"out{i}"
        out.mkdir()
        clock = Clock()
        start = time.perf_counter()
        go(out, clock)
        seconds = time.perf_counter() - start
        rows.append({"method": name, "jobs": n, "seconds": seconds,
                     "images_per_s": len(paths) / seconds, **clock.seconds})
    return rows


#: Appended to each timed child's code: its peak resident memory (``VmHWM``, which
#: starts afresh at ``exec``, unlike ``getrusage``'s, which keeps the parent's at fork).
_REPORT_PEAK = ("\nfor line in open('/proc/self/status'):\n"
                "    if line.startswith('VmHWM:'): print('peak', int(line.split()[1]) * 1024)\n")


def _child(code: str) -> tuple[float, int]:
    """Wall seconds and peak resident bytes of Python ``code``, in its own process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + _REPORT_PEAK], capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"a benchmark process failed: {done.stderr[-500:]}")
    peaks = [int(line.split()[1]) for line in done.stdout.splitlines()
             if line.startswith("peak ")]
    return seconds, peaks[-1] if peaks else 0


def time_photo(work: Path, scale: int, kernel: str, backend: str) -> dict:
    """A 12 MP JPEG upsampled by ``gpu-tconv upsample`` and by Pillow, each alone, and
    the floor: decoding it and encoding an image of the output's size."""
    photo = work / "photo.jpg"
    files.write(photo, photo_like(*PHOTO_SIZE, seed=99))
    root = str(Path(__file__).resolve().parent.parent)
    ours = (f"import sys; sys.path.insert(0, {root!r}); from gpu_tconv.cli import main\n"
            f"status = main(['upsample', {str(photo)!r}, {str(work / 'ours.jpg')!r}, "
            f"'--scale', '{scale}', '--kernel', {kernel!r}, '--backend', {backend!r}, "
            "'--overwrite'])\nassert status == 0")
    pillow = (f"from PIL import Image; im = Image.open({str(photo)!r})\n"
              f"im.resize((im.width * {scale}, im.height * {scale}), "
              f"Image.{PILLOW_FILTERS[kernel]}).save({str(work / 'pillow.jpg')!r}, quality=95)")
    floor = (f"from PIL import Image; im = Image.open({str(photo)!r}); im.load()\n"
             f"Image.new('RGB', (im.width * {scale}, im.height * {scale})).save("
             f"{str(work / 'floor.jpg')!r}, quality=95)")
    result = {}
    for name, code in (("gpu-tconv", ours), ("pillow", pillow), ("decode+encode", floor)):
        seconds, peak = _child(code)
        result[name] = {"seconds": seconds, "peak_rss_mib": peak / 2**20}
    result["time_ratio"] = result["gpu-tconv"]["seconds"] / result["pillow"]["seconds"]
    result["rss_ratio"] = result["gpu-tconv"]["peak_rss_mib"] / result["pillow"]["peak_rss_mib"]
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``gpu-tconv bench --upsample`` (names unique among bench's flags)."""
    parser.add_argument("--upsample", action="store_true",
                        help="the upsampling benchmark: images/s of a folder run against "
                             "Pillow and PyTorch")
    parser.add_argument("--upsample-jobs", type=int, default=pipeline.default_jobs(),
                        metavar="N", help="upsample: the larger pool size (default: cores)")
    parser.add_argument("--upsample-images", type=int, default=2, metavar="K",
                        help="upsample: images of each size and format (default 2: "
                             f"{2 * len(SIZES) * len(FORMATS)} files)")
    parser.add_argument("--upsample-kernel", choices=list(PILLOW_FILTERS), default="bilinear",
                        help="upsample: the kernel (default bilinear)")
    parser.add_argument("--upsample-backend", default="auto",
                        choices=("auto", "cuda", "numpy", "emulated"),
                        help="upsample: gpu-tconv's backend (default auto)")
    parser.add_argument("--upsample-formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                        help="upsample: the folder's file formats (default: .png .jpg)")
    parser.add_argument("--upsample-photo", action="store_true",
                        help="upsample: also a 12-megapixel JPEG x2, time and peak memory")


def run_from_args(args: argparse.Namespace) -> dict:
    """Run the benchmark the flags describe; print the table, write JSON."""
    from . import dispatch

    backend = dispatch.resolve(args.upsample_backend)
    kernel, scale, jobs = args.upsample_kernel, 2, args.upsample_jobs
    with tempfile.TemporaryDirectory(prefix="gpu-tconv-bench-") as tmp:
        work = Path(tmp)
        paths = make_folder(work / "in", args.upsample_images, args.upsample_formats)
        print(f"{len(paths)} images ({', '.join(f'{w}x{h}' for h, w in SIZES)}; "
              f"{' and '.join(f[1:].upper() for f in args.upsample_formats)}), "
              f"{kernel} x{scale}, gpu-tconv on the {backend} backend")
        rows = time_methods(paths, work, scale, kernel, backend, jobs)
        print(f"{'method':<18} {'jobs':>4} {'images/s':>9}   thread-seconds: "
              f"{'decode':>7} {'compute':>8} {'encode':>7}")
        for r in rows:
            print(f"{r['method']:<18} {r['jobs']:>4} {r['images_per_s']:9.2f}   "
                  f"{'':>15} {r['decode']:7.2f} {r['compute']:8.2f} {r['encode']:7.2f}")
        by = {(r["method"], r["jobs"]): r["images_per_s"] for r in rows}
        summary = {"jobs_speedup": by[("gpu-tconv", jobs)] / by[("gpu-tconv", 1)],
                   "pillow_over_ours_same_pool": by[("pillow resize", jobs)]
                   / by[("gpu-tconv", jobs)]}
        print(f"gpu-tconv --jobs {jobs} / --jobs 1: {summary['jobs_speedup']:.2f}x; "
              f"Pillow / gpu-tconv on {jobs} threads: "
              f"{summary['pillow_over_ours_same_pool']:.2f}x")
        result = {"images": len(paths), "formats": args.upsample_formats, "kernel": kernel, "scale": scale, "backend": backend,
                  "cores": pipeline.default_jobs(), "rows": rows, "summary": summary}
        if args.upsample_photo:
            photo = time_photo(work, scale, kernel, backend)
            for name in ("gpu-tconv", "pillow", "decode+encode"):
                print(f"12 MP JPEG x{scale}, {name:<14} {photo[name]['seconds']:6.2f} s, "
                      f"peak {photo[name]['peak_rss_mib']:7.1f} MiB resident")
            print(f"gpu-tconv / Pillow: {photo['time_ratio']:.2f}x the time, "
                  f"{photo['rss_ratio']:.2f}x the memory")
            result["photo"] = photo
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"upsample-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    print("wrote", path)
    return result
