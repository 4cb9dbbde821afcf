// Transposed convolution on tensor cores (nvcuda::wmma): an implicit GEMM per
// output phase, gather formulation.
//
// Same semantics, layouts and argument list as conv_transpose_gather (see
// conv_transpose.cu); channels-first arrays only. Along a dimension with
// stride s the outputs o = u*s + r of one residue r are reached by the same
// taps (see tiled::phase_dim), so for each residue the transposed convolution
// is one matrix product per group,
//
//   Y[pixel, co] = sum over (tap j of the phase, ci) of X[pixel, (j, ci)] * W[(j, ci), co]
//
// where a pixel is (sample n, u0, u1, u2), X[pixel, (j, ci)] is the input
// x[n, ci, u + offset - j*input_step] (zero outside the input) and W the
// weight w[ci, co, tap j]. Only the taps that reach the phase enter the
// reduction: no multiplication by inserted zeros, no per-tap divisibility test.
//
// A block of TCONV_WMMA_WARPS_M x TCONV_WMMA_WARPS_N warps owns a tile of
// TILE_M pixels x TILE_N output channels of one residue and one group; each
// warp owns TCONV_WMMA_FRAGS_M x TCONV_WMMA_FRAGS_N 16x16 accumulator
// fragments of it. The reduction runs over the phase's taps (outer) and the
// group's input channels in steps of the fragment depth K (inner); for each
// step the block stages the X tile (TILE_M x K) and the W tile (K x TILE_N) in
// shared memory, zero-filled beyond the pixels, channels and input bounds, and
// every warp multiplies its fragments. The accumulators then go through shared
// memory so that each output element is written once, by one thread, with the
// bias added and one rounding to T. The order of the reduction is fixed: the
// results are bit for bit reproducible, with no atomics.
//
// A phase that no tap reaches (stride larger than the dilated kernel, or
// gcd(stride, dilation) not dividing it) is written as the bias (or zero)
// without a reduction. Kernel == stride without padding gives one tap per
// phase: one GEMM per tap and a pixel shuffle on the store.
//
// Types: T = __half and __nv_bfloat16 multiply at m16n16k16 with float
// accumulators; T = float multiplies in TF32 at m16n16k8 (the operands rounded
// with __float_to_tf32, accumulated in float): the host runs it for float32
// only when precision="tf32" is asked for. bfloat16 and TF32 need sm_80 or
// newer; __half runs on sm_75 too.
//
// Compile-time parameters (prepend #defines; the defaults make the file
// compile on its own): TCONV_WMMA_WARPS_M, TCONV_WMMA_WARPS_N,
// TCONV_WMMA_FRAGS_M, TCONV_WMMA_FRAGS_N.

#include <mma.h>

#include "conv_transpose_tiled.cu"

#ifndef TCONV_WMMA_WARPS_M
#define TCONV_WMMA_WARPS_M 2
#endif
#ifndef TCONV_WMMA_WARPS_N
#define TCONV_WMMA_WARPS_N 2
#endif
#ifndef TCONV_WMMA_FRAGS_M
#define TCONV_WMMA_FRAGS_M 2
#endif
#ifndef TCONV_WMMA_FRAGS_N
#define TCONV_WMMA_FRAGS_N 1
#endif

namespace gpu_tconv {
namespace wmma_gemm {

namespace wmma = nvcuda::wmma;

constexpr int WARPS_M = TCONV_WMMA_WARPS_M, WARPS_N = TCONV_WMMA_WARPS_N;
constexpr int FRAGS_M = TCONV_WMMA_FRAGS_M, FRAGS_N = TCONV_WMMA_FRAGS_N;
constexpr int THREADS = 32 * WARPS_M * WARPS_N;
constexpr int TILE_M = 16 * WARPS_M * FRAGS_M;  // pixels of a block tile
constexpr int TILE_N = 16 * WARPS_N * FRAGS_N;  // output channels of a block tile
static_assert(THREADS <= 1024, "at most 1024 threads per block");

// The fragment operand type and depth for each element type.
template <typename T> struct mma_traits;
template <> struct mma_traits<__half> {
    typedef __half operand;
    static constexpr int K = 16;
};
template <> struct mma_traits<__nv_bfloat16> {
    typedef __nv_bfloat16 operand;
    static constexpr int K = 16;
};
// TF32 exists from sm_80 on (the host never runs float32 here below that).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <> struct mma_traits<float> {
    typedef wmma::precision::tf32 operand;
    static constexpr int K = 8;
};
#endif

// TF32 operands are rounded once loaded (the tensor cores would ignore the low
// mantissa bits); 16-bit operands are used as they are.
template <typename Fragment>
__device__ __forceinline__ void to_operand(Fragment&, __half) {}
template <typename Fragment>
__device__ __forceinline__ void to_operand(Fragment&, __nv_bfloat16) {}
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <typename Fragment>
__device__ __forceinline__ void to_operand(Fragment& f, float) {
#pragma unroll
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = wmma::__float_to_tf32(f.x[i]);
}
#endif

// Leading dimensions of the staged tiles, in elements: a multiple of 16 bytes
// (WMMA's rule), padded by 16 bytes to spread the rows over the banks.
template <typename T> struct layout {
    static constexpr int K = mma_traits<T>::K;  // the fragment depth
    static constexpr int pad = 16 / (int)sizeof(T);
    static constexpr int lda = K + pad;        // X tile: TILE_M rows of K, row major
    static constexpr int ldb = TILE_N + pad;   // W tile: K rows of TILE_N, row major
    static constexpr int ldc = TILE_M + 4;     // accumulators: TILE_N columns of TILE_M floats
};

// The sizes of a launch and the counts of its block grid: one block per tile
// of pixels (samples and the phase grid u together), group, tile of output
// channels and residue; the host computes the same count
// (variants.WmmaVariant.blocks).
template <typename I>
struct Shape {
    I groups, cin, cout;                  // channels per group
    I in0, in1, in2, out0, out1, out2;
    I K0, K1, K2, S0, S1, S2, pad0, pad1, pad2, D0, D1, D2, gcd0, gcd1, gcd2, inv0, inv1, inv2;
    I in_plane, out_plane, taps;
    I R0, R1, R2, U0, U1, U2, pixels;
    I m_tiles, n_tiles, blocks;
};

// The pixel's output position (u*S + r per dimension) and sample, or false
// when the pixel lies beyond the batch or the output.
template <typename I>
struct Pixel {
    I n, u0, u1, u2;
    bool valid;
};

template <typename I>
__device__ __forceinline__ Pixel<I> pixel_of(const Shape<I>& s, I pixel, I r0, I r1, I r2) {
    Pixel<I> p;
    p.u2 = pixel % s.U2;
    p.u1 = pixel / s.U2 % s.U1;
    p.u0 = pixel / s.U2 / s.U1 % s.U0;
    p.n = pixel / s.U2 / s.U1 / s.U0;
    p.valid = pixel < s.pixels && p.u0 * s.S0 + r0 < s.out0 && p.u1 * s.S1 + r1 < s.out1 &&
              p.u2 * s.S2 + r2 < s.out2;
    return p;
}

// What one block works on: residue fastest (the blocks writing the
// interleaved phases of one region run together), then output-channel tile,
// group and pixel tile.
template <typename I>
struct Work {
    I r0, r1, r2, co0, group, pixel0;
    tiled::PhaseDim<I> p0, p1, p2;
    I phase_taps;
};

template <typename I>
__device__ __forceinline__ Work<I> work_of(const Shape<I>& s, I block) {
    Work<I> w;
    I rest = block;
    w.r2 = rest % s.R2; rest /= s.R2;
    w.r1 = rest % s.R1; rest /= s.R1;
    w.r0 = rest % s.R0; rest /= s.R0;
    w.co0 = rest % s.n_tiles * TILE_N; rest /= s.n_tiles;
    w.group = rest % s.groups; rest /= s.groups;
    w.pixel0 = rest * TILE_M;
    w.p0 = tiled::phase_dim<I>(w.r0, s.K0, s.S0, s.pad0, s.D0, s.gcd0, s.inv0);
    w.p1 = tiled::phase_dim<I>(w.r1, s.K1, s.S1, s.pad1, s.D1, s.gcd1, s.inv1);
    w.p2 = tiled::phase_dim<I>(w.r2, s.K2, s.S2, s.pad2, s.D2, s.gcd2, s.inv2);
    w.phase_taps = w.p0.count * w.p1.count * w.p2.count;
    return w;
}

template <typename I>
__device__ __forceinline__ Shape<I> make_shape(
        I total, I groups, I cin, I cout, I in0, I in1, I in2, I out0, I out1, I out2,
        I k0, I k1, I k2, I stride0, I stride1, I stride2, I pad0, I pad1, I pad2,
        I dil0, I dil1, I dil2, I gcd0, I gcd1, I gcd2, I inv0, I inv1, I inv2) {
    Shape<I> s = {groups, cin, cout, in0, in1, in2, out0, out1, out2, k0, k1, k2,
                  stride0, stride1, stride2, pad0, pad1, pad2, dil0, dil1, dil2,
                  gcd0, gcd1, gcd2, inv0, inv1, inv2};
    s.in_plane = in0 * in1 * in2;
    s.out_plane = out0 * out1 * out2;
    s.taps = k0 * k1 * k2;
    s.R0 = stride0 < out0 ? stride0 : out0;
    s.R1 = stride1 < out1 ? stride1 : out1;
    s.R2 = stride2 < out2 ? stride2 : out2;
    s.U0 = (out0 + stride0 - 1) / stride0;
    s.U1 = (out1 + stride1 - 1) / stride1;
    s.U2 = (out2 + stride2 - 1) / stride2;
    const I batch = total / (groups * cout * s.out_plane);
    s.pixels = batch * s.U0 * s.U1 * s.U2;
    s.m_tiles = (s.pixels + TILE_M - 1) / TILE_M;
    s.n_tiles = (cout + TILE_N - 1) / TILE_N;
    s.blocks = s.m_tiles * groups * s.n_tiles * s.R0 * s.R1 * s.R2;
    return s;
}

// Element offset in x of the first input channel of the pixel's group for
// phase tap j, or -1 where that tap reads outside the input (or the pixel is
// not an output).
template <typename I>
__device__ __forceinline__ I input_at(const Shape<I>& s, const Work<I>& w, I pixel, I j) {
    const Pixel<I> p = pixel_of<I>(s, pixel, w.r0, w.r1, w.r2);
    const I a = j / (w.p1.count * w.p2.count), b = j / w.p2.count % w.p1.count, c = j % w.p2.count;
    const I i0 = p.u0 + w.p0.offset - a * w.p0.input_step;
    const I i1 = p.u1 + w.p1.offset - b * w.p1.input_step;
    const I i2 = p.u2 + w.p2.offset - c * w.p2.input_step;
    if (!p.valid || !tiled::inside(i0, s.in0) || !tiled::inside(i1, s.in1) ||
        !tiled::inside(i2, s.in2)) return -1;
    return (p.n * s.groups + w.group) * s.cin * s.in_plane + (i0 * s.in1 + i1) * s.in2 + i2;
}

// Element offset in y of the pixel's output at the group's first channel, or
// -1 where the pixel is not an output.
template <typename I>
__device__ __forceinline__ I output_at(const Shape<I>& s, const Work<I>& w, I pixel) {
    const Pixel<I> p = pixel_of<I>(s, pixel, w.r0, w.r1, w.r2);
    if (!p.valid) return -1;
    return (p.n * s.groups + w.group) * s.cout * s.out_plane
           + ((p.u0 * s.S0 + w.r0) * s.out1 + p.u1 * s.S1 + w.r1) * s.out2 + p.u2 * s.S2 + w.r2;
}

// The kernel tap (linear index into k0*k1*k2) of phase tap j.
template <typename I>
__device__ __forceinline__ I kernel_tap(const Shape<I>& s, const Work<I>& w, I j) {
    const I a = j / (w.p1.count * w.p2.count), b = j / w.p2.count % w.p1.count, c = j % w.p2.count;
    return ((w.p0.tap + a * w.p0.tap_step) * s.K1 + w.p1.tap + b * w.p1.tap_step) * s.K2
           + w.p2.tap + c * w.p2.tap_step;
}

// The block's accumulators: each warp's FRAGS_M x FRAGS_N fragments.
template <typename T>
struct Accumulators {
    wmma::fragment<wmma::accumulator, 16, 16, mma_traits<T>::K, float> f[FRAGS_M][FRAGS_N];
};

// One step of the reduction, phase tap `tap` and input channels ci0 .. ci0 + K:
// the X tile (TILE_M x K, row major) and the W tile (K x TILE_N, row major)
// staged in shared memory, zero where a pixel has no input at this tap or a
// channel lies beyond the group. x_at: each pixel's input offset (input_at).
template <typename T, typename I>
__device__ __forceinline__ void stage(const T* __restrict__ x, const T* __restrict__ w_g,
                                      const Shape<I>& s, const Work<I>& work, const I* x_at,
                                      I tap, I ci0, T* a_tile, T* b_tile, int tid) {
    typedef layout<T> L;
    const T zero = from_acc<T>(0.0f);
    // Pixels fastest: neighbouring threads read neighbouring inputs.
    for (int e = tid; e < TILE_M * L::K; e += THREADS) {
        const int m = e % TILE_M, k = e / TILE_M;
        const I at = x_at[m], ci = ci0 + k;
        a_tile[m * L::lda + k] = at >= 0 && ci < s.cin ? x[at + ci * s.in_plane] : zero;
    }
    for (int e = tid; e < L::K * TILE_N; e += THREADS) {
        const int n = e % TILE_N, k = e / TILE_N;
        const I ci = ci0 + k, co = work.co0 + n;
        b_tile[k * L::ldb + n] = ci < s.cin && co < s.cout
            ? w_g[(ci * s.cout + co) * s.taps + tap] : zero;
    }
}

// acc += the warp's rows of the X tile times its columns of the W tile.
template <typename T>
__device__ __forceinline__ void multiply(const T* a_tile, const T* b_tile, int warp_m, int warp_n,
                                         Accumulators<T>& acc) {
    typedef layout<T> L;
    typedef typename mma_traits<T>::operand Operand;
    wmma::fragment<wmma::matrix_a, 16, 16, L::K, Operand, wmma::row_major> a[FRAGS_M];
    wmma::fragment<wmma::matrix_b, 16, 16, L::K, Operand, wmma::row_major> b[FRAGS_N];
#pragma unroll
    for (int fm = 0; fm < FRAGS_M; ++fm) {
        wmma::load_matrix_sync(a[fm], a_tile + (warp_m * FRAGS_M + fm) * 16 * L::lda, L::lda);
        to_operand(a[fm], T());
    }
#pragma unroll
    for (int fn = 0; fn < FRAGS_N; ++fn) {
        wmma::load_matrix_sync(b[fn], b_tile + (warp_n * FRAGS_N + fn) * 16, L::ldb);
        to_operand(b[fn], T());
    }
#pragma unroll
    for (int fm = 0; fm < FRAGS_M; ++fm)
#pragma unroll
        for (int fn = 0; fn < FRAGS_N; ++fn)
            wmma::mma_sync(acc.f[fm][fn], a[fm], b[fn], acc.f[fm][fn]);
}

// The accumulators into the block's float tile, column major (pixels
// contiguous), each warp its own fragments.
template <typename T>
__device__ __forceinline__ void store_accumulators(float* c_tile, const Accumulators<T>& acc,
                                                   int warp_m, int warp_n) {
    typedef layout<T> L;
#pragma unroll
    for (int fm = 0; fm < FRAGS_M; ++fm)
#pragma unroll
        for (int fn = 0; fn < FRAGS_N; ++fn)
            wmma::store_matrix_sync(
                c_tile + (warp_n * FRAGS_N + fn) * 16 * L::ldc + (warp_m * FRAGS_M + fm) * 16,
                acc.f[fm][fn], L::ldc, wmma::mem_col_major);
}

// Each output of the tile written once, by one thread: the sum (none where the
// phase has no taps) plus the bias, rounded once to T. y_at: each pixel's
// output offset (output_at).
template <typename T, typename I>
__device__ __forceinline__ void write_outputs(T* __restrict__ y, const T* __restrict__ bias,
                                              const Shape<I>& s, const Work<I>& work,
                                              const I* y_at, const float* c_tile, bool reduced,
                                              int tid) {
    // Pixels fastest: neighbouring threads write neighbouring outputs of a phase.
    for (int e = tid; e < TILE_M * TILE_N; e += THREADS) {
        const int m = e % TILE_M, n = e / TILE_M;
        const I at = y_at[m], co = work.co0 + n;
        if (at < 0 || co >= s.cout) continue;
        float v = reduced ? c_tile[n * layout<T>::ldc + m] : 0.0f;
        if (bias != 0) v += to_acc(bias[work.group * s.cout + co]);
        y[at + co * s.out_plane] = from_acc<T>(v);
    }
}

}  // namespace wmma_gemm

// Every thread of a block stages, meets every __syncthreads() and takes part
// in every (warp-collective) WMMA call; the loop bounds are uniform in the block.
template <typename T, typename I>
__global__ void __launch_bounds__(wmma_gemm::THREADS, 1) conv_transpose_wmma(
        const T* __restrict__ x, const T* __restrict__ w,
        const T* __restrict__ bias, T* __restrict__ y,
        const I total, const I groups, const I c_in_per_group, const I c_out_per_group,
        const I in0, const I in1, const I in2,
        const I out0, const I out1, const I out2,
        const I k0, const I k1, const I k2,
        const I stride0, const I stride1, const I stride2,
        const I pad0, const I pad1, const I pad2,
        const I dil0, const I dil1, const I dil2,
        const I gcd0, const I gcd1, const I gcd2,
        const I inv0, const I inv1, const I inv2) {
    using namespace wmma_gemm;
    typedef layout<T> L;
    // 256-bit alignment: WMMA's rule for fragment pointers (every fragment's
    // offset in these tiles is a multiple of 32 bytes too).
    __shared__ __align__(32) T a_tile[TILE_M * L::lda];
    __shared__ __align__(32) T b_tile[L::K * L::ldb];
    __shared__ __align__(32) float c_tile[TILE_N * L::ldc];
    __shared__ I x_at[TILE_M];
    __shared__ I y_at[TILE_M];

    const Shape<I> s = make_shape<I>(total, groups, c_in_per_group, c_out_per_group, in0, in1, in2,
                                     out0, out1, out2, k0, k1, k2, stride0, stride1, stride2,
                                     pad0, pad1, pad2, dil0, dil1, dil2, gcd0, gcd1, gcd2,
                                     inv0, inv1, inv2);
    const int tid = (int)threadIdx.x;
    const int warp_m = tid / 32 % WARPS_M, warp_n = tid / 32 / WARPS_M;

    for (I block = (I)blockIdx.x; block < s.blocks; block += (I)gridDim.x) {
        const Work<I> work = work_of<I>(s, block);
        __syncthreads();  // the previous tile's y_at and c_tile are no longer read
        for (int m = tid; m < TILE_M; m += THREADS) {
            y_at[m] = output_at<I>(s, work, work.pixel0 + m);
        }
        Accumulators<T> acc;
#pragma unroll
        for (int fm = 0; fm < FRAGS_M; ++fm)
#pragma unroll
            for (int fn = 0; fn < FRAGS_N; ++fn) wmma::fill_fragment(acc.f[fm][fn], 0.0f);

        const T* w_g = w + work.group * s.cin * s.cout * s.taps;
        for (I j = 0; j < work.phase_taps; ++j) {
            __syncthreads();  // the previous tap's x_at is no longer read
            for (int m = tid; m < TILE_M; m += THREADS) {
                x_at[m] = input_at<I>(s, work, work.pixel0 + m, j);
            }
            const I tap = kernel_tap<I>(s, work, j);
            for (I ci0 = 0; ci0 < s.cin; ci0 += L::K) {
                __syncthreads();  // x_at is written; the previous tiles are no longer read
                stage<T, I>(x, w_g, s, work, x_at, tap, ci0, a_tile, b_tile, tid);
                __syncthreads();
                multiply<T>(a_tile, b_tile, warp_m, warp_n, acc);
            }
        }
        // A phase without taps has nothing to reduce: its outputs are the bias.
        const bool reduced = work.phase_taps > 0;
        if (reduced) store_accumulators<T>(c_tile, acc, warp_m, warp_n);
        __syncthreads();
        write_outputs<T, I>(y, bias, s, work, y_at, c_tile, reduced, tid);
    }
}

}  // namespace gpu_tconv
