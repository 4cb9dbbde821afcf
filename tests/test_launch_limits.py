"""Launches a GPU would refuse (too many threads, too much shared memory, too many
registers) are refused by the launch plan, for every variant, on the CPU too."""

from dataclasses import replace

import numpy as np
import pytest

from gpu_tconv import launch, launch_limits, variants
from gpu_tconv.geometry import geometry_from_shapes

G = geometry_from_shapes((2, 16, 6, 6), (16, 16, 3, 3), stride=2, padding=1)


def _plan(name="simple", dtype=np.float32, **changes):
    precision = "tf32" if name == "wmma" and dtype == np.float32 else "highest"
    return replace(launch.plan(G, dtype, variant=name, precision=precision), **changes)


@pytest.mark.parametrize("name", list(variants.VARIANTS))
def test_every_variant_plans_within_the_limits(name):
    plan = _plan(name)
    launch_limits.check(plan)
    assert launch_limits.register_key(plan) == name
    threads = plan.block[0] * plan.block[1] * plan.block[2]
    assert launch_limits.REGISTERS[name] * threads <= launch_limits.REGISTERS_PER_BLOCK


def test_gradient_plans_are_checked_under_their_own_kernels():
    for kind in ("grad_input", "grad_weight"):
        plan = launch.plan(G, np.float32, kind=kind)
        assert launch_limits.register_key(plan) == kind


def test_too_many_threads_per_block():
    with pytest.raises(ValueError, match="threads per block"):
        launch_limits.check(_plan(block=(1025, 1, 1)))
    launch_limits.check(_plan(block=(32, 8, 1)))


def test_shared_memory_beyond_48_kib_without_opt_in():
    with pytest.raises(ValueError, match="shared memory.*without opting in"):
        launch_limits.check(_plan(static_shared_bytes=40 * 1024, shared_bytes=9 * 1024))
    # An opt-in allows the architecture's maximum, and no more.
    big = _plan(shared_bytes=200 * 1024)
    launch_limits.check(big, arch=90, opt_in=True)
    with pytest.raises(ValueError, match="shared memory"):
        launch_limits.check(big, arch=80, opt_in=True)


def test_registers_times_threads_beyond_the_register_file(monkeypatch):
    with pytest.raises(ValueError, match="registers"):
        launch_limits.check(_plan("simple", block=(512, 1, 1)))  # 168 x 512 > 65536
    # The plan itself is checked, for every variant: a kernel grown to 600 registers
    # a thread could not launch, and the plan says so before anything runs.
    for name in variants.VARIANTS:
        monkeypatch.setitem(launch_limits.REGISTERS, name, 600)
        with pytest.raises(ValueError, match="registers"):
            _plan(name)


def test_an_unmeasured_kernel_is_refused(monkeypatch):
    monkeypatch.delitem(launch_limits.REGISTERS, "phase")
    with pytest.raises(ValueError, match="register count"):
        _plan("phase")


def test_a_tile_too_large_for_shared_memory_is_refused_by_the_plan(monkeypatch):
    # The tensor-core tile grown to 8 x 8 fragments per warp: its staged tiles and
    # accumulators need more than 48 KiB, which the plan refuses.
    monkeypatch.setitem(variants.VARIANTS, "wmma", replace(variants.VARIANTS["wmma"],
                                                           frags_m=8, frags_n=8))
    with pytest.raises(ValueError, match="shared memory"):
        launch.plan(G, np.float16, variant="wmma")
