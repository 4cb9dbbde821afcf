// Just enough of CUDA for the host C++ compiler to build an unmodified kernel
// source: the execution-space qualifiers become nothing and the built-in
// thread coordinates become thread-local variables that launcher.cpp sets
// before it calls the kernel once per (block, thread) of the grid.
#pragma once

#include <atomic>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// __shared__ arrays are one per block, seen by all its threads. The launcher
// runs the blocks of a launch one after another (and launches of a kernel that
// synchronizes one at a time), so a function-local static is exactly that:
// one instance, reused by each block in turn. Not thread_local: that would
// give every thread its own copy. On a GPU shared memory starts as garbage,
// not zero: the library is linked with shared_memory.ld, which gathers every
// function-local static (-fdata-sections gives each a .bss._ZZ* section of its
// own) between __start_gpu_tconv_shared and __stop_gpu_tconv_shared, and the
// launcher fills that range with 0xff bytes (NaN in every float format) before
// each block, so a read before a write shows in the result. The kernels have
// no other function-local statics.
#define __shared__ static

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

// thread_local so that concurrent launches from several host threads, and the
// threads of one block, each see their own coordinates.
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// The built-in vector types the kernels use, with CUDA's sizes and alignments
// (UBSan then reports a misaligned vector access as the GPU would fault).
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) double2 { double x, y; };

// Loads through the read-only cache are plain loads on the CPU.
template <typename T>
inline T __ldg(const T* p) { return *p; }

// __syncthreads(): the block's barrier when the concurrent runner runs the
// block's threads (runtime.cpp provides the barrier and its wait function).
// Under the sequential runner there is no barrier to wait at, so the call is
// recorded and the launch reported as invalid rather than computed wrongly in
// silence.
inline thread_local void (*gpu_tconv_barrier_wait)(void*) = nullptr;
inline thread_local void* gpu_tconv_barrier = nullptr;
inline thread_local bool gpu_tconv_unsynchronized = false;

inline void __syncthreads() {
    if (gpu_tconv_barrier_wait != nullptr) {
        gpu_tconv_barrier_wait(gpu_tconv_barrier);
    } else {
        gpu_tconv_unsynchronized = true;
    }
}

// Misuse that a GPU would punish with garbage or a fault (a WMMA pointer or
// leading dimension off its alignment) is recorded here, from any thread, and
// the launch reported as faulty.
enum { GPU_TCONV_FAULT_WMMA = 1u };
inline std::atomic<unsigned> gpu_tconv_faults{0};
inline void gpu_tconv_report_fault(unsigned code) { gpu_tconv_faults.fetch_or(code); }
