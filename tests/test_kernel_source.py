"""The CUDA source, proven without a GPU: every variant compiles for every target
architecture, and the same unmodified source, built for the CPU, computes the right
numbers over its whole launch grid."""

import importlib.util
import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpu_tconv
from gpu_tconv import col2im, cuda_backend, emulated_backend, launch, launch_limits, variants
from gpu_tconv.geometry import geometry_from_shapes
from gpu_tconv.reference import conv_transpose_reference
from conftest import require_toolchain
from oracles import Problem, assert_close, problems

ARCHITECTURES = [75, 80, 90, 120]
# Every variant at its largest specialization: 3-D (the most index arithmetic) with as
# many taps along the row as the specialized variants unroll.
WORST_CASE = geometry_from_shapes((1, 1, 2, 2, 9), (1, 1, 2, 2, variants.MAX_UNROLLED_TAPS))
# Source, compile-time definitions and every instantiation of each kernel: the variants,
# and the col2im kernel of the GPU benchmark's GEMM + col2im peer.
UNITS = {name: (v.source, v.defines(WORST_CASE), launch.all_kernel_expressions(v.kernel))
         for name, v in variants.VARIANTS.items() if not isinstance(v, variants.WmmaVariant)}
# The tensor-core kernel: float16, bfloat16 and float32 (TF32); sm_75 has float16 only.
WMMA_TYPES = {75: ("__half",), 80: ("__half", "__nv_bfloat16", "float")}
UNITS.update({
    f"wmma_sm{arch}": (v.source, v.defines(WORST_CASE),
                       [f"{v.kernel}<{t}, {i}>" for t in WMMA_TYPES[min(arch, 80)]
                        for i, _ in launch.INDEX_TYPES.values()])
    for name, v in variants.VARIANTS.items() if isinstance(v, variants.WmmaVariant)
    for arch in (75, 80)})
UNITS["col2im"] = (col2im.SOURCE, (), [f"gpu_tconv::col2im<{t}>" for t in launch.C_TYPES.values()])
UNITS["gradients"] = (launch.KERNEL_FILE, (),
                      launch.all_kernel_expressions(launch.KERNEL_NAMES["grad_input"])
                      + launch.all_kernel_expressions(launch.KERNEL_NAMES["grad_weight"])
                      + launch.all_kernel_expressions(launch.KERNEL_NAMES["grad_weight_partial"])
                      + launch.all_kernel_expressions(launch.KERNEL_NAMES["grad_weight_combine"]))
COMPILE_CASES = [(arch, name) for arch in ARCHITECTURES for name in UNITS
                 if not name.startswith("wmma_sm") or int(name[7:]) == min(arch, 80)]


@pytest.mark.parametrize("arch, name", COMPILE_CASES)
def test_compiles_with_nvrtc_as_cupy_does(arch, name):
    require_toolchain(importlib.util.find_spec("cupy") is not None,
                      "the NVRTC compile check needs CuPy (pip install .[cuda])")
    from cupy._core.core import assemble_cupy_compiler_options
    from cupy.cuda import nvrtc

    source, defines, expressions = UNITS[name]
    options = (assemble_cupy_compiler_options(cuda_backend.compile_options(source))
               + (f"-arch=sm_{arch}",))
    program = nvrtc.createProgram(launch.kernel_code(source, defines), source, [], [])
    try:
        for expression in expressions:
            nvrtc.addNameExpression(program, expression)
        try:
            nvrtc.compileProgram(program, options)
        finally:
            log = nvrtc.getProgramLog(program).strip("\0 \n")
        assert log == "", log
        assert len(nvrtc.getCUBIN(program)) > 0
        for expression in expressions:
            assert nvrtc.getLoweredName(program, expression).startswith("_Z")
    finally:
        nvrtc.destroyProgram(program)


@pytest.mark.parametrize("arch, name", COMPILE_CASES)
def test_compiles_with_nvcc_without_spills(arch, name, tmp_path):
    require_toolchain(shutil.which("nvcc") is not None, "nvcc is not on the PATH")
    source, defines, expressions = UNITS[name]
    # Taking each instantiation's address makes nvcc generate its device code.
    unit = tmp_path / "instances.cu"
    unit.write_text("".join(f"#define {k} {v}\n" for k, v in defines)
                    + f'#include "{launch.kernel_source_path(source)}"\n'
                    "void* gpu_tconv_instances[] = {\n"
                    + "".join(f"    (void*)&{e},\n" for e in expressions)
                    + "};\n")
    done = subprocess.run(["nvcc", "-cubin", f"-arch=sm_{arch}", "-Xptxas", "-v", "-o",
                           str(tmp_path / "out.cubin"), str(unit)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    reports = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", done.stderr)
    assert len(reports) == len(expressions), done.stderr
    assert all(stores == loads == "0" for stores, loads in reports), done.stderr
    # The register counts the launch plans check against (launch_limits.REGISTERS).
    for kernel, registers in re.findall(r"Compiling entry function '(\w+)'.*?Used (\d+) "
                                        r"registers", done.stderr, re.S):
        key = next((k for k in ("grad_input", "grad_weight_partial", "grad_weight_combine",
                                "grad_weight") if k in kernel),
                   name.split("_sm")[0])
        if key in launch_limits.REGISTERS and arch >= 80:
            assert int(registers) <= launch_limits.REGISTERS[key], (kernel, registers)


@given(p=problems(), dtype=st.sampled_from([np.float64, np.float32, np.float16]))
def test_32_and_64_bit_indices_agree(p: Problem, dtype):
    p = p.astype(dtype)
    g = geometry_from_shapes(p.x.shape, p.weight.shape, None if p.bias is None else p.bias.shape,
                             **p.params)
    # The simple kernel; test_variants checks both widths of the tiled ones.
    narrow = emulated_backend.conv_transpose(p.x, p.weight, p.bias, g, index_bits=32,
                                             variant="simple")
    wide = emulated_backend.conv_transpose(p.x, p.weight, p.bias, g, index_bits=64,
                                           variant="simple")
    assert narrow.tobytes() == wide.tobytes()
    assert_close(wide, conv_transpose_reference(p.x, p.weight, p.bias, **p.params), p, dtype)


def test_grid_stride_loop_covers_outputs_beyond_the_grid(monkeypatch):
    # With the grid capped at 3 blocks, each thread must loop over many outputs.
    monkeypatch.setattr(launch, "MAX_BLOCKS", 3)
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 3, 9, 11)), rng.standard_normal((3, 2, 3, 4))
    y = gpu_tconv.conv_transpose2d(x, w, stride=(2, 3), padding=1, backend="emulated",
                                   variant="simple")
    assert launch.plan(geometry_from_shapes(x.shape, w.shape, stride=(2, 3), padding=1),
                       x.dtype, variant="simple").grid == (3, 1, 1)
    np.testing.assert_allclose(y, conv_transpose_reference(x, w, stride=(2, 3), padding=1),
                               rtol=1e-12, atol=1e-12)


def test_index_width_follows_the_sizes():
    small = geometry_from_shapes((1, 4, 8, 8), (4, 4, 3, 3))
    assert launch.plan(small, np.float32).index_bits == 32
    # 2**31 output elements: one past what a 32-bit signed index can address.
    large = geometry_from_shapes((4, 1, 2**14, 2**15), (1, 1, 1, 1))
    assert launch.plan(large, np.float32).index_bits == 64
    assert launch.plan(large, np.float32, variant="simple").kernel.endswith(
        "<float, long long, false>")
    # A huge stride times dilation also forces 64-bit tap arithmetic.
    far = geometry_from_shapes((1, 1, 2), (1, 1, 2), stride=2**20, dilation=2**12)
    assert launch.plan(far, np.float64).index_bits == 64


def test_tap_inverse_solves_the_congruence():
    for stride in range(1, 13):
        for dilation in range(1, 13):
            g, inv = launch._tap_inverse(stride, dilation)
            step = stride // g
            for r in range(0, 3 * stride, g):
                k = (r // g % step) * inv % step
                assert (k * dilation - r) % stride == 0
                assert all((j * dilation - r) % stride for j in range(k))  # k is the first


def test_missing_cuda_headers_are_named_with_their_package():
    # NVRTC without the include folder of nvidia-cuda-runtime: the real error, explained.
    require_toolchain(importlib.util.find_spec("cupy") is not None,
                      "the NVRTC compile check needs CuPy (pip install .[cuda])")
    from cupy._core.core import assemble_cupy_compiler_options
    from cupy.cuda import nvrtc

    options = tuple(o for o in assemble_cupy_compiler_options(cuda_backend.COMPILE_OPTIONS)
                    if not o.replace("\\", "/").endswith("/include")) + ("-arch=sm_90",)
    program = nvrtc.createProgram(launch.kernel_source_path().read_text(), "conv_transpose.cu",
                                  [], [])
    try:
        with pytest.raises(nvrtc.NVRTCError):
            nvrtc.compileProgram(program, options)
        log = nvrtc.getProgramLog(program)
    finally:
        nvrtc.destroyProgram(program)
    explained = str(cuda_backend.explain_compile_error(RuntimeError(log)))
    assert "pip install nvidia-cuda-runtime" in explained and "cuda_fp16.h" in explained
