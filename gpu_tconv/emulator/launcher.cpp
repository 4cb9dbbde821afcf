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
#include <cstring>
#include <type_traits>
#include <utility>

#include GPU_TCONV_KERNEL_SOURCE

// The kernel's __shared__ arrays, gathered by shared_memory.ld.
extern "C" char __start_gpu_tconv_shared[] __attribute__((visibility("hidden")));
extern "C" char __stop_gpu_tconv_shared[] __attribute__((visibility("hidden")));
// AddressSanitizer's query, present only when its runtime is loaded: its red
// zones between the arrays must not be overwritten.
extern "C" const void* __asan_region_is_poisoned(const void* begin, std::size_t size)
    __attribute__((weak));

namespace {

// Shared memory as a block finds it on a GPU: garbage. 0xff bytes are NaN in
// every floating-point format (and -1 as an integer), so a value read before
// it is written poisons the result.
void fill_shared_memory() {
    char* p = __start_gpu_tconv_shared;
    char* const end = __stop_gpu_tconv_shared;
    if (__asan_region_is_poisoned == nullptr) {
        std::memset(p, 0xff, end - p);
        return;
    }
    while (p < end) {
        const char* poisoned = static_cast<const char*>(__asan_region_is_poisoned(p, end - p));
        char* stop = poisoned == nullptr ? end : const_cast<char*>(poisoned);
        std::memset(p, 0xff, stop - p);
        p = stop;
        while (p < end && __asan_region_is_poisoned(p, 1) != nullptr) ++p;
    }
}

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
        fill_shared_memory();
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
        if (t == 0) fill_shared_memory();
        wait(barrier);  // no thread starts before the block's shared memory is filled
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
    gpu_tconv_faults = 0;
    int status = 0;
    if (run_threads == nullptr) {
        status = run_sequential(launch);
    } else {
        run_threads(block.x * block.y * block.z, &block_thread<A...>,
                    const_cast<Launch<A...>*>(&launch));
    }
    return gpu_tconv_faults != 0 ? 2 : status;
}

}  // namespace

// Bytes of static shared memory the kernel declares (its __shared__ arrays and
// their alignment padding; more under AddressSanitizer, which adds red zones).
extern "C" unsigned long gpu_tconv_static_shared_bytes() {
    return static_cast<unsigned long>(__stop_gpu_tconv_shared - __start_gpu_tconv_shared);
}

// Status: 0 done; 1 __syncthreads() under the sequential runner; 2 a fault
// (see cuda_shim.h).
extern "C" int gpu_tconv_launch(unsigned gx, unsigned gy, unsigned gz,
                                unsigned bx, unsigned by, unsigned bz,
                                void** args, unsigned first_block, BlockThreadsRunner run_threads) {
    return run(&GPU_TCONV_KERNEL, dim3{gx, gy, gz}, dim3{bx, by, bz}, args, first_block, run_threads);
}
