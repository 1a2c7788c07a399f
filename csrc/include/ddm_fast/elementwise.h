// The element-wise mathematics shared by every C++ and CUDA kernel of
// ddm_fast: Philox4x32-10, the uint32 -> uniform conversion, Box-Muller
// (docs/math.md, "Counter-based noise") and the storage conversions.
//
// Everything here is `DDM_HD inline`: the same source compiles for the host
// (the portable CPU path, and the reference the SIMD paths are tested
// against) and for the device (the CUDA kernels). No fast-math: the uint32
// words and the uniforms must be bit-identical to Triton's tl.randint4x /
// tl.randn4x, the normals within a few ulp (log, sin and cos come from the
// platform's libm or CUDA's precise logf/sinf/cosf).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DDM_HD __host__ __device__
#else
#define DDM_HD
#endif

namespace ddm_fast {

// Storage dtypes crossing the binding (the Python side maps torch dtypes).
enum DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

// ------------------------------------------------------------ Philox4x32-10
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

struct Words4 {
  uint32_t w[4];
};

DDM_HD inline void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// Philox4x32-10 of counter (lo, hi, 0, 0) under key (seed lo, seed hi): the
// word sequence of Triton's tl.randint4x(seed, counter) for Triton >= 3.5.
DDM_HD inline Words4 philox4x32_10(uint64_t counter, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(counter);
  uint32_t c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0u, c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    uint32_t hi_b, lo_b, hi_a, lo_a;
    mulhilo32(kPhiloxRoundB, c2, &hi_b, &lo_b);
    mulhilo32(kPhiloxRoundA, c0, &hi_a, &lo_a);
    const uint32_t n0 = hi_b ^ c1 ^ k0;
    const uint32_t n2 = hi_a ^ c3 ^ k1;
    c0 = n0;
    c1 = lo_b;
    c2 = n2;
    c3 = lo_a;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return Words4{{c0, c1, c2, c3}};
}

// --------------------------------------------------- words -> normals
constexpr float kUintToUniform = 4.6566127342e-10f;  // float32(2**-31)
constexpr float kTwoPi = 6.283185307179586f;
constexpr float kMinUniform = 1.0e-7f;

// Reinterpret as int32, map negative x to ~x, round to float32, scale.
DDM_HD inline float uint_to_uniform(uint32_t word) {
  int32_t x = static_cast<int32_t>(word);
  if (x < 0) x = ~x;
  return static_cast<float>(x) * kUintToUniform;
}

// Box-Muller: (r cos(theta), r sin(theta)), r = sqrt(-2 ln max(u1, 1e-7)),
// theta = 2 pi u2, all in float32.
DDM_HD inline void box_muller(float u1, float u2, float* n0, float* n1) {
  u1 = u1 < kMinUniform ? kMinUniform : u1;
  const float theta = kTwoPi * u2;
#if defined(__CUDA_ARCH__)
  const float radius = sqrtf(-2.0f * logf(u1));
  float s, c;
  sincosf(theta, &s, &c);
#else
  const float radius = std::sqrt(-2.0f * std::log(u1));
  const float s = std::sin(theta), c = std::cos(theta);
#endif
  *n0 = radius * c;
  *n1 = radius * s;
}

// The four normals of Philox counter `counter`: noise[4 counter + j].
DDM_HD inline void normals4(uint64_t counter, uint64_t seed, float out[4]) {
  const Words4 words = philox4x32_10(counter, seed);
  box_muller(uint_to_uniform(words.w[0]), uint_to_uniform(words.w[1]), &out[0], &out[1]);
  box_muller(uint_to_uniform(words.w[2]), uint_to_uniform(words.w[3]), &out[2], &out[3]);
}

// noise[g] for one global element index g (the slow path for edges).
DDM_HD inline float normal_at(uint64_t g, uint64_t seed) {
  float n[4];
  normals4(g >> 2, seed, n);
  return n[g & 3];
}

// --------------------------------------------------- storage conversions
DDM_HD inline float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even, NaN kept a (quiet) NaN.
DDM_HD inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

DDM_HD inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  uint32_t u;
  if (exponent == 0x1Fu) {
    u = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent == 0) {
    if (mantissa == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      exponent = 113;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        --exponent;
      }
      u = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
    }
  } else {
    u = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even (subnormals and overflow to inf included).
DDM_HD inline uint16_t float_to_fp16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);  // NaN
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // inf / overflow
  if (abs < 0x38800000u) {  // subnormal half (or zero)
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t exponent = abs >> 23;
    const uint32_t mantissa = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - exponent;  // 14 .. 24
    uint32_t half = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t rounded = abs + 0xFFFu + ((abs >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

}  // namespace ddm_fast
