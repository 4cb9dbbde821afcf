// Runs one kernel instantiation over a whole launch grid on the CPU.
//
// Built with -include cuda_shim.h and
//   -DGPU_TCONV_KERNEL_SOURCE='"path/to/kernel.cu"'
//   -DGPU_TCONV_KERNEL='name<template, arguments>'
// The exported entry point takes its arguments the way cuLaunchKernel does (an
// array of pointers to each argument's value), so the host side packs the same
// argument list it gives CuPy.
#include <cstddef>
#include <type_traits>
#include <utility>

#include GPU_TCONV_KERNEL_SOURCE

namespace {

template <typename... A, std::size_t... N>
void call(void (*kernel)(A...), void** args, std::index_sequence<N...>) {
    kernel(*static_cast<std::remove_cv_t<A>*>(args[N])...);
}

template <typename... A>
void run_grid(void (*kernel)(A...), dim3 grid, dim3 block, void** args, unsigned first_block) {
    gridDim = grid;
    blockDim = block;
    // Threads run one after another: a kernel that relies on __shared__
    // memory or __syncthreads() needs a runner with real concurrency.
    // Blocks below first_block (along x) are skipped, so a test can run just the
    // end of a grid too large to run whole.
    for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = first_block; bx < grid.x; ++bx) {
        blockIdx = dim3{bx, by, bz};
        for (unsigned tz = 0; tz < block.z; ++tz)
        for (unsigned ty = 0; ty < block.y; ++ty)
        for (unsigned tx = 0; tx < block.x; ++tx) {
            threadIdx = dim3{tx, ty, tz};
            call(kernel, args, std::index_sequence_for<A...>{});
        }
    }
}

}  // namespace

extern "C" void gpu_tconv_launch(unsigned gx, unsigned gy, unsigned gz,
                                 unsigned bx, unsigned by, unsigned bz,
                                 void** args, unsigned first_block) {
    run_grid(&GPU_TCONV_KERNEL, dim3{gx, gy, gz}, dim3{bx, by, bz}, args, first_block);
}
