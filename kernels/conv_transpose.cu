// Transposed convolution (PyTorch's conv_transpose1d/2d/3d), gather formulation.
//
// One thread computes one output element y[n, co, o0, o1, o2] and writes it
// once: it visits exactly the (input pixel, kernel tap) pairs that reach that
// element, so there are no atomics and the result is deterministic bit for bit.
//
// Every rank is run as 3-D: a 1-D or 2-D problem has leading spatial sizes of 1
// (kernel 1, stride 1, padding 0, dilation 1), which costs one trivial loop
// level and keeps a single source for all ranks.
//
// Layouts (C-contiguous):
//   x    (N, C_in, in0, in1, in2)     or, channels last, (N, in0, in1, in2, C_in)
//   w    (C_in, C_out/groups, k0, k1, k2)
//   bias (C_out) or a null pointer
//   y    (N, C_out, out0, out1, out2) or, channels last, (N, out0, out1, out2, C_out)
// Output o of a dimension takes input i through tap k when
// o = i*stride + k*dilation - pad, pad being the padding removed at the low end; the
// host computes the output sizes (which also fold in the high-end padding and the
// output padding).
//
// Template parameters: T is the element type (__half, __nv_bfloat16, float,
// double); I is the
// index type, int where every size and offset fits in 31 bits (faster), long
// long otherwise; CHANNELS_LAST selects the layout of x and y. The host picks them
// per launch.
//
// The file has no host code and no runtime API calls: it is compiled by NVRTC
// (through CuPy), by nvcc (compile checks) and by the host C++ compiler through
// a small CUDA shim (the emulated backend).

#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace gpu_tconv {

// Accumulate in float for __half and __nv_bfloat16 (as PyTorch does), in T otherwise.
template <typename T> struct accumulator { typedef T type; };
template <> struct accumulator<__half> { typedef float type; };
template <> struct accumulator<__nv_bfloat16> { typedef float type; };

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T> __device__ __forceinline__ T from_acc(typename accumulator<T>::type v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// The taps of one spatial dimension that reach output coordinate o.
//
// Tap k reaches o from input i when o + pad - k*dil == i*stride with
// 0 <= i < in. The taps satisfying the congruence k*dil == o + pad (mod stride)
// form an arithmetic progression: with g = gcd(stride, dil), a solution exists
// only when g divides r = o + pad, and then k == (r/g) * inv (mod stride/g),
// where inv is the inverse of dil/g modulo stride/g (computed on the host).
// Successive taps are stride/g apart and their input index drops by dil/g, so
// the first tap, its input index and the number of valid taps are found with a
// few divisions here and the inner loops carry no divisibility tests.
template <typename I>
struct TapRange {
    I tap;    // first tap that reaches o
    I input;  // input index reached by that tap
    I count;  // number of taps that reach o (0 if none)
    I tap_step;
    I input_step;
};

template <typename I>
__device__ __forceinline__ TapRange<I> taps_reaching(
        I o, I in, I k, I stride, I pad, I dil, I g, I inv) {
    TapRange<I> t;
    t.tap_step = stride / g;
    t.input_step = dil / g;
    t.count = 0;
    t.tap = 0;
    t.input = 0;
    const I r = o + pad;  // >= 0
    if (r % g != 0) return t;
    // The product is taken in 64 bits: (stride/g) * inv may exceed 31 bits.
    const I first = (I)(((long long)((r / g) % t.tap_step) * (long long)inv) % (long long)t.tap_step);
    if (first >= k) return t;
    const I rest = r - first * dil;  // = input index of the first tap * stride
    if (rest < 0) return t;
    I i0 = rest / stride;
    // Skip the taps whose input index lies beyond the input (i >= in).
    I skip = 0;
    if (i0 >= in) skip = (i0 - in + t.input_step) / t.input_step;
    const I by_tap = (k - first + t.tap_step - 1) / t.tap_step;  // taps < k
    const I by_input = i0 / t.input_step + 1;                    // inputs >= 0
    const I n = (by_tap < by_input ? by_tap : by_input) - skip;
    if (n <= 0) return t;
    t.tap = first + skip * t.tap_step;
    t.input = i0 - skip * t.input_step;
    t.count = n;
    return t;
}

// Where element ``index`` of an activation tensor lies: sample, channel and
// spatial position, for the layout (N, C, s0, s1, s2), or (N, s0, s1, s2, C)
// when channels are last.
template <typename I>
struct Position {
    I n, c, p0, p1, p2;
};

template <typename I, bool CHANNELS_LAST>
__device__ __forceinline__ Position<I> position_of(I index, I channels, I s0, I s1, I s2) {
    Position<I> at;
    if (CHANNELS_LAST) { at.c = index % channels; index /= channels; }
    at.p2 = index % s2; index /= s2;
    at.p1 = index % s1; index /= s1;
    at.p0 = index % s0; index /= s0;
    if (!CHANNELS_LAST) { at.c = index % channels; index /= channels; }
    at.n = index;
    return at;
}

template <typename T, typename I, bool CHANNELS_LAST>
__global__ void conv_transpose_gather(
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
    typedef typename accumulator<T>::type Acc;
    const I c_out = groups * c_out_per_group;
    const I c_in = groups * c_in_per_group;
    const I in_plane = in0 * in1 * in2;
    const I taps = k0 * k1 * k2;
    const I w_channel = c_out_per_group * taps;  // weight stride between input channels
    // Strides of x between input channels and between input pixels.
    const I x_channel = CHANNELS_LAST ? 1 : in_plane;
    const I x_pixel = CHANNELS_LAST ? c_in : 1;

    // Grid-stride loop: consecutive threads take consecutive outputs (in memory
    // order: the last spatial dimension, or the channel when channels are last),
    // so stores are coalesced.
    for (I index = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; index < total;
         index += (I)blockDim.x * (I)gridDim.x) {
        const Position<I> at = position_of<I, CHANNELS_LAST>(index, c_out, out0, out1, out2);
        const I n = at.n, co = at.c, o0 = at.p0, o1 = at.p1, o2 = at.p2;
        const I group = co / c_out_per_group;
        const I co_in_group = co - group * c_out_per_group;

        const TapRange<I> t0 = taps_reaching<I>(o0, in0, k0, stride0, pad0, dil0, gcd0, inv0);
        const TapRange<I> t1 = taps_reaching<I>(o1, in1, k1, stride1, pad1, dil1, gcd1, inv1);
        const TapRange<I> t2 = taps_reaching<I>(o2, in2, k2, stride2, pad2, dil2, gcd2, inv2);

        const T* x_n = x + n * c_in * in_plane + group * c_in_per_group * x_channel;
        const T* w_g = w + (group * c_in_per_group) * w_channel + co_in_group * taps;

        Acc acc = 0;
        for (I a = 0; a < t0.count; ++a) {
            const I i0 = t0.input - a * t0.input_step;
            const I q0 = t0.tap + a * t0.tap_step;
            for (I b = 0; b < t1.count; ++b) {
                const I i1 = t1.input - b * t1.input_step;
                const I q1 = t1.tap + b * t1.tap_step;
                for (I c = 0; c < t2.count; ++c) {
                    const I i2 = t2.input - c * t2.input_step;
                    const I q2 = t2.tap + c * t2.tap_step;
                    const T* xp = x_n + ((i0 * in1 + i1) * in2 + i2) * x_pixel;
                    const T* wp = w_g + (q0 * k1 + q1) * k2 + q2;
                    for (I ci = 0; ci < c_in_per_group; ++ci) {
                        acc += to_acc(xp[ci * x_channel]) * to_acc(wp[ci * w_channel]);
                    }
                }
            }
        }
        if (bias != 0) acc += to_acc(bias[co]);
        y[index] = from_acc<T>(acc);
    }
}

}  // namespace gpu_tconv

// ---------------------------------------------------------------------------
// Backward passes. With y = conv_transpose(x, w), the gradient of x is the
// forward (strided) convolution of dy with w, and the gradient of w correlates
// x with dy; each is again a gather, one thread per element of the gradient it
// writes, so they are deterministic too. Same layouts and geometry arguments as
// the forward kernel (``total`` counts the elements written).

namespace gpu_tconv {

// dx[n, ci, i] = sum over taps k and channels co of its group of
//                w[ci, co, k] * dy[n, co, i*stride + k*dil - pad], where in range.
template <typename T, typename I, bool CHANNELS_LAST>
__global__ void conv_transpose_grad_input(
        const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,
        const I total, const I groups, const I c_in_per_group, const I c_out_per_group,
        const I in0, const I in1, const I in2,
        const I out0, const I out1, const I out2,
        const I k0, const I k1, const I k2,
        const I stride0, const I stride1, const I stride2,
        const I pad0, const I pad1, const I pad2,
        const I dil0, const I dil1, const I dil2) {
    typedef typename accumulator<T>::type Acc;
    const I c_out = groups * c_out_per_group;
    const I c_in = groups * c_in_per_group;
    const I out_plane = out0 * out1 * out2;
    const I taps = k0 * k1 * k2;
    const I dy_channel = CHANNELS_LAST ? 1 : out_plane;
    const I dy_pixel = CHANNELS_LAST ? c_out : 1;

    for (I index = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; index < total;
         index += (I)blockDim.x * (I)gridDim.x) {
        const Position<I> at = position_of<I, CHANNELS_LAST>(index, c_in, in0, in1, in2);
        const I n = at.n, ci = at.c, i0 = at.p0, i1 = at.p1, i2 = at.p2;
        const I group = ci / c_in_per_group;

        const T* dy_n = dy + n * c_out * out_plane + group * c_out_per_group * dy_channel;
        const T* w_ci = w + ci * c_out_per_group * taps;
        Acc acc = 0;
        for (I q0 = 0; q0 < k0; ++q0) {
            const I o0 = i0 * stride0 + q0 * dil0 - pad0;
            if (o0 < 0 || o0 >= out0) continue;
            for (I q1 = 0; q1 < k1; ++q1) {
                const I o1 = i1 * stride1 + q1 * dil1 - pad1;
                if (o1 < 0 || o1 >= out1) continue;
                for (I q2 = 0; q2 < k2; ++q2) {
                    const I o2 = i2 * stride2 + q2 * dil2 - pad2;
                    if (o2 < 0 || o2 >= out2) continue;
                    const T* dyp = dy_n + ((o0 * out1 + o1) * out2 + o2) * dy_pixel;
                    const T* wp = w_ci + (q0 * k1 + q1) * k2 + q2;
                    for (I co = 0; co < c_out_per_group; ++co) {
                        acc += to_acc(dyp[co * dy_channel]) * to_acc(wp[co * taps]);
                    }
                }
            }
        }
        dx[index] = from_acc<T>(acc);
    }
}

// One weight element of the weight gradient: its input and output channel (ci and
// co, the latter across groups) from its flat index e in the layout (C_in, C_out/G,
// k0, k1, k2), and the inputs its tap q reaches, per dimension the i in [lo, hi)
// with 0 <= i*stride + q*dil - pad < out (o = i*stride - r, r = pad - q*dil).
template <typename I>
struct WeightReach { I ci, co, r0, r1, r2, lo0, lo1, lo2, hi0, hi1, hi2; };

template <typename I>
__device__ __forceinline__ I reach_low(I r, I stride) {
    return r > 0 ? (r + stride - 1) / stride : 0;
}

template <typename I>
__device__ __forceinline__ I reach_high(I r, I stride, I out, I in) {
    const I hi = out - 1 + r < 0 ? 0 : (out - 1 + r) / stride + 1;
    return hi > in ? in : hi;
}

template <typename I>
__device__ __forceinline__ WeightReach<I> weight_reach(
        I e, I c_in_per_group, I c_out_per_group, I k0, I k1, I k2, I in0, I in1, I in2,
        I out0, I out1, I out2, I stride0, I stride1, I stride2, I pad0, I pad1, I pad2,
        I dil0, I dil1, I dil2) {
    const I q2 = e % k2; e /= k2;
    const I q1 = e % k1; e /= k1;
    const I q0 = e % k0; e /= k0;
    const I co_in_group = e % c_out_per_group;
    const I ci = e / c_out_per_group;
    const I r0 = pad0 - q0 * dil0, r1 = pad1 - q1 * dil1, r2 = pad2 - q2 * dil2;
    return {ci, (ci / c_in_per_group) * c_out_per_group + co_in_group, r0, r1, r2,
            reach_low(r0, stride0), reach_low(r1, stride1), reach_low(r2, stride2),
            reach_high(r0, stride0, out0, in0), reach_high(r1, stride1, out1, in1),
            reach_high(r2, stride2, out2, in2)};
}

// dw[ci, co, k] = sum over samples n and inputs i of
//                 x[n, ci, i] * dy[n, group*C_out/G + co, i*stride + k*dil - pad], where in range.
template <typename T, typename I, bool CHANNELS_LAST>
__global__ void conv_transpose_grad_weight(
        const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dw,
        const I total, const I groups, const I c_in_per_group, const I c_out_per_group,
        const I in0, const I in1, const I in2,
        const I out0, const I out1, const I out2,
        const I k0, const I k1, const I k2,
        const I stride0, const I stride1, const I stride2,
        const I pad0, const I pad1, const I pad2,
        const I dil0, const I dil1, const I dil2,
        const I batch) {
    typedef typename accumulator<T>::type Acc;
    const I c_out = groups * c_out_per_group;
    const I c_in = groups * c_in_per_group;
    const I in_plane = in0 * in1 * in2;
    const I out_plane = out0 * out1 * out2;
    const I x_channel = CHANNELS_LAST ? 1 : in_plane;
    const I x_pixel = CHANNELS_LAST ? c_in : 1;
    const I dy_channel = CHANNELS_LAST ? 1 : out_plane;
    const I dy_pixel = CHANNELS_LAST ? c_out : 1;

    for (I index = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; index < total;
         index += (I)blockDim.x * (I)gridDim.x) {
        const I rest = index;  // weight layout (C_in, C_out/G, k0, k1, k2)
        const auto [ci, co, r0, r1, r2, lo0, lo1, lo2, hi0, hi1, hi2] = weight_reach(
            rest, c_in_per_group, c_out_per_group, k0, k1, k2, in0, in1, in2,
            out0, out1, out2, stride0, stride1, stride2, pad0, pad1, pad2, dil0, dil1, dil2);

        Acc acc = 0;
        for (I n = 0; n < batch; ++n) {
            const T* x_n = x + n * c_in * in_plane + ci * x_channel;
            const T* dy_n = dy + n * c_out * out_plane + co * dy_channel;
            for (I i0 = lo0; i0 < hi0; ++i0) {
                const I o0 = i0 * stride0 - r0;
                for (I i1 = lo1; i1 < hi1; ++i1) {
                    const I o1 = i1 * stride1 - r1;
                    for (I i2 = lo2; i2 < hi2; ++i2) {
                        const I o2 = i2 * stride2 - r2;
                        acc += to_acc(x_n[((i0 * in1 + i1) * in2 + i2) * x_pixel])
                             * to_acc(dy_n[((o0 * out1 + o1) * out2 + o2) * dy_pixel]);
                    }
                }
            }
        }
        dw[index] = from_acc<T>(acc);
    }
}

}  // namespace gpu_tconv

// ---------------------------------------------------------------------------
// The weight gradient split over many blocks. One thread per weight element has
// too little parallelism where the weight is small and the batch and image are
// large (a DCGAN output layer: about a dozen blocks). Here the reduction over
// samples and inputs, flattened as (n, i0, i1, i2), is cut into ``chunks``
// contiguous ranges of ``chunk_size`` elements: thread (chunk, element) sums its
// range in order into partial[chunk][element] (in the accumulator type), and a
// second kernel adds the partial sums of each element in chunk order. No atomics:
// the result is the same bit for bit on every run, and the split depends on the
// geometry only.

namespace gpu_tconv {

template <typename T, typename I, bool CHANNELS_LAST>
__global__ void conv_transpose_grad_weight_partial(
        const T* __restrict__ x, const T* __restrict__ dy,
        typename accumulator<T>::type* __restrict__ partial,
        const I total, const I groups, const I c_in_per_group, const I c_out_per_group,
        const I in0, const I in1, const I in2,
        const I out0, const I out1, const I out2,
        const I k0, const I k1, const I k2,
        const I stride0, const I stride1, const I stride2,
        const I pad0, const I pad1, const I pad2,
        const I dil0, const I dil1, const I dil2,
        const I batch, const I chunk_size) {
    typedef typename accumulator<T>::type Acc;
    const I c_out = groups * c_out_per_group;
    const I c_in = groups * c_in_per_group;
    const I in_plane = in0 * in1 * in2;
    const I out_plane = out0 * out1 * out2;
    const I x_channel = CHANNELS_LAST ? 1 : in_plane;
    const I x_pixel = CHANNELS_LAST ? c_in : 1;
    const I dy_channel = CHANNELS_LAST ? 1 : out_plane;
    const I dy_pixel = CHANNELS_LAST ? c_out : 1;
    const I elements = c_in * c_out_per_group * k0 * k1 * k2;
    const I reduced = batch * in_plane;  // length of the flattened (n, i0, i1, i2) range

    // Consecutive threads take consecutive weight elements of one chunk, so the
    // partial sums are stored coalesced.
    for (I index = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; index < total;
         index += (I)blockDim.x * (I)gridDim.x) {
        const I chunk = index / elements;
        const I rest = index - chunk * elements;  // weight layout (C_in, C_out/G, k0, k1, k2)
        const auto [ci, co, r0, r1, r2, lo0, lo1, lo2, hi0, hi1, hi2] = weight_reach(
            rest, c_in_per_group, c_out_per_group, k0, k1, k2, in0, in1, in2,
            out0, out1, out2, stride0, stride1, stride2, pad0, pad1, pad2, dil0, dil1, dil2);

        // This chunk's range of the flattened reduction, taken row by row (a row:
        // one (n, i0, i1), in2 elements long).
        const I begin = chunk * chunk_size;
        const I end = begin + chunk_size < reduced ? begin + chunk_size : reduced;
        Acc acc = 0;
        for (I row = begin / in2; row * in2 < end; ++row) {
            const I i1 = row % in1;
            const I i0 = (row / in1) % in0;
            const I n = row / (in1 * in0);
            if (i0 < lo0 || i0 >= hi0 || i1 < lo1 || i1 >= hi1) continue;
            I first = row * in2 < begin ? begin - row * in2 : 0;
            I last = end - row * in2 < in2 ? end - row * in2 : in2;
            if (first < lo2) first = lo2;
            if (last > hi2) last = hi2;
            const T* x_row = x + n * c_in * in_plane + ci * x_channel + (i0 * in1 + i1) * in2 * x_pixel;
            const I o0 = i0 * stride0 - r0, o1 = i1 * stride1 - r1;
            const T* dy_row = dy + n * c_out * out_plane + co * dy_channel
                            + (o0 * out1 + o1) * out2 * dy_pixel;
            for (I i2 = first; i2 < last; ++i2) {
                acc += to_acc(x_row[i2 * x_pixel]) * to_acc(dy_row[(i2 * stride2 - r2) * dy_pixel]);
            }
        }
        partial[index] = acc;
    }
}

// dw[e] = partial[0][e] + partial[1][e] + ... + partial[chunks - 1][e], in that order.
template <typename T, typename I>
__global__ void conv_transpose_grad_weight_combine(
        const typename accumulator<T>::type* __restrict__ partial, T* __restrict__ dw,
        const I total, const I chunks) {
    typedef typename accumulator<T>::type Acc;
    for (I index = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; index < total;
         index += (I)blockDim.x * (I)gridDim.x) {
        Acc acc = 0;
        for (I c = 0; c < chunks; ++c) acc += partial[c * total + index];
        dw[index] = from_acc<T>(acc);
    }
}

}  // namespace gpu_tconv
