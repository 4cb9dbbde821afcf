// Host stand-in for CUDA's cuda_bf16.h: __nv_bfloat16 is a real 16-bit type
// (the upper half of an IEEE binary32), trivially default-constructible like
// the device type, so that __shared__ arrays of it are not constructed (and
// keep the garbage the emulator fills shared memory with). Conversions from
// float round to nearest even, as __float2bfloat16_rn and ml_dtypes do.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace gpu_tconv_emulator {

inline unsigned short float_to_bfloat16_bits(float f) {
    std::uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN
        return static_cast<unsigned short>((bits >> 16) | 0x0040u);
    }
    // Round to nearest, ties to even, on the 16 bits dropped.
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<unsigned short>(bits >> 16);
}

inline float bfloat16_bits_to_float(unsigned short h) {
    const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

}  // namespace gpu_tconv_emulator

struct __attribute__((aligned(2))) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(gpu_tconv_emulator::float_to_bfloat16_bits(f)) {}
    __nv_bfloat16(double f) : __nv_bfloat16(static_cast<float>(f)) {}
    operator float() const { return gpu_tconv_emulator::bfloat16_bits_to_float(__x); }
};

static_assert(std::is_trivially_default_constructible<__nv_bfloat16>::value &&
                  sizeof(__nv_bfloat16) == 2,
              "__nv_bfloat16 must be a trivial 16-bit type, as on the device");

// Two bfloat16 values, aligned to 4 bytes as on the device.
struct __attribute__((aligned(4))) __nv_bfloat162 { __nv_bfloat16 x, y; };

inline float __bfloat162float(__nv_bfloat16 h) {
    return gpu_tconv_emulator::bfloat16_bits_to_float(h.__x);
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    __nv_bfloat16 h;
    h.__x = gpu_tconv_emulator::float_to_bfloat16_bits(f);
    return h;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
