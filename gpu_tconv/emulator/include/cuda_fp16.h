// Host stand-in for CUDA's cuda_fp16.h: __half is the compiler's IEEE binary16
// type, whose conversions round to nearest even like the device intrinsics.
#pragma once

typedef _Float16 __half;

// Two halves, aligned to 4 bytes as on the device.
struct __attribute__((aligned(4))) __half2 { __half x, y; };

inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half_rn(float f) { return static_cast<__half>(f); }
