"""The ``gpu-tconv`` command line (also ``python -m gpu_tconv``).

Subcommands: ``upsample`` (images, ``.npy`` arrays and whole folders), ``apply`` (any
transposed convolution on saved arrays), ``shape`` (the size arithmetic, explained)
and ``info`` (version, backends, GPU). A user mistake (a missing file, an unreadable
image, a bad flag, impossible parameters) ends in one line on stderr and a non-zero
exit status, never a traceback.

argparse (the standard library's) parses the flags: it takes options with a variable
number of values (``--input 32 32``), which the per-dimension parameters need.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import (__version__, batch, bench_cpu, bench_gpu, bench_upsample, cuda_backend, dispatch,
               emulated_backend, explain, files, pipeline)
from .api import available_backends, conv_transpose
from .geometry import geometry_from_shapes
from .layout import spatial_layout
from .sample import SAMPLE_SIZE, sample_image
from .upsample import KERNELS, tap_count, upsample

PROG = "gpu-tconv"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
SAMPLE_NAME = "gpu-tconv-sample.png"

# How the package reports what a user can cause: bad values as ValueError/TypeError
# (geometry, upsample, files), an unusable backend as RuntimeError, file-system trouble
# as OSError. These end in one line; any other exception keeps its traceback.
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (it would print the whole usage first)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------- upsample

def _load(source: Path, args: argparse.Namespace) -> tuple[np.ndarray, tuple[str, str]]:
    """The array in ``source`` and its key: ``("image", "HW"/"HWC")`` or ``("npy", layout)``."""
    array, layout = files.read(source, args.allow_large_images)
    if layout is None:  # .npy: the flag says which axes are batch and channels
        try:
            return array, ("npy", args.layout or spatial_layout(array.ndim).letters)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from error
    return array, ("image", layout)


def _compute(batch, key: tuple[str, str], args: argparse.Namespace, backend: str):
    """The upsampled batch (NumPy or CuPy), stacked along a new first axis."""
    kind, layout = key
    if kind == "image":          # images of one size: one call for the whole stack
        return upsample(batch, args.scale, args.kernel, layout="N" + layout, backend=backend)
    xp = np if isinstance(batch, np.ndarray) else importlib.import_module("cupy")
    return xp.stack([upsample(a, args.scale, args.kernel, layout=layout, backend=backend)
                     for a in batch])


def _save(target: Path, result: np.ndarray, key) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    files.write(target, result)


def _upsample_file(source: Path, target: Path, args: argparse.Namespace,
                   backend: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Read, upsample and write one file; the shapes before and after."""
    array, key = _load(source, args)
    try:
        result = _compute(array[None], key, args, backend)[0]
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source}: {error}") from error
    _save(target, result, key)
    return array.shape, result.shape


def _upsample_sample(args: argparse.Namespace, backend: str) -> int:
    image = sample_image()
    source, target = Path(SAMPLE_NAME), batch.default_output(Path(SAMPLE_NAME), args.scale)
    files.write(source, image)
    start = time.perf_counter()
    shapes = _upsample_file(source, target, args, backend)
    print(f"wrote {source} (the built-in {SAMPLE_SIZE}x{SAMPLE_SIZE} sample) and {target} "
          f"({_describe(shapes, args, backend, start)})")
    return 0


#: Input bytes stacked into one batch on the GPU: large enough that a launch covers many
#: photos, small enough for the batch, its float copy and the result on any GPU.
CUDA_BATCH_BYTES = 64 * 2**20


def _folder_stage(args: argparse.Namespace, backend: str):
    compute = lambda batch, key: _compute(batch, key, args, backend)
    if backend == "cuda":
        return pipeline.CudaStage(compute), CUDA_BATCH_BYTES
    return pipeline.HostStage(compute), 0


def _upsample_folder(source: Path, target: Path, args: argparse.Namespace, backend: str) -> int:
    from tqdm import tqdm

    if target.exists() and not target.is_dir():
        raise ValueError(f"{target}: {files.what_is(target)}; the output of a folder must be "
                         "a folder")
    plan = batch.plan_folder(source, target, args.overwrite)
    stage, batch_bytes = _folder_stage(args, backend)
    failed = 0
    # The bar goes to stderr and only to a terminal, so piped output stays clean.
    with tqdm(total=len(plan.todo), desc=PROG, unit="file", disable=None,
              file=sys.stderr) as bar:
        for outcome in pipeline.run(plan.todo, lambda path: _load(path, args), stage, _save,
                                    args.jobs, batch_bytes):
            bar.update()
            if outcome.error is not None:   # one bad file does not stop the run
                failed += 1
                message = str(outcome.error)
                if not message.startswith(str(outcome.source)):
                    message = f"{outcome.source}: {message}"
                tqdm.write(f"{PROG}: error: {message}", file=sys.stderr)
    print(f"{target}: {len(plan.todo) - failed} upsampled ({args.kernel} x{args.scale}, "
          f"{backend} backend, {args.jobs} jobs), {len(plan.done)} already done and skipped, "
          f"{len(plan.ignored)} ignored (not {'/'.join(files.SUFFIXES)}), {failed} failed")
    if failed:
        _fail(f"{failed} of {len(plan.todo)} files failed; the others are written, and "
              "running the same command again retries only the failed ones")
    return EXIT_ERROR if failed else 0


def _describe(shapes, args: argparse.Namespace, backend: str, start: float) -> str:
    before, after = (" x ".join(map(str, s)) for s in shapes)
    return (f"{before} -> {after}, {args.kernel} x{args.scale} on the {backend} backend, "
            f"{time.perf_counter() - start:.2f} s")


def _upsample_compare(args: argparse.Namespace, backend: str) -> int:
    from .compare import COMPARED, kernel_comparison

    image = None
    if args.input is not None:
        image, key = _load(Path(args.input), args)
        if key != ("image", "HWC") and key != ("image", "HW"):
            raise ValueError(f"{args.input}: --compare takes an image")
    picture = kernel_comparison(image, args.scale, backend)
    target = Path(args.compare)
    target.parent.mkdir(parents=True, exist_ok=True)
    files.write(target, picture)
    print(f"wrote {target}: {', '.join(COMPARED)} x{args.scale} side by side "
          f"({picture.shape[1]}x{picture.shape[0]}, {target.stat().st_size // 1024} KiB)")
    return 0


def _cmd_upsample(args: argparse.Namespace) -> int:
    tap_count(args.kernel, args.scale)                 # a bad --scale fails before any I/O
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    backend = dispatch.resolve(args.backend)           # so does an unusable --backend
    if args.compare:
        return _upsample_compare(args, backend)
    if args.input is None:
        return _upsample_sample(args, backend)
    source = Path(args.input)
    if not source.exists():
        raise ValueError(f"{source}: no such file or folder")
    target = Path(args.output) if args.output else batch.default_output(source, args.scale)
    if source.is_dir():
        return _upsample_folder(source, target, args, backend)
    if not source.is_file():
        raise ValueError(f"{source}: {files.what_is(source)}")
    if target.is_dir():
        target = target / source.name
    if os.path.lexists(target) and not target.is_file():
        raise ValueError(f"{target}: {files.what_is(target)}; give a file or folder to write")
    if target.exists() and not args.overwrite:
        print(f"{target} exists, skipped (--overwrite replaces it)")
        return 0
    start = time.perf_counter()
    shapes = _upsample_file(source, target, args, backend)
    print(f"wrote {target} ({_describe(shapes, args, backend, start)})")
    return 0


# ------------------------------------------------------------------------ apply, shape

def _int_or_tuple(values: list[int]):
    """One value for every dimension, or one per dimension (geometry checks the count)."""
    return values[0] if len(values) == 1 else tuple(values)


def _geometry_params(args: argparse.Namespace) -> dict:
    return dict(stride=_int_or_tuple(args.stride), padding=_int_or_tuple(args.padding),
                output_padding=_int_or_tuple(args.output_padding),
                dilation=_int_or_tuple(args.dilation))


def _read_npy(name: str, path: str) -> np.ndarray:
    if Path(path).suffix.lower() != ".npy":
        raise ValueError(f"{name} must be a .npy file, got {path}")
    return files.read(Path(path))[0]


def _cmd_apply(args: argparse.Namespace) -> int:
    x, weight = _read_npy("X", args.x), _read_npy("W", args.weight)
    bias = None if args.bias is None else _read_npy("--bias", args.bias)
    if Path(args.output).suffix.lower() != ".npy":
        raise ValueError(f"-o must name a .npy file, got {args.output}")
    y = conv_transpose(x, weight, bias, groups=args.groups, backend=args.backend,
                       **_geometry_params(args))
    files.write(Path(args.output), y)
    print(f"wrote {args.output}: shape {y.shape}, {y.dtype}")
    return 0


def _cmd_shape(args: argparse.Namespace) -> int:
    rank = len(args.input)
    if not 1 <= rank <= 3:
        raise ValueError(f"--input takes 1 to 3 sizes (one per spatial dimension), got {rank}")
    kernel = args.kernel * rank if len(args.kernel) == 1 else args.kernel
    if len(kernel) != rank:
        raise ValueError(f"--kernel takes 1 or {rank} sizes (as many as --input), "
                         f"got {len(kernel)}")
    g = geometry_from_shapes((1, 1, *args.input), (1, 1, *kernel), **_geometry_params(args))
    print(f"output size: {' x '.join(map(str, g.out_size))}")
    print("\n".join(explain.formula_lines(g)))
    if args.explain:
        print()
        print("\n".join(explain.gather_lines(g)))
    return 0


# -------------------------------------------------------------------------------- info

def _cmd_info(args: argparse.Namespace) -> int:
    print(f"{PROG} {__version__} (Python {platform.python_version()}, NumPy {np.__version__})")
    print(f"backends usable here: {', '.join(available_backends())} "
          f"(auto runs {dispatch.resolve('auto')})")
    reason = cuda_backend.unavailable_reason()
    if reason is not None:
        cupy = cuda_backend.cupy_version()
        print(f"cuda: unusable: {reason}" + (f" (CuPy {cupy} is installed)" if cupy else ""))
    else:
        d = cuda_backend.describe()
        print(f"cuda: CuPy {d['cupy']}, CUDA runtime {d['runtime']}, driver supports CUDA "
              f"{d['driver']}, NVRTC {d['nvrtc']}")
        for device in d["devices"]:
            print(f"  GPU {device['id']}: {device['name']}, compute capability "
                  f"{device['compute_capability']}, {device['memory_bytes'] / 2**30:.1f} GiB")
    reason = emulated_backend.unavailable_reason()
    print(f"emulated: unusable: {reason}" if reason
          else f"emulated: the CUDA source on the CPU, built with {emulated_backend.compiler()}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.upsample:
        bench_upsample.run_from_args(args)
        return 0
    (bench_cpu if args.cpu else bench_gpu).run_from_args(args)
    return 0


# ------------------------------------------------------------------------------ parser

def _add_command(commands, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=summary, description=summary,
                               epilog=f"example:\n{example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_geometry_flags(parser: argparse.ArgumentParser) -> None:
    for flag, default, what in (("--stride", 1, "stride"), ("--padding", 0, "padding"),
                                ("--output-padding", 0, "output padding"),
                                ("--dilation", 1, "dilation")):
        parser.add_argument(flag, type=int, nargs="+", default=[default], metavar="N",
                            help=f"{what}: one value, or one per spatial dimension "
                                 f"(default {default})")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, for ``main`` and for reading its help."""
    parser = _Parser(prog=PROG, description="Transposed convolution and upsampling on the "
                     "GPU (CUDA through CuPy), with a NumPy fallback.",
                     epilog=f"example:\n  {PROG} upsample          # upsample a built-in sample "
                     f"image\n  {PROG} <command> --help  # each command's flags and an example",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = _add_command(
        commands, "upsample", "Upsample images, .npy arrays or whole folders by an integer "
        "factor, with a depthwise transposed convolution.",
        f"  {PROG} upsample                         # the built-in sample, written here\n"
        f"  {PROG} upsample photo.png --scale 4     # -> photo_x4.png\n"
        f"  {PROG} upsample volume.npy big.npy --scale 2 --layout NCDHW\n"
        f"  {PROG} upsample shots/ --scale 3        # -> shots_x3/, resumable\n"
        f"  {PROG} upsample photo.jpg --kernel lanczos\n"
        f"  {PROG} upsample --compare kernels.png --scale 6   # the kernels side by side\n\n"
        "Images are PNG, JPEG or TIFF; integer data is rounded and clipped back to its "
        "dtype.\nAn output that exists is kept (a folder run resumes where it stopped) "
        "unless --overwrite.")
    p.add_argument("input", nargs="?", metavar="IN",
                   help="image, .npy file or folder (every file below it); "
                        "none: the built-in sample image")
    p.add_argument("output", nargs="?", metavar="OUT",
                   help="file or folder to write (default: IN's name with _xN, beside it); "
                        "a file's format follows its suffix")
    p.add_argument("--scale", type=int, default=2, metavar="N",
                   help="factor for every spatial size (default 2)")
    p.add_argument("--kernel", choices=KERNELS, default="bilinear",
                   help="bilinear: linear/bilinear/trilinear interpolation, equal to PyTorch's "
                        "interpolate(align_corners=False); bicubic: Keys a=-0.75, equal to "
                        "PyTorch's bicubic; lanczos: a=3, as Pillow's LANCZOS; nearest: "
                        "repeat each element (default bilinear)")
    p.add_argument("--layout", metavar="AXES",
                   help="for .npy arrays: one letter per axis, N batch, C channels, any "
                        "other letter spatial (e.g. NCHW, HWC, NCDHW); default: every axis "
                        "spatial. Images are always HW or HWC")
    p.add_argument("--backend", choices=dispatch.BACKENDS, default="auto",
                   help="default auto: cuda when usable, else numpy")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    p.add_argument("--jobs", type=int, default=pipeline.default_jobs(), metavar="N",
                   help="threads that read, decode, encode and write files in a folder run "
                        "while the upsampling computes (default: the cores, "
                        f"{pipeline.default_jobs()} here); results do not depend on it")
    p.add_argument("--compare", metavar="OUT.png",
                   help="write IN (default: a crop of the built-in sample) upsampled with "
                        "every kernel, side by side and labelled, to OUT.png")
    p.add_argument("--allow-large-images", action="store_true",
                   help="read images above Pillow's decompression-bomb limit "
                        "(about 89 megapixels)")
    p.set_defaults(run=_cmd_upsample)

    p = _add_command(
        commands, "apply", "Run any transposed convolution (PyTorch's conv_transpose1d/2d/3d) "
        "on arrays saved as .npy.",
        f"  {PROG} apply x.npy w.npy -o y.npy --stride 2 --padding 1\n\n"
        "X is (N, C_in, *spatial), W is (C_in, C_out/groups, *kernel), the bias (C_out,); "
        "all float16, float32 or float64, of one dtype.")
    p.add_argument("x", metavar="X.npy", help="input, (N, C_in, *spatial)")
    p.add_argument("weight", metavar="W.npy", help="weight, (C_in, C_out/groups, *kernel)")
    p.add_argument("-o", "--output", required=True, metavar="Y.npy", help="result to write")
    p.add_argument("--bias", metavar="B.npy", help="bias, (C_out,)")
    _add_geometry_flags(p)
    p.add_argument("--groups", type=int, default=1, metavar="G",
                   help="split channels into G independent groups (default 1)")
    p.add_argument("--backend", choices=dispatch.BACKENDS, default="auto",
                   help="default auto: cuda when usable, else numpy")
    p.set_defaults(run=_cmd_apply)

    p = _add_command(
        commands, "shape", "Print the output size of a transposed convolution and the "
        "formula with the numbers filled in; say which rule impossible parameters break.",
        f"  {PROG} shape --input 32 32 --kernel 4 --stride 2 --padding 1\n"
        f"  {PROG} shape --input 3 --kernel 3 --stride 2 --explain   # who reaches which output")
    p.add_argument("--input", type=int, nargs="+", required=True, metavar="SIZE",
                   help="input spatial sizes, 1 to 3 of them")
    p.add_argument("--kernel", type=int, nargs="+", required=True, metavar="K",
                   help="kernel size: one value, or one per spatial dimension")
    _add_geometry_flags(p)
    p.add_argument("--explain", action="store_true",
                   help="also list, for each output element, the input elements and kernel "
                        f"taps summed into it (1-D and 2-D, up to "
                        f"{explain.MAX_EXPLAINED_OUTPUTS} outputs)")
    p.set_defaults(run=_cmd_shape)

    p = _add_command(
        commands, "bench", "Time gpu_tconv's CUDA kernels against cuDNN and GEMM + col2im on "
        "standard layer shapes (without a GPU: says so); with --cpu, the NumPy backend against "
        "PyTorch's CPU conv_transpose; with --upsample, folder runs of the upsampler against "
        "Pillow and PyTorch. Print a table, write JSON.",
        f"  {PROG} bench --only DCGAN --dtypes float16\n  {PROG} bench --cpu\n"
        f"  {PROG} bench --cpu --only DCGAN --repeats 3\n"
        f"  {PROG} bench --upsample --upsample-photo   # images/s against Pillow and PyTorch")
    p.add_argument("--cpu", action="store_true",
                   help="the CPU benchmark instead of the GPU one")
    bench_cpu.add_arguments(p)
    bench_gpu.add_arguments(p)
    bench_upsample.add_arguments(p)
    p.set_defaults(run=_cmd_bench)

    p = _add_command(commands, "info", "Print the version, the backends usable here and why "
                     "CUDA is not, or the GPUs with their CUDA and CuPy versions.",
                     f"  {PROG} info")
    p.set_defaults(run=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version or a usage error, already printed
        return int(done.code or 0)
    try:
        return args.run(args)
    except BrokenPipeError:
        # The reader went away (`gpu-tconv shape ... | head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except USER_ERRORS as error:
        _fail(str(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _fail("interrupted (a folder run resumes where it stopped when run again)")
        return EXIT_INTERRUPTED
