// Transposed convolution, gather formulation: the tiled variants.
//
// Same semantics, layouts and argument list as conv_transpose_gather (see
// conv_transpose.cu), and still one writer per output element (no atomics,
// deterministic), with the work organized for speed:
//
// * Phase (sub-pixel) decomposition. Along a dimension with stride s, the
//   outputs o with the same residue r = o mod s (hence the same phase
//   (o + padding) mod s) are reached by the same taps, an arithmetic
//   progression found once per block. A block holds outputs of one residue in
//   every dimension, so all its threads share one phase: the tap loops have the
//   same trip count in every thread, and the inner loops test input bounds
//   only, never divisibility. The residue varies fastest in the block index, so
//   the blocks that write the interleaved phases of one output region run
//   together and their strided stores meet in L2.
// * Register blocking. A thread computes TCONV_PIXELS outputs along the last
//   dimension (consecutive in its phase: their inputs are adjacent) for
//   TCONV_COUT_TILE output channels: every input value loaded is used
//   TCONV_COUT_TILE times and every weight TCONV_PIXELS times.
// * Vector memory access. Pixel pairs load their two adjacent inputs as one
//   half2/float2/double2 where aligned, and store as one vector where the
//   outputs are adjacent too (stride 1 along the last dimension).
// * Weights: read through the read-only cache with addresses uniform across
//   the block (conv_transpose_phase), or staged in shared memory, converted to
//   the accumulator type and laid out with the channel tile innermost so a
//   thread reads its tile with vector loads (conv_transpose_phase_smem).
// * Compile-time specialization: TCONV_K*, TCONV_S*, TCONV_D* (kernel size,
//   stride, dilation per dimension) make the tap bounds and index strides
//   constants, and the row's tap loop (the innermost) unrolls; 0 (the
//   default) takes the value from the kernel arguments, the generic fallback.
//   float16 accumulates in float.
//
// Each thread works on outputs u*s + r (u = 0, 1, ...) of its block's residue
// r; with q = u + (r + padding) / s, the tap j of the phase reads input
// q - (first*dilation - phase)/s - j*(dilation/g): the `offset` of PhaseDim.
//
// Compile-time parameters (prepend #defines; the defaults below make the file
// compile on its own): TCONV_BLOCK threads per block, TCONV_COUT_TILE,
// TCONV_PIXELS (1 or 2), TCONV_CI_CHUNK input channels staged at once and
// TCONV_SMEM_TAPS, the most taps of one phase the shared weight tile holds
// when the kernel size is not fixed at compile time (the host must not launch
// a phase with more; with fixed sizes the tile is sized exactly).

#include "conv_transpose.cu"

#ifndef TCONV_BLOCK
#define TCONV_BLOCK 128
#endif
#ifndef TCONV_COUT_TILE
#define TCONV_COUT_TILE 4
#endif
#ifndef TCONV_PIXELS
#define TCONV_PIXELS 2
#endif
#ifndef TCONV_CI_CHUNK
#define TCONV_CI_CHUNK 8
#endif
#ifndef TCONV_SMEM_TAPS
#define TCONV_SMEM_TAPS 16
#endif
#ifndef TCONV_K0
#define TCONV_K0 0
#endif
#ifndef TCONV_K1
#define TCONV_K1 0
#endif
#ifndef TCONV_K2
#define TCONV_K2 0
#endif
#ifndef TCONV_S0
#define TCONV_S0 0
#endif
#ifndef TCONV_S1
#define TCONV_S1 0
#endif
#ifndef TCONV_S2
#define TCONV_S2 0
#endif
#ifndef TCONV_D0
#define TCONV_D0 0
#endif
#ifndef TCONV_D1
#define TCONV_D1 0
#endif
#ifndef TCONV_D2
#define TCONV_D2 0
#endif

namespace gpu_tconv {
namespace tiled {

static_assert(TCONV_PIXELS == 1 || TCONV_PIXELS == 2, "TCONV_PIXELS must be 1 or 2");
static_assert(TCONV_COUT_TILE >= 1 && TCONV_BLOCK >= 32 && TCONV_CI_CHUNK >= 1,
              "tile sizes must be positive");

__host__ __device__ constexpr int ct_gcd(int a, int b) { return b == 0 ? a : ct_gcd(b, a % b); }

// The most taps any phase of one dimension has (taps reaching one output are
// stride/gcd(stride, dilation) apart); 0 when the size is not fixed.
__host__ __device__ constexpr int max_phase_taps(int k, int s, int d) {
    return (k == 0 || s == 0 || d == 0) ? 0 : (k + s / ct_gcd(s, d) - 1) / (s / ct_gcd(s, d));
}

// The compile-time tap counts (members, not variables, so that a unit that
// instantiates only one kernel compiles without "unused variable" notes).
struct fixed_taps {
    static constexpr int dim0 = max_phase_taps(TCONV_K0, TCONV_S0, TCONV_D0);
    static constexpr int dim1 = max_phase_taps(TCONV_K1, TCONV_S1, TCONV_D1);
    // The row's taps: the unrolled loop.
    static constexpr int dim2 = max_phase_taps(TCONV_K2, TCONV_S2, TCONV_D2);
    // Taps of one phase over all dimensions, the size of the shared weight tile.
    static constexpr int phase = (dim0 && dim1 && dim2) ? dim0 * dim1 * dim2 : TCONV_SMEM_TAPS;
};

// A compile-time value where one is given, else the kernel argument.
template <int Fixed, typename I>
__device__ __forceinline__ I fixed_or(I runtime) { return Fixed ? (I)Fixed : runtime; }

// The taps shared by the outputs u*s + residue (u = 0, 1, ...) of one dimension.
template <typename I>
struct PhaseDim {
    I count;       // taps of the phase, by kernel size alone (input bounds are checked per tap)
    I tap;         // first tap
    I tap_step;    // stride / g
    I input_step;  // dilation / g: each later tap reads an input this much lower
    I offset;      // the first tap reads input u + offset
};

// See taps_reaching (conv_transpose.cu) for the congruence; inv and g are the
// same host-computed values.
template <typename I>
__device__ __forceinline__ PhaseDim<I> phase_dim(I residue, I k, I s, I pad, I dil, I g, I inv) {
    PhaseDim<I> t;
    t.tap_step = s / g;
    t.input_step = dil / g;
    t.count = 0;
    t.tap = 0;
    t.offset = 0;
    const I phase = (residue + pad) % s;
    if (phase % g != 0) return t;
    const I first = (I)(((long long)((phase / g) % t.tap_step) * (long long)inv) % (long long)t.tap_step);
    if (first >= k) return t;
    t.tap = first;
    t.count = (k - first + t.tap_step - 1) / t.tap_step;
    // first*dil == phase (mod s) and 0 <= phase < s, so the difference is a
    // non-negative multiple of s.
    t.offset = (residue + pad) / s - (first * dil - phase) / s;
    return t;
}

// Two-element vector of each element type, for the pixel pairs.
template <typename T> struct vector2;
template <> struct vector2<__half> { typedef __half2 type; };
template <> struct vector2<__nv_bfloat16> { typedef __nv_bfloat162 type; };
template <> struct vector2<float> { typedef float2 type; };
template <> struct vector2<double> { typedef double2 type; };

template <typename V>
__device__ __forceinline__ bool aligned(const void* p) {
    return ((unsigned long long)p & (sizeof(V) - 1)) == 0;
}

template <typename I>
__device__ __forceinline__ bool inside(I i, I n) { return i >= 0 && i < n; }

// The inputs of the thread's pixels for one tap: x[i], x[i + 1] where `ok`
// (the input exists and the output is computed), else 0. row points at the
// input row; i may lie outside it.
template <typename T, typename I, typename Acc>
__device__ __forceinline__ void load_pixels(const T* __restrict__ row, I i,
                                            const bool (&ok)[TCONV_PIXELS], Acc (&v)[TCONV_PIXELS]) {
    typedef typename vector2<T>::type V;
    if (TCONV_PIXELS == 2) {
        if (ok[0] && ok[TCONV_PIXELS - 1] && aligned<V>(row + i)) {
            const V pair = __ldg(reinterpret_cast<const V*>(row + i));
            v[0] = to_acc(pair.x);
            v[TCONV_PIXELS - 1] = to_acc(pair.y);
            return;
        }
        v[TCONV_PIXELS - 1] = ok[TCONV_PIXELS - 1] ? to_acc(__ldg(row + i + 1)) : Acc(0);
    }
    v[0] = ok[0] ? to_acc(__ldg(row + i)) : Acc(0);
}

// Which pixels read input i (and i + 1) of a row of n: the input must exist
// and the pixel's output too. A pixel without its input adds nothing (not
// 0 * w, which is NaN for an infinite weight).
template <typename I>
__device__ __forceinline__ bool pixels_reading(I i, I n, bool second, bool (&ok)[TCONV_PIXELS]) {
    ok[0] = inside(i, n);
    if (TCONV_PIXELS == 2) ok[TCONV_PIXELS - 1] = second && inside<I>(i + 1, n);
    return ok[0] || ok[TCONV_PIXELS - 1];
}

// Write the thread's pixels of one output channel: y[0] and, if `second`,
// y[step]; one vector store when the two are adjacent and aligned.
template <typename T, typename I, typename Acc>
__device__ __forceinline__ void store_pixels(T* __restrict__ y, I step, bool second,
                                             const Acc (&v)[TCONV_PIXELS]) {
    typedef typename vector2<T>::type V;
    if (TCONV_PIXELS == 2 && second && step == 1 && aligned<V>(y)) {
        V pair;
        pair.x = from_acc<T>(v[0]);
        pair.y = from_acc<T>(v[TCONV_PIXELS - 1]);
        *reinterpret_cast<V*>(y) = pair;
        return;
    }
    y[0] = from_acc<T>(v[0]);
    if (TCONV_PIXELS == 2 && second) y[step] = from_acc<T>(v[TCONV_PIXELS - 1]);
}

// The channel tile of shared weights for one (input channel, tap): vector
// loads (the tile is aligned to 16 bytes, see the staging layout).
__device__ __forceinline__ void load_tile(const float* w, float (&out)[TCONV_COUT_TILE]) {
    if (TCONV_COUT_TILE % 4 == 0) {
#pragma unroll
        for (int t = 0; t < TCONV_COUT_TILE; t += 4) {
            const float4 v = *reinterpret_cast<const float4*>(w + t);
            out[t] = v.x;
            out[(t + 1) % TCONV_COUT_TILE] = v.y;
            out[(t + 2) % TCONV_COUT_TILE] = v.z;
            out[(t + 3) % TCONV_COUT_TILE] = v.w;
        }
    } else {
#pragma unroll
        for (int t = 0; t < TCONV_COUT_TILE; ++t) out[t] = w[t];
    }
}

__device__ __forceinline__ void load_tile(const double* w, double (&out)[TCONV_COUT_TILE]) {
    if (TCONV_COUT_TILE % 2 == 0) {
#pragma unroll
        for (int t = 0; t < TCONV_COUT_TILE; t += 2) {
            const double2 v = *reinterpret_cast<const double2*>(w + t);
            out[t] = v.x;
            out[(t + 1) % TCONV_COUT_TILE] = v.y;
        }
    } else {
#pragma unroll
        for (int t = 0; t < TCONV_COUT_TILE; ++t) out[t] = w[t];
    }
}

// The sizes of a launch, from the kernel arguments (or compile-time constants
// where given), and the counts of the block grid: one block per sample, group,
// output-channel tile, tile of the phase grid u and residue r. The host
// computes the same number of blocks for the grid (variants.Variant.blocks).
template <typename I>
struct Shape {
    I groups, c_in_per_group, c_out_per_group;
    I in0, in1, in2, out0, out1, out2;
    I K0, K1, K2, S0, S1, S2, pad0, pad1, pad2, D0, D1, D2, gcd0, gcd1, gcd2, inv0, inv1, inv2;
    I in_plane, out_plane, taps;
    I R0, R1, R2;      // residues per dimension (no more than the outputs)
    I U0, U1, U2p;     // the phase grid; along the row in pixel groups
    I u_tiles, co_tiles, blocks;
};

template <typename I>
__device__ __forceinline__ Shape<I> make_shape(
        I total, I groups, I c_in_per_group, I c_out_per_group, I in0, I in1, I in2,
        I out0, I out1, I out2, I k0, I k1, I k2, I stride0, I stride1, I stride2,
        I pad0, I pad1, I pad2, I dil0, I dil1, I dil2, I gcd0, I gcd1, I gcd2,
        I inv0, I inv1, I inv2) {
    Shape<I> s = {groups, c_in_per_group, c_out_per_group, in0, in1, in2, out0, out1, out2,
                  fixed_or<TCONV_K0>(k0), fixed_or<TCONV_K1>(k1), fixed_or<TCONV_K2>(k2),
                  fixed_or<TCONV_S0>(stride0), fixed_or<TCONV_S1>(stride1), fixed_or<TCONV_S2>(stride2),
                  pad0, pad1, pad2,
                  fixed_or<TCONV_D0>(dil0), fixed_or<TCONV_D1>(dil1), fixed_or<TCONV_D2>(dil2),
                  gcd0, gcd1, gcd2, inv0, inv1, inv2};
    s.in_plane = in0 * in1 * in2;
    s.out_plane = out0 * out1 * out2;
    s.taps = s.K0 * s.K1 * s.K2;
    s.R0 = s.S0 < out0 ? s.S0 : out0;
    s.R1 = s.S1 < out1 ? s.S1 : out1;
    s.R2 = s.S2 < out2 ? s.S2 : out2;
    s.U0 = (out0 + s.S0 - 1) / s.S0;
    s.U1 = (out1 + s.S1 - 1) / s.S1;
    s.U2p = ((out2 + s.S2 - 1) / s.S2 + TCONV_PIXELS - 1) / TCONV_PIXELS;
    s.u_tiles = (s.U0 * s.U1 * s.U2p + TCONV_BLOCK - 1) / TCONV_BLOCK;
    s.co_tiles = (c_out_per_group + TCONV_COUT_TILE - 1) / TCONV_COUT_TILE;
    const I batch = total / (groups * c_out_per_group * s.out_plane);
    s.blocks = batch * groups * s.co_tiles * s.u_tiles * s.R0 * s.R1 * s.R2;
    return s;
}

// What one block works on, decoded from its linear index (residue fastest,
// then output-channel tile, group, tile of the phase grid, sample), the taps
// of its phase, and the thread's place in it. Everything but the thread's u
// and the two flags is uniform in the block.
template <typename I>
struct Tile {
    I n, group, co0, tile_n;       // sample, group, first output channel in the group, tile width
    I r0, r1, r2;                  // residues
    I u0, u1, u2;                  // the thread's first output is (u0*S0 + r0, u1*S1 + r1, u2*S2 + r2)
    PhaseDim<I> p0, p1, p2;
    bool active, second;           // the thread has a first (and a second) output
};

template <typename I>
__device__ __forceinline__ Tile<I> tile_of(const Shape<I>& s, I block, I tid) {
    Tile<I> w;
    I rest = block;
    w.r2 = rest % s.R2; rest /= s.R2;
    w.r1 = rest % s.R1; rest /= s.R1;
    w.r0 = rest % s.R0; rest /= s.R0;
    w.co0 = rest % s.co_tiles * TCONV_COUT_TILE; rest /= s.co_tiles;
    w.group = rest % s.groups; rest /= s.groups;
    const I u = rest % s.u_tiles * TCONV_BLOCK + tid;
    w.n = rest / s.u_tiles;
    const I remaining = s.c_out_per_group - w.co0;
    w.tile_n = remaining < TCONV_COUT_TILE ? remaining : TCONV_COUT_TILE;
    w.u2 = u % s.U2p * TCONV_PIXELS;
    w.u1 = u / s.U2p % s.U1;
    w.u0 = u / s.U2p / s.U1;
    w.active = u < s.U0 * s.U1 * s.U2p && w.u0 * s.S0 + w.r0 < s.out0 &&
               w.u1 * s.S1 + w.r1 < s.out1 && w.u2 * s.S2 + w.r2 < s.out2;
    w.second = TCONV_PIXELS == 2 && (w.u2 + 1) * s.S2 + w.r2 < s.out2;
    w.p0 = phase_dim<I>(w.r0, s.K0, s.S0, s.pad0, s.D0, s.gcd0, s.inv0);
    w.p1 = phase_dim<I>(w.r1, s.K1, s.S1, s.pad1, s.D1, s.gcd1, s.inv1);
    w.p2 = phase_dim<I>(w.r2, s.K2, s.S2, s.pad2, s.D2, s.gcd2, s.inv2);
    return w;
}

template <typename Acc>
struct Accumulators {
    Acc v[TCONV_COUT_TILE][TCONV_PIXELS];
    __device__ __forceinline__ Accumulators() {
#pragma unroll
        for (int t = 0; t < TCONV_COUT_TILE; ++t)
#pragma unroll
            for (int p = 0; p < TCONV_PIXELS; ++p) v[t][p] = 0;
    }
};

// Add the bias and store the tile of the thread's outputs.
template <typename T, typename I, typename Acc>
__device__ __forceinline__ void store_tile(T* __restrict__ y, const T* __restrict__ bias,
                                           const Shape<I>& s, const Tile<I>& w,
                                           const Accumulators<Acc>& acc) {
    const I co = w.group * s.c_out_per_group + w.co0;
    T* y_t = y + (w.n * s.groups * s.c_out_per_group + co) * s.out_plane
             + ((w.u0 * s.S0 + w.r0) * s.out1 + w.u1 * s.S1 + w.r1) * s.out2 + w.u2 * s.S2 + w.r2;
#pragma unroll
    for (int t = 0; t < TCONV_COUT_TILE; ++t) {
        if (t < w.tile_n) {
            const Acc b = bias != 0 ? to_acc(bias[co + t]) : Acc(0);
            Acc v[TCONV_PIXELS];
#pragma unroll
            for (int p = 0; p < TCONV_PIXELS; ++p) v[p] = acc.v[t][p] + b;
            store_pixels<T, I, Acc>(y_t + t * s.out_plane, s.S2, w.second, v);
        }
    }
}

// The group's input channels of sample n, from input channel ci0 on.
template <typename T, typename I>
__device__ __forceinline__ const T* input_of(const T* x, const Shape<I>& s, const Tile<I>& w, I ci0) {
    return x + ((w.n * s.groups + w.group) * s.c_in_per_group + ci0) * s.in_plane;
}

// Weights of the tile read from global memory through the read-only cache.
// Every thread of a block reads the same address at the same time (one tap,
// one channel tile): one transaction, broadcast to the warp.
template <typename T, typename I>
struct GlobalWeights {
    const T* w;     // the group's first input channel, the tile's first output channel
    I channel;      // stride between input channels: c_out_per_group * taps
    I taps;         // stride between output channels
    I tile_n;       // output channels of this tile
    template <typename Acc>
    __device__ __forceinline__ void tile(I ci, I tap, I, Acc (&out)[TCONV_COUT_TILE]) const {
#pragma unroll
        for (int t = 0; t < TCONV_COUT_TILE; ++t)
            out[t] = t < tile_n ? to_acc(__ldg(w + ci * channel + t * taps + tap)) : Acc(0);
    }
};

// Weights of the tile staged in shared memory as [channel][tap of the
// phase][output channel], zero beyond the tile.
template <typename Acc, typename I>
struct SharedWeights {
    const Acc* staged;
    int phase_taps;
    __device__ __forceinline__ void tile(I ci, I, I j, Acc (&out)[TCONV_COUT_TILE]) const {
        load_tile(staged + (ci * phase_taps + j) * TCONV_COUT_TILE, out);
    }
};

// acc += x * w over every tap of the tile's phase and `channels` input
// channels from x_g on. The taps of the first two dimensions are the outer
// loops (their bounds are checked once per input row); the row's taps are the
// innermost loop, unrolled when the sizes are fixed, so each input channel
// issues its loads independently of one another. weights.tile(ci, tap, j, w)
// gives the tile's weights for input channel ci at kernel tap `tap` (linear
// index into k0*k1*k2), which is the j-th tap of the phase.
template <typename T, typename I, typename Acc, typename Weights>
__device__ __forceinline__ void accumulate(const T* __restrict__ x_g, I channels, const Shape<I>& s,
                                           const Tile<I>& work, const Weights& weights,
                                           Accumulators<Acc>& acc) {
    const PhaseDim<I>& p0 = work.p0;
    const PhaseDim<I>& p1 = work.p1;
    const PhaseDim<I>& p2 = work.p2;
    for (I a = 0; a < p0.count; ++a) {
        const I i0 = work.u0 + p0.offset - a * p0.input_step;
        if (!inside(i0, s.in0)) continue;
        const I q0 = p0.tap + a * p0.tap_step;
        for (I b = 0; b < p1.count; ++b) {
            const I i1 = work.u1 + p1.offset - b * p1.input_step;
            if (!inside(i1, s.in1)) continue;
            const I q1 = p1.tap + b * p1.tap_step;
            const T* row = x_g + (i0 * s.in1 + i1) * s.in2;
            const I tap_ab = (q0 * s.K1 + q1) * s.K2 + p2.tap;
            const I j_ab = (a * p1.count + b) * p2.count;
            for (I ci = 0; ci < channels; ++ci) {
                const I n2 = fixed_taps::dim2 ? (I)fixed_taps::dim2 : p2.count;
#pragma unroll
                for (I c = 0; c < n2; ++c) {
                    if (c >= p2.count) break;
                    const I i2 = work.u2 + p2.offset - c * p2.input_step;
                    bool ok[TCONV_PIXELS];
                    if (!pixels_reading(i2, s.in2, work.second, ok)) continue;
                    Acc xv[TCONV_PIXELS];
                    load_pixels<T, I, Acc>(row + ci * s.in_plane, i2, ok, xv);
                    Acc wv[TCONV_COUT_TILE];
                    weights.tile(ci, tap_ab + c * p2.tap_step, j_ab + c, wv);
#pragma unroll
                    for (int t = 0; t < TCONV_COUT_TILE; ++t)
#pragma unroll
                        for (int p = 0; p < TCONV_PIXELS; ++p)
                            if (ok[p]) acc.v[t][p] += xv[p] * wv[t];
                }
            }
        }
    }
}

}  // namespace tiled

// Weights through the read-only cache; no shared memory.
template <typename T, typename I>
__global__ void conv_transpose_phase(
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
    using namespace tiled;
    typedef typename accumulator<T>::type Acc;
    const Shape<I> s = make_shape<I>(total, groups, c_in_per_group, c_out_per_group, in0, in1, in2,
                                     out0, out1, out2, k0, k1, k2, stride0, stride1, stride2,
                                     pad0, pad1, pad2, dil0, dil1, dil2, gcd0, gcd1, gcd2,
                                     inv0, inv1, inv2);
    const I w_channel = c_out_per_group * s.taps;  // weight stride between input channels
    for (I block = (I)blockIdx.x; block < s.blocks; block += (I)gridDim.x) {
        const Tile<I> tile = tile_of<I>(s, block, (I)threadIdx.x);
        if (!tile.active) continue;
        const GlobalWeights<T, I> weights = {
            w + tile.group * c_in_per_group * w_channel + tile.co0 * s.taps, w_channel, s.taps,
            tile.tile_n};
        Accumulators<Acc> acc;
        accumulate<T, I, Acc>(input_of<T, I>(x, s, tile, 0), c_in_per_group, s, tile, weights, acc);
        store_tile<T, I, Acc>(y, bias, s, tile, acc);
    }
}

// Weights staged in shared memory, TCONV_CI_CHUNK input channels at a time:
// [channel][tap of the phase][output channel of the tile], in the accumulator
// type. Every thread of a block takes part in staging and in every
// __syncthreads(), including threads without an output.
template <typename T, typename I>
__global__ void conv_transpose_phase_smem(
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
    using namespace tiled;
    typedef typename accumulator<T>::type Acc;
    // 16-byte alignment and a tile width that is a multiple of the vector
    // width keep every (channel, tap) row of the tile vector-aligned.
    __shared__ __align__(16) Acc staged[TCONV_CI_CHUNK * fixed_taps::phase * TCONV_COUT_TILE];
    const Shape<I> s = make_shape<I>(total, groups, c_in_per_group, c_out_per_group, in0, in1, in2,
                                     out0, out1, out2, k0, k1, k2, stride0, stride1, stride2,
                                     pad0, pad1, pad2, dil0, dil1, dil2, gcd0, gcd1, gcd2,
                                     inv0, inv1, inv2);

    // The loop bounds are uniform in the block, so every thread reaches the
    // same barriers.
    for (I block = (I)blockIdx.x; block < s.blocks; block += (I)gridDim.x) {
        const Tile<I> tile = tile_of<I>(s, block, (I)threadIdx.x);
        const PhaseDim<I>& p0 = tile.p0;
        const PhaseDim<I>& p1 = tile.p1;
        const PhaseDim<I>& p2 = tile.p2;
        const int phase_taps = (int)(p0.count * p1.count * p2.count);  // <= fixed_taps::phase (host-checked)
        const T* w_g = w + (tile.group * c_in_per_group * c_out_per_group + tile.co0) * s.taps;
        Accumulators<Acc> acc;
        for (I ci0 = 0; ci0 < c_in_per_group; ci0 += TCONV_CI_CHUNK) {
            const int chunk = (int)(c_in_per_group - ci0 < TCONV_CI_CHUNK ? c_in_per_group - ci0
                                                                          : TCONV_CI_CHUNK);
            __syncthreads();  // the previous chunk is no longer read
            for (int e = threadIdx.x; e < TCONV_CI_CHUNK * phase_taps * TCONV_COUT_TILE; e += TCONV_BLOCK) {
                const int t = e % TCONV_COUT_TILE;
                const int j = e / TCONV_COUT_TILE % phase_taps;
                const int c = e / TCONV_COUT_TILE / phase_taps;
                const I q2 = p2.tap + j % (int)p2.count * p2.tap_step;
                const I q1 = p1.tap + j / (int)p2.count % (int)p1.count * p1.tap_step;
                const I q0 = p0.tap + j / (int)p2.count / (int)p1.count * p0.tap_step;
                staged[e] = c < chunk && t < tile.tile_n
                    ? to_acc(w_g[((ci0 + c) * c_out_per_group + t) * s.taps + (q0 * s.K1 + q1) * s.K2 + q2])
                    : Acc(0);
            }
            __syncthreads();
            if (!tile.active) continue;
            const SharedWeights<Acc, I> weights = {staged, phase_taps};
            accumulate<T, I, Acc>(input_of<T, I>(x, s, tile, ci0), (I)chunk, s, tile, weights, acc);
        }
        if (tile.active) store_tile<T, I, Acc>(y, bias, s, tile, acc);
    }
}

}  // namespace gpu_tconv
