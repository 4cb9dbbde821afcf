// Just enough of CUDA for the host C++ compiler to build an unmodified kernel
// source: the execution-space qualifiers become nothing and the built-in
// thread coordinates become thread-local variables that launcher.cpp sets
// before it calls the kernel once per (block, thread) of the grid.
#pragma once

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

// thread_local so that concurrent launches from several host threads do not
// see each other's coordinates.
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
