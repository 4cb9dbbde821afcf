// Kernels for testing the emulator's concurrent runner: their results are right
// only if the threads of a block run at once, share their __shared__ arrays and
// wait for each other at __syncthreads().

namespace probe {

// out[i] = in[the next thread's i]: every thread reads, after the barrier, what
// its neighbour wrote before it. Thread 0 runs first in any sequential order,
// so only a concurrent runner with a real barrier gets it right.
__global__ void rotate(const int* in, int* out) {
    __shared__ int s[1024];
    const unsigned base = blockIdx.x * blockDim.x;
    s[threadIdx.x] = in[base + threadIdx.x];
    __syncthreads();
    out[base + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// out[block] = sum of the block's inputs, by a tree reduction in shared memory
// with one barrier per level (blockDim.x a power of two).
__global__ void block_sum(const int* in, int* out) {
    __shared__ int s[1024];
    const unsigned t = threadIdx.x;
    s[t] = in[blockIdx.x * blockDim.x + t];
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        __syncthreads();
        if (t < half) s[t] += s[t + half];
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

}  // namespace probe
