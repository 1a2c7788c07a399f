// Host-only check of the scalar mathematics the CUDA kernels call
// (elementwise.h: Philox4x32-10, uint -> uniform, Box-Muller, the 16-bit
// conversions) and of csrc/cuda/fast_div.cuh. Plain C++: no GPU, no CUDA.
//
//   g++ -O2 -std=c++17 -Icsrc/include -Icsrc/cuda csrc/cuda/tests/host_check.cpp
//       -o /tmp/host_check && /tmp/host_check
//
// The expected words and normals come from ddm_fast/backends/reference.py
// (philox4x32 and randn, torch on CPU); the first row is also Random123's
// Philox4x32-10 known answer for counter 0, key 0.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "ddm_fast/elementwise.h"
#include "fast_div.cuh"

using namespace ddm_fast;

static int failures = 0;
#define CHECK(cond, ...)                    \
  do {                                      \
    if (!(cond)) {                          \
      ++failures;                           \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);             \
      std::printf("\n");                    \
    }                                       \
  } while (0)

struct Known {
  uint64_t counter, seed;
  uint32_t words[4];
  float normals[4];  // noise[4 counter + j] of reference.randn
};

// python: reference.philox4x32(counter lo, counter hi, seed); reference.randn(4, seed, 4 counter)
static const Known kKnown[] = {
    {0ull, 0ull, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}, {4.655152932e-02f, 6.699951887e-01f, 2.741977274e-01f, -1.095426559e+00f}},
    {1ull, 0ull, {0xf8e4cca4u, 0x5cb200dbu, 0xb1a574ebu, 0x097eff67u}, {-3.883614242e-01f, -2.373033285e+00f, 8.850517869e-01f, 4.452843964e-01f}},
    {0ull, 1ull, {0xe3e80670u, 0xe50a0ebcu, 0x95f222c0u, 0xb615aa27u}, {4.264178574e-01f, 1.688532352e+00f, -5.420960784e-01f, -2.868672609e-01f}},
    {12345ull, 42ull, {0xef322867u, 0x9ef3c3f2u, 0x43a13feeu, 0x634033fbu}, {1.035995781e-01f, -2.012482405e+00f, 1.794867516e-01f, -1.115233421e+00f}},
    {4294967303ull, 1099511627779ull, {0xc7afd464u, 0xec94cf8eu, 0x1e98244cu, 0xaafc5fb4u}, {7.420645356e-01f, 1.044769883e+00f, -8.687873483e-01f, -1.451771736e+00f}},
    {2305843009213693957ull, 9223372036854775807ull, {0xfafdcf0cu, 0x79b7681bu, 0x6cc6fdcdu, 0xc67e5cf4u}, {2.425780773e+00f, -7.728853822e-01f, -5.417492390e-01f, 1.787813455e-01f}},
    {4294967295ull, 6822318947648322238ull, {0x48d450f9u, 0x634f1abbu, 0xd76cf28bu, 0x0a940d39u}, {1.717412919e-01f, -1.048011065e+00f, 1.316034198e+00f, 7.522225380e-01f}},
};

static int32_t ulp_distance(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if (ia < 0) ia = std::numeric_limits<int32_t>::min() - ia;
  if (ib < 0) ib = std::numeric_limits<int32_t>::min() - ib;
  const int64_t d = static_cast<int64_t>(ia) - ib;
  return static_cast<int32_t>(d < 0 ? -d : d);
}

static void check_philox() {
  int worst = 0;
  for (const Known& k : kKnown) {
    const Words4 w = philox4x32_10(k.counter, k.seed);
    for (int j = 0; j < 4; ++j)
      CHECK(w.w[j] == k.words[j], "philox(%llu, %llu) word %d: %08x != %08x",
            (unsigned long long)k.counter, (unsigned long long)k.seed, j, w.w[j], k.words[j]);
    float n[4];
    normals4(k.counter, k.seed, n);
    for (int j = 0; j < 4; ++j) {
      const int d = ulp_distance(n[j], k.normals[j]);
      worst = d > worst ? d : worst;
      CHECK(d <= 4, "normals4(%llu, %llu)[%d] = %.9g, reference %.9g (%d ulp)",
            (unsigned long long)k.counter, (unsigned long long)k.seed, j, n[j], k.normals[j], d);
      const float single = normal_at(4 * k.counter + j, k.seed);
      CHECK(std::memcmp(&single, &n[j], 4) == 0, "normal_at != normals4 component");
    }
  }
  std::printf("philox: %zu known counters, words exact, normals within %d ulp of torch\n",
              sizeof(kKnown) / sizeof(kKnown[0]), worst);
}

static void check_uniform() {
  CHECK(uint_to_uniform(0u) == 0.0f, "u(0)");
  CHECK(uint_to_uniform(0xFFFFFFFFu) == 0.0f, "u(-1) -> ~x = 0");
  CHECK(uint_to_uniform(0x7FFFFFFFu) == static_cast<float>(0x7FFFFFFF) * kUintToUniform,
        "u(INT_MAX)");
  CHECK(uint_to_uniform(0x80000000u) == uint_to_uniform(0x7FFFFFFFu), "u(INT_MIN) = u(INT_MAX)");
  CHECK(uint_to_uniform(0x7FFFFFFFu) <= 1.0f, "u <= 1");
  float n0, n1;
  box_muller(0.0f, 0.25f, &n0, &n1);  // u1 clamped to 1e-7: finite
  CHECK(std::isfinite(n0) && std::isfinite(n1), "box_muller(0, .) finite");
  std::printf("uniform / Box-Muller edge cases checked\n");
}

static void check_conversions() {
  // fp16 -> float -> fp16 is the identity on every non-NaN pattern
  int nan_count = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_float(static_cast<uint16_t>(h));
    if (f != f) {
      ++nan_count;
      CHECK((float_to_fp16(f) & 0x7C00u) == 0x7C00u && (float_to_fp16(f) & 0x3FFu) != 0,
            "fp16 NaN stays NaN");
      continue;
    }
    CHECK(float_to_fp16(f) == h, "fp16 roundtrip %04x", h);
#if defined(__FLT16_MAX__)
    _Float16 ref;
    const uint16_t bits = static_cast<uint16_t>(h);
    std::memcpy(&ref, &bits, 2);
    CHECK(static_cast<float>(ref) == f, "fp16_to_float %04x", h);
#endif
    // bf16: shift, and back
    const float b = bf16_to_float(static_cast<uint16_t>(h));
    if (b == b) CHECK(float_to_bf16(b) == h, "bf16 roundtrip %04x", h);
  }
  CHECK(nan_count == 2046, "fp16 NaN patterns: %d", nan_count);
  // float -> fp16 / bf16 rounding against the compiler's _Float16 and a
  // double-based round-to-nearest-even, on random and boundary floats
  std::mt19937 rng(1234);
  std::uniform_int_distribution<uint32_t> bits32;
  int checked = 0;
  for (int t = 0; t < 2000000; ++t) {
    uint32_t u = bits32(rng);
    if (t % 4 == 1) u = (u & 0x8FFFFFFFu) | 0x30000000u;  // near fp16's range
    if (t % 4 == 2) u = (u & 0x80001FFFu) | (static_cast<uint32_t>(t % 40 + 100) << 23);
    float f;
    std::memcpy(&f, &u, 4);
    if (f != f) continue;
#if defined(__FLT16_MAX__)
    const _Float16 ref = static_cast<_Float16>(f);
    uint16_t ref_bits;
    std::memcpy(&ref_bits, &ref, 2);
    CHECK(float_to_fp16(f) == ref_bits, "float_to_fp16(%a) = %04x, _Float16 %04x", f,
          float_to_fp16(f), ref_bits);
#endif
    // bf16: RNE of the upper 16 bits
    const uint32_t lower = u & 0xFFFFu, upper = u >> 16;
    uint32_t want = upper;
    if (lower > 0x8000u || (lower == 0x8000u && (upper & 1u))) ++want;
    CHECK(float_to_bf16(f) == static_cast<uint16_t>(want), "float_to_bf16(%a)", f);
    ++checked;
  }
#if defined(__FLT16_MAX__)
  std::printf("fp16/bf16 conversions: all 65536 patterns, %d random floats (fp16 vs _Float16)\n",
              checked);
#else
  std::printf("fp16/bf16 conversions: all 65536 patterns, %d random floats (no _Float16 here)\n",
              checked);
#endif
}

template <typename I>
static void check_fast_div_one(I d, I n) {
  const cuda::FastDiv<I> f(d);
  const I q = f.div(n);
  CHECK(q == n / d, "FastDiv<%zu>(%lld).div(%lld) = %lld, want %lld", sizeof(I), (long long)d,
        (long long)n, (long long)q, (long long)(n / d));
}

template <typename I>
static void check_fast_div() {
  const I kMax = std::numeric_limits<I>::max();
  std::mt19937_64 rng(99);
  std::vector<I> divisors;
  for (I d = 1; d < 300; ++d) divisors.push_back(d);
  for (int s = 1; s < static_cast<int>(8 * sizeof(I)) - 1; ++s) {
    const I p = static_cast<I>(I(1) << s);
    divisors.push_back(p);
    divisors.push_back(p - 1);
    divisors.push_back(p + 1);
  }
  divisors.push_back(kMax);
  divisors.push_back(kMax - 1);
  for (int t = 0; t < 2000; ++t) divisors.push_back(static_cast<I>(rng() % kMax) + 1);
  for (I d : divisors) {
    const I ns[] = {0, 1, d - 1, d, d + 1 > 0 ? d + 1 : d, kMax, kMax - 1, kMax / d * d,
                    kMax / d * d - 1};
    for (I n : ns)
      if (n >= 0) check_fast_div_one<I>(d, n);
    for (int t = 0; t < 200; ++t) check_fast_div_one<I>(d, static_cast<I>(rng() % (uint64_t(kMax) + 1)));
    for (int t = 0; t < 50; ++t) {
      const uint64_t k = rng() % (uint64_t(kMax / d) + 1);
      const I base = static_cast<I>(k * d);
      check_fast_div_one<I>(d, base);
      if (base > 0) check_fast_div_one<I>(d, base - 1);
    }
  }
  std::printf("FastDiv<int%zu>: %zu divisors checked against /\n", 8 * sizeof(I),
              divisors.size());
}

int main() {
  check_philox();
  check_uniform();
  check_conversions();
  check_fast_div<int32_t>();
  check_fast_div<int64_t>();
  if (failures) {
    std::printf("%d FAILURES\n", failures);
    return 1;
  }
  std::printf("host_check: all passed\n");
  return 0;
}
