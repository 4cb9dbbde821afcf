"""The upsampler as a command-line tool: the new kernels on 8- and 16-bit files, folder
runs with --jobs (byte for byte the same as --jobs 1), batches through a stage, and the
mistakes that must end in one line."""

import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gpu_tconv
from conftest import requires_gpu
from gpu_tconv import memory, pipeline
from test_cli import assert_one_line_error, run
from test_upsample import torch_bicubic


def rounded(y: np.ndarray, top: int) -> np.ndarray:
    return np.clip(np.rint(y), 0, top)


# ------------------------------------------------------------------- kernels by file

def test_bicubic_rgb_png_matches_pytorch(capsys, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    status, out, err = run(capsys, "upsample", tmp_path / "rgb.png", "--kernel", "bicubic",
                           "--scale", 3, "--backend", "numpy")
    assert status == 0, err
    result = np.asarray(Image.open(tmp_path / "rgb_x3.png"))
    expected = rounded(torch_bicubic(pixels.transpose(2, 0, 1)[None], 3)[0], 255)
    assert result.shape == (21, 27, 3) and result.dtype == np.uint8
    difference = np.abs(result - expected.transpose(1, 2, 0))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.02   # float32 ties


def test_lanczos_rgba_png_keeps_alpha_and_clips(capsys, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    pixels[:, :2] = 0
    pixels[:, 2:] = 255                     # hard edges: Lanczos overshoots, then clips
    Image.fromarray(pixels).save(tmp_path / "rgba.png")
    status, _, err = run(capsys, "upsample", tmp_path / "rgba.png", tmp_path / "big.png",
                         "--kernel", "lanczos", "--backend", "numpy")
    assert status == 0, err
    with Image.open(tmp_path / "big.png") as image:
        assert image.mode == "RGBA"
        result = np.asarray(image)
    exact = gpu_tconv.upsample(pixels.astype(np.float64), 2, "lanczos", layout="HWC")
    assert exact.max() > 255.5
    assert np.abs(result.astype(float) - rounded(exact, 255)).max() <= 1


def test_bicubic_16_bit_grey_png(capsys, tmp_path):
    pixels = np.random.default_rng(2).integers(0, 65536, (5, 6), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "grey16.png")
    status, _, err = run(capsys, "upsample", tmp_path / "grey16.png", tmp_path / "out.png",
                         "--kernel", "bicubic", "--scale", 2, "--backend", "emulated")
    assert status == 0, err
    result = np.asarray(Image.open(tmp_path / "out.png")).astype(np.float64)
    expected = rounded(torch_bicubic(pixels.astype(np.float64)[None, None], 2)[0, 0], 65535)
    assert result.shape == (10, 12) and np.abs(result - expected).max() <= 1


# --------------------------------------------------------------------- folder runs

def make_mixed_folder(root: Path) -> Path:
    folder = root / "photos"
    (folder / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(12, 9), (12, 9), (7, 13), (12, 9), (5, 5)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        where = folder / "deeper" if i % 2 else folder
        Image.fromarray(pixels).save(where / f"p{i}.png")
        Image.fromarray(pixels).save(where / f"j{i}.jpg", quality=90)
    Image.fromarray(rng.integers(0, 65536, (4, 6), dtype=np.uint16)).save(folder / "g.png")
    np.save(folder / "a.npy", rng.standard_normal((3, 4)))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kernel", ["bicubic", "lanczos"])
def test_jobs_give_the_same_bytes_as_one_job(capsys, tmp_path, kernel):
    folder = make_mixed_folder(tmp_path)
    runs = {}
    for jobs in (1, 3):
        status, out, err = run(capsys, "upsample", folder, tmp_path / f"out{jobs}",
                               "--kernel", kernel, "--jobs", jobs, "--backend", "numpy")
        assert status == 1 and "12 upsampled" in out and "1 failed" in out
        assert sum("corrupt.png" in line for line in err.splitlines()) == 1
        assert "Traceback" not in err
        runs[jobs] = tree(tmp_path / f"out{jobs}"), err
    assert runs[1] == runs[3]
    assert len(runs[1][0]) == 12 and "corrupt.png" not in runs[1][0]


def test_an_interrupted_folder_run_resumes_with_jobs(capsys, tmp_path):
    folder = make_mixed_folder(tmp_path)
    (folder / "corrupt.png").unlink()
    assert run(capsys, "upsample", folder, tmp_path / "out", "--jobs", 2)[0] == 0
    (tmp_path / "out" / "p0.png").unlink()
    status, out, _ = run(capsys, "upsample", folder, tmp_path / "out", "--jobs", 2)
    assert status == 0 and "1 upsampled" in out and "11 already done" in out
    assert not list((tmp_path / "out").rglob("*.partial"))


def numbered(n: int, shape=(4, 3)) -> list[tuple[Path, Path]]:
    return [(Path(f"in{i}"), Path(f"out{i}")) for i in range(n)]


def test_queues_are_bounded_and_results_in_order():
    loaded, saved, lock, most = [], [], threading.Lock(), [0]

    def load(path):
        with lock:
            loaded.append(path)
            most[0] = max(most[0], len(loaded) - len(saved))
        time.sleep(0.002)
        return np.full((2, 2), int(path.name[2:]), np.uint8), "key"

    def save(target, result, key):
        time.sleep(0.004 if int(target.name[3:]) % 3 else 0.0)   # out of order finishes
        with lock:
            saved.append(target)

    outcomes = list(pipeline.run(numbered(40), load, pipeline.HostStage(lambda b, k: b * 2),
                                 save, jobs=3))
    assert [o.target for o in outcomes] == [t for _, t in numbered(40)]
    assert all(o.error is None and o.shapes == ((2, 2), (2, 2)) for o in outcomes)
    # loads ahead of the computation + results waiting to be written, each <= jobs + 1
    assert most[0] <= 2 * 4 + 2


class CountingStage(pipeline.HostStage):
    overlaps = True      # the ordering of a device stage: submit next, then collect

    def __init__(self, compute):
        super().__init__(compute)
        self.batches = []

    def submit(self, batch, key):
        self.batches.append(batch.shape[0])
        return super().submit(batch, key)


def test_batches_on_the_emulated_backend_equal_one_file_at_a_time():
    rng = np.random.default_rng(4)
    shapes = [(5, 4, 3)] * 3 + [(3, 4, 3)] + [(5, 4, 3)] * 2
    arrays = {Path(f"in{i}"): rng.integers(0, 256, s, dtype=np.uint8)
              for i, s in enumerate(shapes)}
    arrays[Path("in2")] = None                                 # fails to load
    pairs = [(p, Path(f"out{p.name[2:]}")) for p in arrays]

    def load(path):
        if arrays[path] is None:
            raise ValueError(f"{path}: not a readable image")
        return arrays[path], "HWC"

    compute = lambda batch, key: gpu_tconv.upsample(batch, 2, "bicubic", layout="N" + key,
                                                    backend="emulated")
    stage, results = CountingStage(compute), {}
    outcomes = list(pipeline.run(pairs, load, stage, lambda t, r, k: results.update({t: r}),
                                 jobs=2, max_batch_bytes=3 * 60))
    assert stage.batches == [2, 1, 2]                         # stacked, up to the bound
    assert [o.error is not None for o in outcomes] == [False, False, True, False, False, False]
    for (source, target), outcome in zip(pairs, outcomes):
        if arrays[source] is not None:
            alone = gpu_tconv.upsample(arrays[source], 2, "bicubic", layout="HWC",
                                       backend="emulated")
            np.testing.assert_array_equal(results[target], alone)


class _DeviceArray(np.ndarray):
    """A stand-in CuPy array: host memory with CuPy's copy methods."""

    def set(self, arr, stream=None):
        self[...] = arr

    def get(self, stream=None, out=None, blocking=True):
        out[...] = self
        return out


class _Stream:
    log: list = []

    def __init__(self, non_blocking=False):
        self.name = f"stream{len(_Stream.log)}"

    def __enter__(self):
        _Stream.log.append(("enter", self.name))

    def __exit__(self, *exc):
        pass

    def record(self):
        _Stream.log.append(("record", self.name))
        return types.SimpleNamespace(synchronize=lambda: _Stream.log.append(("sync", self.name)))

    def wait_event(self, event):
        _Stream.log.append(("wait", self.name))


def test_cuda_stage_with_stand_in_cupy_runs_the_emulated_kernel(monkeypatch):
    # CudaStage's own code (pinned buffers, two streams, events) with CuPy standing in
    # on the host, and the emulated backend computing: batched results are the same
    # bits as one image at a time.
    cupy = types.SimpleNamespace(
        cuda=types.SimpleNamespace(Stream=_Stream),
        empty=lambda shape, dtype: np.empty(shape, dtype).view(_DeviceArray))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(empty_pinned=np.empty))
    _Stream.log = []
    stage = pipeline.CudaStage(lambda b, key: gpu_tconv.upsample(
        np.asarray(b), 2, "lanczos", layout="NHWC", backend="emulated").view(_DeviceArray))
    batches = [np.random.default_rng(i).integers(0, 256, (2, 4, 3, 3), dtype=np.uint8)
               for i in range(2)]
    handles = [stage.submit(b, None) for b in batches]
    for b, handle in zip(batches, handles):
        got = stage.collect(handle)
        for i in range(2):
            np.testing.assert_array_equal(got[i], gpu_tconv.upsample(
                b[i], 2, "lanczos", layout="HWC", backend="emulated"))
    copy, work = stage.copy_stream.name, stage.work_stream.name
    # the copy in is recorded on the copy stream, which the work stream waits for
    assert _Stream.log[:4] == [("enter", copy), ("record", copy), ("wait", work),
                               ("enter", work)]


@pytest.mark.gpu
@requires_gpu
def test_cuda_stage_overlaps_batches_and_matches_numpy():
    rng = np.random.default_rng(5)
    batches = [rng.integers(0, 256, (3, 40, 30, 3), dtype=np.uint8) for _ in range(3)]
    stage = pipeline.CudaStage(lambda b, key: gpu_tconv.upsample(b, 2, "bicubic",
                                                                 layout="NHWC", backend="cuda"))
    handles = [stage.submit(b, None) for b in batches]        # all in flight at once
    for b, handle in zip(batches, handles):
        expected = gpu_tconv.upsample(b, 2, "bicubic", layout="NHWC", backend="numpy")
        assert np.abs(stage.collect(handle).astype(int) - expected).max() <= 1


@pytest.mark.gpu
@requires_gpu
def test_cuda_folder_run_batches(capsys, tmp_path):
    folder = make_mixed_folder(tmp_path)
    status, out, _ = run(capsys, "upsample", folder, tmp_path / "gpu", "--backend", "cuda")
    assert status == 1 and "12 upsampled" in out
    for name, data in tree(tmp_path / "gpu").items():
        assert data


# ----------------------------------------------------------------- one-line errors

def test_impossible_scale_says_what_would_fit(capsys, image_file):
    status, _, err = run(capsys, "upsample", image_file, "--scale", 100000)
    assert_one_line_error(status, err, "scale 100000 would make a 600000 x 500000 result",
                          "at most scale")


@pytest.fixture
def image_file(tmp_path) -> Path:
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(tmp_path / "in.png")
    return tmp_path / "in.png"


def test_image_too_large_for_memory(capsys, image_file, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device=False: 50)
    status, _, err = run(capsys, "upsample", image_file)
    assert_one_line_error(status, err, "in.png", "decoding it needs", "available")


def test_decompression_bomb_is_an_error_unless_allowed(capsys, image_file, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)        # 30 pixels: a warning
    status, _, err = run(capsys, "upsample", image_file)
    assert_one_line_error(status, err, "in.png", "decompression bomb",
                          "--allow-large-images")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)        # > twice: Pillow's error
    assert_one_line_error(*run(capsys, "upsample", image_file)[::2], "--allow-large-images")
    status, out, _ = run(capsys, "upsample", image_file, "--allow-large-images", "--overwrite")
    assert status == 0 and "wrote" in out and Image.MAX_IMAGE_PIXELS == 10


@pytest.mark.parametrize("argv, words", [
    (["upsample", "/dev/null"], ["/dev/null", "character device, not a file"]),
    (["upsample", "{img}", "/dev/null"], ["/dev/null", "character device"]),
    (["upsample", "{tmp}/photos", "{img}"], ["in.png", "must be a folder"]),
    (["apply", "{tmp}/dir.npy", "{tmp}/w.npy", "-o", "{tmp}/y.npy"],
     ["dir.npy", "a folder, not a file"]),
    (["apply", "{tmp}/w.npy", "{tmp}/w.npy", "-o", "{tmp}/dir.npy"],
     ["dir.npy", "a folder, not a file"]),
    (["upsample", "{img}", "--jobs", "0"], ["--jobs", "at least 1"]),
])
def test_not_a_file_is_said_as_such(capsys, tmp_path, image_file, argv, words):
    (tmp_path / "photos").mkdir()
    (tmp_path / "dir.npy").mkdir()
    np.save(tmp_path / "w.npy", np.zeros((1, 1, 2)))
    status, _, err = run(capsys, *(a.format(tmp=tmp_path, img=image_file) for a in argv))
    assert_one_line_error(status, err, *words)
    assert Path("/dev/null").is_char_device()


# ------------------------------------------------------------- picture, benchmark

ROOT = Path(__file__).resolve().parent.parent
PICTURE = ROOT / "docs" / "upsample-kernels.png"
PICTURE_COMMAND = "gpu-tconv upsample --compare docs/upsample-kernels.png --scale 6"


def test_the_readme_picture_is_the_commands_output(capsys, tmp_path):
    status, out, err = run(capsys, "upsample", "--compare", tmp_path / "k.png", "--scale", 6,
                           "--backend", "numpy")
    assert status == 0, err
    fresh = np.asarray(Image.open(tmp_path / "k.png")).astype(int)
    committed = np.asarray(Image.open(PICTURE)).astype(int)
    # The same picture, up to a float32 value that rounds the other way on another
    # CPU or BLAS (at a few pixels, by one level).
    assert fresh.shape == committed.shape
    assert np.abs(fresh - committed).max() <= 1 and (fresh != committed).mean() < 0.005
    assert 10_000 < PICTURE.stat().st_size < 100_000 and fresh.shape == (158, 588, 3)
    readme = (ROOT / "README.md").read_text()
    assert PICTURE_COMMAND in readme and "docs/upsample-kernels.png" in readme.split("\n## ")[0]


def test_bench_upsample_runs_every_method(capsys, tmp_path, monkeypatch):
    import json

    from gpu_tconv import bench_upsample

    monkeypatch.setattr(bench_upsample, "SIZES", ((10, 12),))
    monkeypatch.setattr(bench_upsample, "PHOTO_SIZE", (30, 40))
    status, out, err = run(capsys, "bench", "--upsample", "--upsample-images", 1,
                           "--upsample-jobs", 2, "--upsample-photo", "--upsample-backend",
                           "numpy", "--output", tmp_path)
    assert status == 0, err
    (path,) = tmp_path.glob("upsample-*.json")
    result = json.loads(path.read_text())
    methods = {(r["method"], r["jobs"]) for r in result["rows"]}
    assert methods == {("gpu-tconv", 1), ("gpu-tconv", 2), ("pillow resize", 1),
                       ("pillow resize", 2), ("torch interpolate", 2)}
    for row in result["rows"]:
        assert row["images_per_s"] > 0 and min(row["decode"], row["compute"],
                                               row["encode"]) > 0
    assert result["photo"]["gpu-tconv"]["peak_rss_mib"] > 10
    assert "images/s" in out and "decode" in out and "12 MP JPEG" in out
