"""The emulated kernels under AddressSanitizer and UBSan: no out-of-bounds access, no
undefined behaviour (misaligned vector accesses included), over random problems of
every rank and both index widths, for every variant."""

import os
import subprocess
import sys
import textwrap

import pytest

import gpu_tconv
from gpu_tconv import emulated_backend

CHECKS = textwrap.dedent("""
    import numpy as np
    import gpu_tconv
    from hypothesis import given, settings, strategies as st
    from gpu_tconv import emulated_backend
    from gpu_tconv.geometry import geometry_from_shapes
    from gpu_tconv.reference import conv_transpose_reference
    from oracles import problems

    @settings(max_examples=60, deadline=None, database=None)
    @given(p=problems(), bits=st.sampled_from([32, 64]), last=st.booleans(),
           dtype=st.sampled_from([np.float64, np.float32, np.float16]))
    def check(p, bits, last, dtype):
        p = p.astype(dtype)
        layout = "channels_last" if last else "channels_first"
        x = np.ascontiguousarray(np.moveaxis(p.x, 1, -1)) if last else p.x
        g = geometry_from_shapes(x.shape, p.weight.shape,
                                 None if p.bias is None else p.bias.shape, **p.params,
                                 layout=layout)
        y = emulated_backend.conv_transpose(x, p.weight, p.bias, g, index_bits=bits,
                                            variant="simple")
        y = np.moveaxis(y, -1, 1) if last else y
        expected = conv_transpose_reference(p.x, p.weight, p.bias, **p.params)
        assert np.allclose(y, expected, rtol=2e-2, atol=2e-2)
        # The gradient kernels too (gradients of <y, 1>: sums of x and of w).
        dx, dw, db = gpu_tconv.conv_transpose_backward(np.ones_like(y), p.x, p.weight,
                                                       **p.params, backend="emulated")
        assert dx.shape == p.x.shape and dw.shape == p.weight.shape

    check()

    # The tiled variants: every dtype (each has its own vector type), 32-bit indices
    # (where an overflow would be undefined) and 64-bit ones; one build each.
    from gpu_tconv import variants
    from oracles import SPECIALIZATIONS

    WMMA = variants.VARIANTS["wmma"].kernel

    kinds = [(np.float64, 32), (np.float16, 32), (np.float32, 64)]
    for name, v in variants.VARIANTS.items():
        for i, (dtype, bits) in enumerate(kinds if v.tiled and v.kernel != WMMA else []):
            fixed = SPECIALIZATIONS[i % len(SPECIALIZATIONS)] if v.specialized else None

            @settings(max_examples=4, deadline=None, database=None)
            @given(p=problems(max_channels=10, kernel_stride_dilation=fixed))
            def check_variant(p):
                p = p.astype(dtype)
                g = geometry_from_shapes(p.x.shape, p.weight.shape,
                                         None if p.bias is None else p.bias.shape, **p.params)
                y = emulated_backend.conv_transpose(p.x, p.weight, p.bias, g, index_bits=bits,
                                                    variant=name)
                expected = conv_transpose_reference(p.x, p.weight, p.bias, **p.params)
                assert np.allclose(y, expected, rtol=2e-2, atol=2e-2), name

            check_variant()
    print("sanitized run clean")
""")

WMMA_CHECKS = textwrap.dedent("""
    import ml_dtypes
    import numpy as np
    from hypothesis import given, settings
    from gpu_tconv import emulated_backend
    from gpu_tconv.geometry import geometry_from_shapes
    from gpu_tconv.reference import conv_transpose_reference
    from oracles import problems

    # The tensor-core kernel: each of its types, both index widths, channels across a
    # 16-wide fragment.
    wmma_kinds = [(np.float16, "highest", 32), (ml_dtypes.bfloat16, "highest", 64),
                  (np.float32, "tf32", 32)]
    for dtype, precision, bits in wmma_kinds:
        @settings(max_examples=2, deadline=None, database=None)
        @given(p=problems(max_channels=17, ranks=(1, 2)))
        def check_wmma(p):
            p = p.astype(dtype)
            g = geometry_from_shapes(p.x.shape, p.weight.shape,
                                     None if p.bias is None else p.bias.shape, **p.params)
            y = emulated_backend.conv_transpose(p.x, p.weight, p.bias, g, index_bits=bits,
                                                variant="wmma", precision=precision)
            expected = conv_transpose_reference(p.x.astype(np.float64),
                                                p.weight.astype(np.float64),
                                                None if p.bias is None
                                                else p.bias.astype(np.float64), **p.params)
            assert np.allclose(y.astype(np.float64), expected, rtol=5e-2, atol=5e-2)

        check_wmma()
    print("sanitized run clean")
""")

OVERFLOW = textwrap.dedent("""
    import numpy as np
    from gpu_tconv import emulated_backend, launch
    from gpu_tconv.geometry import geometry_from_shapes

    g = geometry_from_shapes((1, 2, 4), (2, 3, 3), stride=2)
    x, w = np.ones((1, 2, 4)), np.ones((2, 3, 3))
    y = np.empty(g.batch * g.c_out * g.out_size[0] - 1)  # one element short
    emulated_backend.run_plan(launch.plan(g, x.dtype, variant="simple"), (x, w, None, y))
    print("no report")
""")


def _sanitized(script: str, tmp_path) -> subprocess.CompletedProcess:
    compiler = emulated_backend.compiler()
    runtime = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not os.path.isabs(runtime):
        pytest.skip("the host compiler has no AddressSanitizer runtime")
    env = dict(os.environ, GPU_TCONV_EMULATOR_SANITIZE="1", LD_PRELOAD=runtime,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=99",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=98",
               # the tests' helpers and this very gpu_tconv, installed or not
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__),
                                           os.path.dirname(os.path.dirname(gpu_tconv.__file__)),
                                           os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)


def test_kernel_is_clean_under_asan_and_ubsan(tmp_path):
    done = _sanitized(CHECKS, tmp_path)
    assert done.returncode == 0 and "sanitized run clean" in done.stdout, done.stderr[-4000:]
    assert "runtime error" not in done.stderr and "AddressSanitizer" not in done.stderr


def test_tensor_core_kernel_is_clean_under_asan_and_ubsan(tmp_path):
    done = _sanitized(WMMA_CHECKS, tmp_path)
    assert done.returncode == 0 and "sanitized run clean" in done.stdout, done.stderr[-4000:]
    assert "runtime error" not in done.stderr and "AddressSanitizer" not in done.stderr


def test_sanitizer_catches_an_out_of_bounds_write(tmp_path):
    # Proof that the check above can fail: an output buffer one element short is caught.
    done = _sanitized(OVERFLOW, tmp_path)
    assert done.returncode == 99, done.stderr[-4000:]
    assert "heap-buffer-overflow" in done.stderr
    assert "no report" not in done.stdout
