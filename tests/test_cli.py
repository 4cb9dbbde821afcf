"""The ``gpu-tconv`` command line, run in process through ``cli.main`` (and once as
``python -m gpu_tconv``), against PyTorch and NumPy as oracles."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gpu_tconv
from gpu_tconv import cli, cuda_backend
from oracles import TORCH_TRANSPOSED, Problem, torch_conv_transpose, torch_interpolate


def run(capsys, *argv):
    """(exit status, stdout, stderr) of one command line."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status, err, *words):
    assert status != 0
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


def torch_upsampled_uint8(image: np.ndarray, scale: int) -> np.ndarray:
    """PyTorch's bilinear interpolation of an (H, W, C) uint8 image, rounded, in float64."""
    y = torch_interpolate(image.astype(np.float64).transpose(2, 0, 1)[None], scale, "bilinear")
    return np.clip(np.rint(y[0].transpose(1, 2, 0)), 0, 255)


@pytest.fixture
def image(tmp_path) -> tuple[Path, np.ndarray]:
    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


# ------------------------------------------------------------------------------ help

@pytest.mark.parametrize("command", [[], ["upsample"], ["apply"], ["shape"], ["info"]])
def test_help_has_an_example(capsys, command):
    status, out, _ = run(capsys, *command, "--help")
    assert status == 0 and "example:" in out and "gpu-tconv" in out


def test_python_dash_m_runs_the_command_line(tmp_path):
    root = Path(gpu_tconv.__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "gpu_tconv", "shape", "--input", "4",
                           "--kernel", "2", "--stride", "2"], capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and "output size: 8" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-m", "gpu_tconv", "upsample", "missing.png"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert_one_line_error(done.returncode, done.stderr, "missing.png")


# ---------------------------------------------------------------------------- upsample

@pytest.mark.parametrize("backend", ["numpy", "emulated"])
@pytest.mark.parametrize("scale", [2, 3])
def test_png_round_trip_matches_pytorch(capsys, tmp_path, image, backend, scale):
    path, pixels = image
    status, out, _ = run(capsys, "upsample", path, "--scale", scale, "--backend", backend)
    assert status == 0, out
    result = np.asarray(Image.open(tmp_path / f"in_x{scale}.png"))
    assert result.dtype == np.uint8 and result.shape == (6 * scale, 5 * scale, 3)
    # Float32 arithmetic may round a value that is exactly half way the other way.
    difference = np.abs(result.astype(np.float64) - torch_upsampled_uint8(pixels, scale))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.02


def test_nearest_on_a_grey_16_bit_png(capsys, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 65536, (4, 3), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "grey.png")
    status, _, _ = run(capsys, "upsample", tmp_path / "grey.png", tmp_path / "big.tif",
                       "--scale", 3, "--kernel", "nearest")
    assert status == 0
    result = np.asarray(Image.open(tmp_path / "big.tif"))
    np.testing.assert_array_equal(result, np.repeat(np.repeat(pixels, 3, 0), 3, 1))


def test_npy_with_layout(capsys, tmp_path):
    x = np.random.default_rng(2).standard_normal((3, 4, 2)).astype(np.float32)  # H, W, C
    np.save(tmp_path / "x.npy", x)
    status, _, _ = run(capsys, "upsample", tmp_path / "x.npy", tmp_path / "y.npy",
                       "--layout", "HWC", "--scale", 2)
    assert status == 0
    expected = torch_interpolate(x.transpose(2, 0, 1)[None], 2, "bilinear")[0].transpose(1, 2, 0)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=2e-6)


def test_npy_default_layout_is_all_spatial(capsys, tmp_path):
    np.save(tmp_path / "signal.npy", np.arange(4.0))
    assert run(capsys, "upsample", tmp_path / "signal.npy", "--kernel", "nearest")[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "signal_x2.npy"), np.repeat(np.arange(4.0), 2))


def test_existing_output_is_kept_unless_overwrite(capsys, tmp_path, image):
    path, _ = image
    target = tmp_path / "in_x2.png"
    target.write_bytes(b"old")
    status, out, _ = run(capsys, "upsample", path)
    assert status == 0 and "skipped" in out and target.read_bytes() == b"old"
    assert run(capsys, "upsample", path, "--overwrite")[0] == 0
    assert np.asarray(Image.open(target)).shape == (12, 10, 3)


def test_no_input_upsamples_the_sample_here(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, _ = run(capsys, "upsample", "--scale", 3, "--backend", "numpy")
    assert status == 0 and "gpu-tconv-sample_x3.png" in out
    sample = np.asarray(Image.open(tmp_path / "gpu-tconv-sample.png"))
    result = np.asarray(Image.open(tmp_path / "gpu-tconv-sample_x3.png"))
    assert sample.shape == (64, 64, 3) and result.shape == (192, 192, 3)
    assert np.abs(result.astype(float) - torch_upsampled_uint8(sample, 3)).max() <= 1
    assert (tmp_path / "gpu-tconv-sample.png").stat().st_size < 8192


def make_folder(root: Path) -> Path:
    folder = root / "shots"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (3, 5), dtype=np.uint8)).save(folder / "sub" / "b.tiff")
    np.save(folder / "sub" / "c.npy", rng.standard_normal((2, 3)))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_run_resumes_and_overwrites(capsys, tmp_path):
    folder = make_folder(tmp_path)
    status, out, _ = run(capsys, "upsample", folder, "--scale", 2)
    target = tmp_path / "shots_x2"
    outputs = sorted(p.relative_to(target).as_posix() for p in target.rglob("*"))
    assert status == 0 and outputs == ["a.png", "sub", "sub/b.tiff", "sub/c.npy"]
    assert "3 upsampled" in out and "1 ignored" in out
    assert np.load(target / "sub" / "c.npy").shape == (4, 6)
    assert np.asarray(Image.open(target / "sub" / "b.tiff")).shape == (6, 10)

    # Resume: a finished output is not redone; a missing one is.
    (target / "a.png").write_bytes(b"sentinel")
    (target / "sub" / "c.npy").unlink()
    status, out, _ = run(capsys, "upsample", folder, "--scale", 2)
    assert status == 0 and "1 upsampled" in out and "2 already done" in out
    assert (target / "a.png").read_bytes() == b"sentinel"
    assert (target / "sub" / "c.npy").exists()

    status, out, _ = run(capsys, "upsample", folder, "--scale", 2, "--overwrite")
    assert status == 0 and "3 upsampled" in out
    assert np.asarray(Image.open(target / "a.png")).shape == (8, 8, 3)
    assert not list(target.rglob("*.partial"))


def test_folder_run_reports_bad_files_and_goes_on(capsys, tmp_path):
    folder = make_folder(tmp_path)
    (folder / "broken.png").write_bytes(b"not a png")
    status, out, err = run(capsys, "upsample", folder, tmp_path / "out")
    assert status == 1 and "3 upsampled" in out and "1 failed" in out
    assert "broken.png" in err and "Traceback" not in err
    assert (tmp_path / "out" / "a.png").exists() and not (tmp_path / "out" / "broken.png").exists()


def test_folder_output_inside_input_is_refused(capsys, tmp_path):
    folder = make_folder(tmp_path)
    status, _, err = run(capsys, "upsample", folder, folder / "big")
    assert_one_line_error(status, err, "inside")


@pytest.mark.parametrize("argv, words", [
    (["upsample", "{tmp}/missing.png"], ["missing.png", "no such file"]),
    (["upsample", "{tmp}/garbage.png"], ["garbage.png", "not a readable image"]),
    (["upsample", "{tmp}/notes.txt"], ["unsupported file type"]),
    (["upsample", "{tmp}/in.png", "--scale", "0"], ["scale"]),
    (["upsample", "{tmp}/in.png", "--scale", "two"], ["--scale", "invalid int"]),
    (["upsample", "{tmp}/in.png", "--kernel", "cubic"], ["--kernel", "invalid choice"]),
    (["upsample", "{tmp}/in.png", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["upsample", "{tmp}/in.png", "{tmp}/out.jpg", "--overwrite"], []),       # succeeds
    (["upsample", "{tmp}/rgba.png", "{tmp}/out2.jpg"], ["RGBA", "JPEG"]),
    (["upsample", "{tmp}/four.npy"], ["four.npy", "layout"]),
    (["upsample", "{tmp}/four.npy", "--layout", "NCH"], ["four.npy", "4 axes"]),
    (["upsample", "{tmp}/in.png", "--backend", "cuda"], ["cuda"]),
    (["frobnicate"], ["invalid choice"]),
    ([], ["required"]),
])
def test_user_errors_are_one_line(capsys, tmp_path, image, argv, words):
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG but no")
    (tmp_path / "notes.txt").write_text("hello")
    Image.fromarray(np.zeros((2, 2, 4), np.uint8)).save(tmp_path / "rgba.png")
    np.save(tmp_path / "four.npy", np.zeros((1, 1, 2, 2)))
    if "cuda" in argv and cuda_backend.unavailable_reason() is None:
        pytest.skip("a GPU is usable here")
    status, _, err = run(capsys, *(a.format(tmp=tmp_path) for a in argv))
    if not words:
        assert status == 0
        return
    assert_one_line_error(status, err, *words)
    assert not list(tmp_path.glob(".*.partial"))


# ------------------------------------------------------------------------------- apply

@pytest.mark.parametrize("rank, params", [
    (1, dict(stride=3, padding=1, output_padding=2, dilation=1, groups=1)),
    (2, dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), dilation=(1, 2), groups=2)),
    (3, dict(stride=2, padding=0, output_padding=0, dilation=1, groups=1)),
])
def test_apply_matches_pytorch(capsys, tmp_path, rank, params):
    rng = np.random.default_rng(rank)
    groups = params["groups"]
    x = rng.standard_normal((2, 2 * groups) + (4, 3, 2)[:rank])
    w = rng.standard_normal((2 * groups, 3) + (3, 2, 2)[:rank])
    b = rng.standard_normal(3 * groups)
    for name, a in (("x", x), ("w", w), ("b", b)):
        np.save(tmp_path / f"{name}.npy", a)
    flags = []
    for key in ("stride", "padding", "output_padding", "dilation"):
        value = params[key]
        flags += [f"--{key.replace('_', '-')}", *map(str, np.atleast_1d(value))]
    status, out, err = run(capsys, "apply", tmp_path / "x.npy", tmp_path / "w.npy", "-o",
                           tmp_path / "y.npy", "--bias", tmp_path / "b.npy", *flags,
                           "--groups", groups, "--backend", "numpy")
    assert status == 0, err
    expected = torch_conv_transpose(Problem(x, w, b, params))
    y = np.load(tmp_path / "y.npy")
    assert y.shape == expected.shape and f"shape {y.shape}" in out
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("extra, words", [
    (["--stride", "2", "1"], ["stride", "tuple of 1"]),
    (["--groups", "2"], ["groups"]),
    (["--padding", "9"], ["padding", "too large"]),
    (["--bias", "{tmp}/missing.npy"], ["missing.npy"]),
])
def test_apply_errors_are_one_line(capsys, tmp_path, extra, words):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 4)))
    np.save(tmp_path / "w.npy", np.zeros((3, 1, 2)))
    status, _, err = run(capsys, "apply", tmp_path / "x.npy", tmp_path / "w.npy", "-o",
                         tmp_path / "y.npy", *(a.format(tmp=tmp_path) for a in extra))
    assert_one_line_error(status, err, *words)
    assert not (tmp_path / "y.npy").exists()


def test_apply_refuses_integer_arrays(capsys, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 4), np.int64))
    np.save(tmp_path / "w.npy", np.zeros((1, 1, 2), np.int64))
    status, _, err = run(capsys, "apply", tmp_path / "x.npy", tmp_path / "w.npy", "-o",
                         tmp_path / "y.npy")
    assert_one_line_error(status, err, "float")


# ------------------------------------------------------------------------------- shape

def shape_argv(sizes, kernel, **params) -> list[str]:
    """``shape`` flags for these sizes; parameters are one value or one per dimension."""
    argv = ["--input", *map(str, sizes), "--kernel", *map(str, np.atleast_1d(kernel))]
    for name, value in params.items():
        argv += [f"--{name.replace('_', '-')}", *map(str, np.atleast_1d(value))]
    return argv


def per_dim(value, rank: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.broadcast_to(value, rank))


def torch_output(x: torch.Tensor, w: torch.Tensor, **params) -> np.ndarray:
    """PyTorch's transposed convolution (1, 1, *spatial), parameters as the command line's."""
    rank = x.ndim - 2
    params = {k: per_dim(v, rank) for k, v in params.items()}
    return TORCH_TRANSPOSED[rank](x, w, **params)[0, 0].numpy()


@pytest.mark.parametrize("sizes, kernel, params", [
    ((32, 32), 4, dict(stride=2, padding=1)),
    ((5,), 3, dict(stride=3, output_padding=2)),
    ((4, 6, 2), (3, 1, 2), dict(stride=(2, 1, 3), dilation=(2, 1, 1), padding=(1, 0, 0))),
])
def test_shape_matches_pytorch(capsys, sizes, kernel, params):
    status, out, _ = run(capsys, "shape", *shape_argv(sizes, kernel, **params))
    assert status == 0
    kernel = per_dim(kernel, len(sizes))
    expected = torch_output(torch.zeros((1, 1, *sizes)), torch.zeros((1, 1, *kernel)),
                            **params).shape
    assert out.splitlines()[0] == "output size: " + " x ".join(map(str, expected))
    # Each formula line's arithmetic is right as printed.
    lines = out.splitlines()[2:]
    assert len(lines) == len(sizes)
    for line in lines:
        left, right = line.split(":", 1)[1].split("=")
        assert set(left) <= set("0123456789 +-*()") and eval(left) == int(right)


@pytest.mark.parametrize("argv, words", [
    (["--input", "3", "--kernel", "3", "--stride", "2", "--output-padding", "2"],
     ["output_padding must be smaller than either stride or dilation"]),
    (["--input", "3", "--kernel", "3", "--padding", "5"], ["padding", "too large", "output size"]),
    (["--input", "3", "--kernel", "3", "--stride", "0"], ["stride must be at least 1"]),
    (["--input", "3", "3", "--kernel", "3", "3", "3"], ["--kernel takes 1 or 2"]),
    (["--input", "3", "3", "--kernel", "3", "--stride", "1", "2", "3"], ["stride", "tuple of 2"]),
    (["--input", "3", "3", "3", "3", "--kernel", "3"], ["--input takes 1 to 3"]),
    (["--input", "0", "--kernel", "3"], ["empty"]),
    (["--input", "3"], ["required", "--kernel"]),
    (["--input", "3", "--kernel", "x"], ["--kernel", "invalid int"]),
])
def test_shape_errors_name_the_rule(capsys, argv, words):
    status, _, err = run(capsys, "shape", *argv)
    assert_one_line_error(status, err, *words)


@pytest.mark.parametrize("sizes, kernel, params", [
    ((3,), 3, dict(stride=2)),
    ((4,), 3, dict(stride=3, padding=2, output_padding=1, dilation=2)),
    ((2, 3), (3, 2), dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0))),
])
def test_explain_matches_one_hot_convolutions(capsys, sizes, kernel, params):
    """Each (input, tap) pair listed under y[o] is exactly where PyTorch puts x[i]*w[k]."""
    status, out, _ = run(capsys, "shape", *shape_argv(sizes, kernel, **params), "--explain")
    assert status == 0
    index = lambda text: tuple(map(int, text.split(",")))
    listed = {}
    for line in out.splitlines():
        if match := re.fullmatch(r"y\[([\d,]+)\] = (.*)", line):
            listed[index(match[1])] = {
                (index(i), index(k))
                for i, k in re.findall(r"x\[([\d,]+)\]\*w\[([\d,]+)\]", match[2])}
    kernel = per_dim(kernel, len(sizes))
    expected = {}
    for i in np.ndindex(*sizes):
        for k in np.ndindex(*kernel):
            x, w = torch.zeros((1, 1, *sizes)), torch.zeros((1, 1, *kernel))
            x[(0, 0) + i], w[(0, 0) + k] = 1, 1
            y = torch_output(x, w, **params)
            for o in np.ndindex(*y.shape):
                expected.setdefault(o, set()).update([(i, k)] if y[o] else [])
    assert listed == expected


def test_explain_refuses_large_cases(capsys):
    status, _, err = run(capsys, "shape", "--input", "32", "32", "--kernel", "4", "--explain")
    assert_one_line_error(status, err, "--explain", "small")


# -------------------------------------------------------------------------------- info

def test_info_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(cuda_backend, "unavailable_reason", lambda: "no driver, for the test")
    status, out, _ = run(capsys, "info")
    assert status == 0
    assert f"gpu-tconv {gpu_tconv.__version__}" in out
    assert "backends usable here: numpy, emulated" in out
    assert "cuda: unusable: no driver, for the test" in out


def test_info_with_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(cuda_backend, "unavailable_reason", lambda: None)
    monkeypatch.setattr(cuda_backend, "describe", lambda: {
        "cupy": "14.0.0", "runtime": "13.0", "driver": "13.1", "nvrtc": "13.0",
        "devices": [{"id": 0, "name": "Test GPU", "compute_capability": "9.0",
                     "memory_bytes": 80 * 2**30}]})
    status, out, _ = run(capsys, "info")
    assert status == 0 and "backends usable here: cuda, numpy" in out
    assert "CuPy 14.0.0, CUDA runtime 13.0" in out
    assert "GPU 0: Test GPU, compute capability 9.0, 80.0 GiB" in out


def test_info_here(capsys):
    status, out, _ = run(capsys, "info")
    reason = cuda_backend.unavailable_reason()
    assert status == 0 and (f"cuda: unusable: {reason}" in out if reason else "GPU 0:" in out)
