// Kernels for testing the emulator's stand-ins for <mma.h> and <cuda_bf16.h>
// against tiles computed by hand: one warp (32 threads) per launch.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

namespace probe {

namespace wmma = nvcuda::wmma;

// d = a b + c for 16x16 tiles: a row major, b column major, c and d row major
// (leading dimension 16).
template <typename T>
__global__ void mma16(const T* a, const T* b, const float* c, float* d) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::load_matrix_sync(acc, c, 16, wmma::mem_row_major);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

// d = a b in TF32 for a 16x8 a (row major) and an 8x16 b (row major); the
// operands rounded with __float_to_tf32 when `round` is nonzero, else given to
// the tensor cores as they are. d is column major (leading dimension 16).
__global__ void mma_tf32(const float* a, const float* b, float* d, int round) {
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(fa, a, 8);
    wmma::load_matrix_sync(fb, b, 16);
    if (round) {
        for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
        for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
    }
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d, acc, 16, wmma::mem_col_major);
}

// A tile of `value` stored by the lanes below `lanes` only (a kernel that
// breaks the warp-collective contract).
__global__ void partial_store(float* d, float value, int lanes) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, value);
    if ((int)threadIdx.x < lanes) wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

// A load from `a + offset` with leading dimension `ldm`: offsets that break
// the 256-bit alignment, or an ldm that is not a multiple of 16 bytes, fault.
__global__ void load_at(const __half* a, float* d, int offset, int ldm) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a + offset, ldm);
    d[threadIdx.x] = __half2float(fa.x[0]);
}

// Element-wise conversions: TF32 rounding, and float -> bfloat16 -> float.
__global__ void conversions(const float* in, float* tf32, __nv_bfloat16* bf16, float* back, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        tf32[i] = wmma::__float_to_tf32(in[i]);
        bf16[i] = __float2bfloat16_rn(in[i]);
        back[i] = __bfloat162float(bf16[i]);
    }
}

// out[i] = the block's shared array as found before anything is written to it.
__global__ void read_before_write(int* out) {
    __shared__ int s[256];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
    __syncthreads();
    s[threadIdx.x] = 7;  // what the next block would see if the memory were not refilled
}

}  // namespace probe
