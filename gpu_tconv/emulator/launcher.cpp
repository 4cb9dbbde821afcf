// Runs one kernel instantiation over a whole launch grid on the CPU.
//
// Built with -include cuda_shim.h and
//   -DGPU_TCONV_KERNEL_SOURCE='"path/to/kernel.cu"'
//   -DGPU_TCONV_KERNEL='name<template, arguments>'
// (and the plan's compile-time -D definitions). The exported entry point takes
// its arguments the way cuLaunchKernel does (an array of pointers to each
// argument's value), so the host side packs the same argument list it gives
// CuPy.
//
// Two runners:
// - sequential (run_threads null): every thread of every block, one after
//   another, on the calling thread. Fast, and right for kernels whose threads
//   do not communicate; a __syncthreads() under it fails the launch (status 1).
// - concurrent: run_threads (gpu_tconv_run_block_threads of runtime.cpp)
//   starts one host thread per CUDA thread of a block, sharing a barrier for
//   __syncthreads(). The threads take the blocks one after another and meet at
//   the barrier between blocks, so a block's __shared__ arrays (function-local
//   statics, see cuda_shim.h) are never used by two blocks at once.
#include <cstddef>
#include <type_traits>
#include <utility>

#include GPU_TCONV_KERNEL_SOURCE

namespace {

template <typename... A, std::size_t... N>
void call(void (*kernel)(A...), void** args, std::index_sequence<N...>) {
    kernel(*static_cast<std::remove_cv_t<A>*>(args[N])...);
}

// Blocks below first_block (along x) are skipped, so a test can run just the
// end of a grid too large to run whole.
template <typename Body>
void for_each_block(dim3 grid, unsigned first_block, Body body) {
    for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = first_block; bx < grid.x; ++bx) {
        blockIdx = dim3{bx, by, bz};
        body();
    }
}

template <typename... A>
struct Launch {
    void (*kernel)(A...);
    dim3 grid, block;
    void** args;
    unsigned first_block;
};

template <typename... A>
int run_sequential(const Launch<A...>& launch) {
    gridDim = launch.grid;
    blockDim = launch.block;
    gpu_tconv_unsynchronized = false;
    const dim3 block = launch.block;
    for_each_block(launch.grid, launch.first_block, [&] {
        for (unsigned tz = 0; tz < block.z; ++tz)
        for (unsigned ty = 0; ty < block.y; ++ty)
        for (unsigned tx = 0; tx < block.x; ++tx) {
            threadIdx = dim3{tx, ty, tz};
            call(launch.kernel, launch.args, std::index_sequence_for<A...>{});
        }
    });
    return gpu_tconv_unsynchronized ? 1 : 0;
}

// CUDA thread t of every block in turn, on its own host thread.
template <typename... A>
void block_thread(void* context, unsigned t, void (*wait)(void*), void* barrier) {
    const Launch<A...>& launch = *static_cast<const Launch<A...>*>(context);
    const dim3 block = launch.block;
    gridDim = launch.grid;
    blockDim = block;
    threadIdx = dim3{t % block.x, t / block.x % block.y, t / block.x / block.y};
    gpu_tconv_barrier_wait = wait;
    gpu_tconv_barrier = barrier;
    for_each_block(launch.grid, launch.first_block, [&] {
        call(launch.kernel, launch.args, std::index_sequence_for<A...>{});
        wait(barrier);  // the whole block is done before the next one starts
    });
}

typedef void (*BlockThreadsRunner)(unsigned, void (*)(void*, unsigned, void (*)(void*), void*),
                                   void*);

template <typename... A>
int run(void (*kernel)(A...), dim3 grid, dim3 block, void** args, unsigned first_block,
        BlockThreadsRunner run_threads) {
    const Launch<A...> launch{kernel, grid, block, args, first_block};
    if (run_threads == nullptr) return run_sequential(launch);
    run_threads(block.x * block.y * block.z, &block_thread<A...>,
                const_cast<Launch<A...>*>(&launch));
    return 0;
}

}  // namespace

extern "C" int gpu_tconv_launch(unsigned gx, unsigned gy, unsigned gz,
                                unsigned bx, unsigned by, unsigned bz,
                                void** args, unsigned first_block, BlockThreadsRunner run_threads) {
    return run(&GPU_TCONV_KERNEL, dim3{gx, gy, gz}, dim3{bx, by, bz}, args, first_block, run_threads);
}
