// Host stand-in for CUDA's <mma.h> (nvcuda::wmma), warp-collective semantics
// made explicit for the emulator, which runs every CUDA thread of a block on
// its own host thread.
//
// - A fragment holds the whole tile in every thread (num_elements is rows x
//   cols, not the device's 8 or so per lane). Code that respects the WMMA
//   contract (fragments filled, loaded, multiplied and stored only through
//   these functions, elements touched only uniformly through x[i]) cannot
//   tell the difference.
// - load_matrix_sync and mma_sync compute the whole tile in every thread:
//   products of the 16-bit or TF32 inputs (exact in float) accumulated in
//   float, one rounding per addition, along k.
// - store_matrix_sync is the collective one: each lane writes only its share
//   of the tile (elements whose row-major index is the lane modulo 32), so a
//   lane that skips the call leaves those elements unwritten, as on a GPU.
// - TF32 operands of mma_sync are read as the tensor cores read them: the low
//   13 mantissa bits are ignored. __float_to_tf32 rounds to nearest, ties away
//   from zero, on those bits (cvt.rna.tf32.f32).
// - The pointer and leading-dimension rules of the CUDA documentation (256-bit
//   aligned pointers, ldm a multiple of 16 bytes) are checked; a violation
//   marks the launch as faulty (see cuda_shim.h) instead of passing silently.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

namespace detail {

template <typename Use, int M, int N, int K> struct tile;
template <int M, int N, int K> struct tile<matrix_a, M, N, K> {
    static constexpr int rows = M, cols = K;
};
template <int M, int N, int K> struct tile<matrix_b, M, N, K> {
    static constexpr int rows = K, cols = N;
};
template <int M, int N, int K> struct tile<accumulator, M, N, K> {
    static constexpr int rows = M, cols = N;
};

// What a fragment stores: TF32 operands are held as float.
template <typename T> struct storage { typedef T type; };
template <> struct storage<precision::tf32> { typedef float type; };

// The shapes and types this project's kernels may use (what sm_80 and newer
// offer for them): 16-bit operands at m16n16k16, TF32 at m16n16k8, float
// accumulators.
template <typename Use, int M, int N, int K, typename T> struct supported {
    static constexpr bool value =
        (M == 16 && N == 16 && K == 16 &&
         (std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value ||
          (std::is_same<Use, accumulator>::value && std::is_same<T, float>::value))) ||
        (M == 16 && N == 16 && K == 8 &&
         (std::is_same<T, precision::tf32>::value ||
          (std::is_same<Use, accumulator>::value && std::is_same<T, float>::value)));
};

inline unsigned lane() {
    const unsigned linear = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    return linear % 32u;
}

inline void check(const void* p, unsigned ldm, std::size_t element_bytes) {
    if (reinterpret_cast<std::uintptr_t>(p) % 32u != 0 || (ldm * element_bytes) % 16u != 0) {
        gpu_tconv_report_fault(GPU_TCONV_FAULT_WMMA);
    }
}

inline float value(float v) { return v; }
inline float value(__half v) { return static_cast<float>(v); }
inline float value(__nv_bfloat16 v) { return __bfloat162float(v); }

// A TF32 operand as the tensor cores read it: the low 13 mantissa bits dropped.
inline float tf32_operand(float v) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits &= 0xffffe000u;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

template <typename T> inline float operand(typename storage<T>::type v) { return value(v); }
template <> inline float operand<precision::tf32>(float v) { return tf32_operand(v); }

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
    static_assert(detail::supported<Use, M, N, K, T>::value,
                  "this WMMA shape and element type is not available");
    typedef detail::tile<Use, M, N, K> dims;

public:
    typedef typename detail::storage<T>::type element_type;
    typedef element_type storage_element_type;
    static constexpr int rows = dims::rows, cols = dims::cols;
    static constexpr int num_elements = rows * cols;
    // Element (r, c) of the tile at x[r * cols + c].
    element_type x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f,
                          const typename fragment<Use, M, N, K, T, L>::element_type& v) {
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

// Operand tiles (matrix_a, matrix_b): the layout is part of the fragment type.
template <typename Use, int M, int N, int K, typename T, typename L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f,
                             const typename fragment<Use, M, N, K, T, L>::element_type* p,
                             unsigned ldm) {
    static_assert(std::is_same<L, row_major>::value || std::is_same<L, col_major>::value,
                  "operand fragments need a row_major or col_major layout");
    typedef fragment<Use, M, N, K, T, L> F;
    detail::check(p, ldm, sizeof(typename F::element_type));
    const bool row = std::is_same<L, row_major>::value;
    for (int r = 0; r < F::rows; ++r)
        for (int c = 0; c < F::cols; ++c)
            f.x[r * F::cols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
}

// Accumulator tiles: the memory layout is an argument.
template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
    typedef fragment<accumulator, M, N, K, float> F;
    detail::check(p, ldm, sizeof(float));
    for (int r = 0; r < F::rows; ++r)
        for (int c = 0; c < F::cols; ++c)
            f.x[r * F::cols + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f,
                              unsigned ldm, layout_t layout) {
    typedef fragment<accumulator, M, N, K, float> F;
    detail::check(p, ldm, sizeof(float));
    // This lane's share of the tile only: the other lanes write the rest.
    for (int i = static_cast<int>(detail::lane()); i < F::num_elements; i += 32) {
        const int r = i / F::cols, c = i % F::cols;
        (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[i];
    }
}

// d = a * b + c over the whole tile, in float, the k terms added in order.
template <int M, int N, int K, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
    float out[M * N];
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
            float acc = c.x[m * N + n];
            for (int k = 0; k < K; ++k)
                acc += detail::operand<T>(a.x[m * K + k]) * detail::operand<T>(b.x[k * N + n]);
            out[m * N + n] = acc;
        }
    for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}

// Round to TF32 (10 mantissa bits): to nearest, ties away from zero; NaN and
// infinities unchanged.
inline float __float_to_tf32(float v) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

}  // namespace wmma
}  // namespace nvcuda
