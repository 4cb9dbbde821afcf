"""What a GPU refuses to launch, checked in every launch plan, so that the CPU (the
emulated backend, the tests) refuses it too instead of computing what no GPU would.

A launch fails on the device (``cudaErrorInvalidValue``, ``cudaErrorLaunchOutOfResources``)
when a block has more than 1024 threads, more shared memory (static + dynamic) than
48 KiB without an opt-in (or than the architecture's opt-in maximum with one), or more
registers (per thread, as ptxas allocates them, times threads) than the 64 Ki 32-bit
registers one block may hold. Register counts cannot be known without compiling for
the device, so :data:`REGISTERS` holds what ``nvcc -Xptxas -v`` reports for each kernel
(the most over element types, index widths and architectures, at the largest
specialization); ``tests/test_launch_limits.py`` measures them again where nvcc exists.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

MAX_THREADS_PER_BLOCK = 1024
#: Shared memory (static + dynamic) of a block that has not opted in to more.
DEFAULT_SHARED_BYTES = 48 * 1024
#: The most shared memory a block may opt in to (``cudaFuncAttributeMaxDynamicSharedMemorySize``),
#: by compute capability (major*10 + minor).
OPT_IN_SHARED_BYTES = {75: 64 * 1024, 80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024,
                       89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024, 120: 99 * 1024}
#: 32-bit registers one block may use (every architecture from sm_75 on).
REGISTERS_PER_BLOCK = 64 * 1024
MAX_REGISTERS_PER_THREAD = 255

#: Registers per thread of each kernel: ``nvcc -cubin -Xptxas -v`` (CUDA 13.0) for sm_80,
#: sm_90 and sm_120, the most over element types and index widths, the specialized
#: variants at 8 unrolled taps. Keyed by forward variant name, or by gradient kind.
REGISTERS = {
    "simple": 168,
    "phase_generic": 158,
    "phase": 182,
    "phase_narrow": 200,
    "phase_smem": 124,
    "wmma": 162,
    "grad_input": 80,
    "grad_weight": 128,
    "grad_weight_partial": 130,
    "grad_weight_combine": 40,
}

_GRADIENTS = ("grad_input", "grad_weight", "grad_weight_partial", "grad_weight_combine")
_GRADIENT_KERNELS = {f"gpu_tconv::conv_transpose_{kind}": kind for kind in _GRADIENTS}


def register_key(plan) -> str:
    """The :data:`REGISTERS` entry of ``plan``'s kernel."""
    return _GRADIENT_KERNELS.get(plan.kernel.split("<")[0], plan.variant)


def check(plan, arch: int | None = None, opt_in: bool = False) -> None:
    """Raise ``ValueError`` naming the limit where a GPU would refuse to launch ``plan``.

    ``arch`` (e.g. 90) picks the opt-in shared-memory maximum, by default the smallest
    of :data:`OPT_IN_SHARED_BYTES`; ``opt_in`` says the kernel has opted in to it.
    """
    threads = plan.block[0] * plan.block[1] * plan.block[2]
    if threads > MAX_THREADS_PER_BLOCK:
        raise ValueError(f"{plan.kernel}: {threads} threads per block, more than a GPU "
                         f"launches ({MAX_THREADS_PER_BLOCK})")
    shared = plan.static_shared_bytes + plan.shared_bytes
    most = OPT_IN_SHARED_BYTES.get(arch, min(OPT_IN_SHARED_BYTES.values())) if opt_in \
        else DEFAULT_SHARED_BYTES
    if shared > most:
        raise ValueError(f"{plan.kernel}: {shared} bytes of shared memory per block "
                         f"({plan.static_shared_bytes} static + {plan.shared_bytes} dynamic), "
                         f"more than the {most} a block may have"
                         + ("" if opt_in else " without opting in"))
    registers = REGISTERS.get(register_key(plan))
    if registers is None:
        raise ValueError(f"{plan.kernel}: no register count is known for "
                         f"{register_key(plan)!r} (measure it with nvcc -Xptxas -v)")
    if registers * threads > REGISTERS_PER_BLOCK:
        raise ValueError(f"{plan.kernel}: {registers} registers x {threads} threads, more "
                         f"than the {REGISTERS_PER_BLOCK} registers of a block")


def measure_registers(source: Path, defines, expressions: list[str],
                      arch: int) -> dict[str, tuple[int, int]]:
    """Compile the kernel file ``source`` with ``defines`` (``(name, value)`` pairs) by
    ``nvcc -Xptxas -v`` for ``sm_{arch}``; return ``{mangled kernel name: (registers,
    spill bytes)}`` for every instantiation in ``expressions``."""
    with tempfile.TemporaryDirectory() as folder:
        unit = Path(folder) / "instances.cu"
        # Taking each instantiation's address makes nvcc generate its device code.
        unit.write_text("".join(f"#define {k} {v}\n" for k, v in defines)
                        + f'#include "{source}"\n' + "void* gpu_tconv_instances[] = {\n"
                        + "".join(f"    (void*)&{e},\n" for e in expressions) + "};\n")
        done = subprocess.run(["nvcc", "-cubin", f"-arch=sm_{arch}", "-Xptxas", "-v", "-o",
                               str(Path(folder) / "out.cubin"), str(unit)],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    found = {}
    pattern = (r"Compiling entry function '(\w+)'.*?(\d+) bytes spill stores, (\d+) bytes "
               r"spill loads.*?Used (\d+) registers")
    for name, stores, loads, registers in re.findall(pattern, done.stderr, re.S):
        found[name] = (int(registers), int(stores) + int(loads))
    return found
