// The counter-based noise (elementwise.h, docs/math.md "Counter-based
// noise") on SIMD vectors: N Philox counters per vector, 4 N normals per
// call. Shared by the AVX2 and AVX-512 units; each supplies a traits struct
// V (in its own anonymous namespace) with the handful of operations used:
//
//   F, I, M                       float vector, int32 vector, lane mask
//   N                             lanes
//   fset(float), iset(uint32)     broadcasts
//   add sub mul max sqrt          float arithmetic (IEEE, correctly rounded)
//   fmadd(a,b,c) = a*b+c, fnmadd(a,b,c) = c-a*b   (fused)
//   round_nearest(F)              to the nearest integer, ties to even
//   to_float(I), to_int(F)        conversions (round to nearest)
//   iadd ixor iand ior srli<n> srai<n> slli<n>
//   as_f(I), as_i(F)              bit casts
//   lt(F, F) -> M                 ordered a < b
//   ieq(I, I) -> M                a == b
//   select(M, a, b)               m ? b : a (floats)
//   mulhilo(I a, I k, I& hi, I& lo)   32x32 -> 64 products, lane-wise
//   counters(uint64 c, I& lo, I& hi)  lanes c .. c + N - 1, split in words
//   store4(float*, F n0, F n1, F n2, F n3)
//       out[4 l + j] = n_j[l]: the transpose into memory order
//   any_nonzero(const uint8_t* p) over 4 N bytes
//
// Accuracy (checked against glibc over every reachable input, see
// csrc/README.md): the uint32 words and the uniforms are bit-identical to
// the scalar path (int32 -> float32 conversion rounds to nearest in both);
// log is Cephes' logf polynomial (|error| <= 1 ulp on [1e-7, 1]); sin/cos
// reduce by pi/2 with a three-part Cody-Waite constant (exact with FMA for
// theta < 2 pi + ulp) and use Cephes' sinf/cosf polynomials (<= 1 ulp). No
// approximate reciprocal/rsqrt instructions, no fast-math.
#pragma once

#include <cstdint>
#include <cstring>

#include "ddm_fast/elementwise.h"

namespace ddm_fast {
namespace cpu {
namespace detail {

template <class V>
struct SimdNoise {
  using F = typename V::F;
  using I = typename V::I;
  using M = typename V::M;
  static constexpr int N = V::N;

  // Natural log for x in [1e-7, 1] (positive, normal).
  static inline F log(F x) {
    const I bits = V::as_i(x);
    // x = m * 2^e with m in [0.5, 1)
    I e = V::iadd(V::template srli<23>(bits), V::iset(static_cast<uint32_t>(-126)));
    F m = V::as_f(V::ior(V::iand(bits, V::iset(0x007FFFFFu)), V::iset(0x3F000000u)));
    // m < sqrt(1/2): e - 1 and f = 2 m - 1 (exact), else f = m - 1 (exact)
    const M small = V::lt(m, V::fset(0.707106781186547524f));
    const F one = V::fset(1.0f);
    const F f = V::sub(V::select(small, m, V::add(m, m)), one);
    e = V::iadd(e, V::select_i(small, V::iset(0u), V::iset(0xFFFFFFFFu)));
    const F fe = V::to_float(e);
    const F z = V::mul(f, f);
    F y = V::fset(7.0376836292e-2f);
    y = V::fmadd(y, f, V::fset(-1.1514610310e-1f));
    y = V::fmadd(y, f, V::fset(1.1676998740e-1f));
    y = V::fmadd(y, f, V::fset(-1.2420140846e-1f));
    y = V::fmadd(y, f, V::fset(1.4249322787e-1f));
    y = V::fmadd(y, f, V::fset(-1.6668057665e-1f));
    y = V::fmadd(y, f, V::fset(2.0000714765e-1f));
    y = V::fmadd(y, f, V::fset(-2.4999993993e-1f));
    y = V::fmadd(y, f, V::fset(3.3333331174e-1f));
    y = V::mul(V::mul(y, f), z);                     // f^3 P(f)
    y = V::fmadd(fe, V::fset(-2.12194440e-4f), y);   // e * ln2_lo
    y = V::fnmadd(V::fset(0.5f), z, y);              // - f^2 / 2
    F r = V::add(f, y);
    r = V::fmadd(fe, V::fset(0.693359375f), r);      // e * ln2_hi (exact product)
    return r;
  }

  // sin and cos of theta in [0, 2 pi + ulp].
  static inline void sincos(F theta, F* s_out, F* c_out) {
    const F q = V::round_nearest(V::mul(theta, V::fset(0.636619772367581343f)));
    // r = theta - q pi/2, pi/2 = P1 + P2 + P3 (Cody-Waite; every step exact
    // or nearly so thanks to the fused multiply-add, q <= 4)
    F r = V::fnmadd(q, V::fset(0x1.921fb6p+0f), theta);
    r = V::fnmadd(q, V::fset(-0x1.777a5cp-25f), r);
    r = V::fnmadd(q, V::fset(-0x1.ee59dap-50f), r);
    const F z = V::mul(r, r);
    // sin r = r + r z (s1 + z (s2 + z s3))
    F ps = V::fmadd(V::fset(-1.9515295891e-4f), z, V::fset(8.3321608736e-3f));
    ps = V::fmadd(ps, z, V::fset(-1.6666654611e-1f));
    const F sin_r = V::fmadd(V::mul(r, z), ps, r);
    // cos r = 1 + z (-1/2 + z (c1 + z (c2 + z c3)))
    F pc = V::fmadd(V::fset(2.443315711809948e-5f), z, V::fset(-1.388731625493765e-3f));
    pc = V::fmadd(pc, z, V::fset(4.166664568298827e-2f));
    pc = V::fmadd(pc, z, V::fset(-0.5f));
    const F cos_r = V::fmadd(pc, z, V::fset(1.0f));
    // quadrant q mod 4: (sin, cos) = (s, c), (c, -s), (-s, -c), (-c, s)
    const I qi = V::to_int(q);
    const M swap = V::ieq(V::iand(qi, V::iset(1u)), V::iset(1u));
    const F s = V::select(swap, sin_r, cos_r);
    const F c = V::select(swap, cos_r, sin_r);
    const I sin_sign = V::template slli<30>(V::iand(qi, V::iset(2u)));
    const I cos_sign = V::template slli<30>(V::iand(V::iadd(qi, V::iset(1u)), V::iset(2u)));
    *s_out = V::as_f(V::ixor(V::as_i(s), sin_sign));
    *c_out = V::as_f(V::ixor(V::as_i(c), cos_sign));
  }

  // uint_to_uniform of elementwise.h, lane-wise (bit-identical).
  static inline F uniform(I w) {
    const I x = V::ixor(w, V::template srai<31>(w));  // x < 0 ? ~x : x
    return V::mul(V::to_float(x), V::fset(kUintToUniform));
  }

  static inline void box_muller(F u1, F u2, F* n0, F* n1) {
    u1 = V::max(u1, V::fset(kMinUniform));
    const F theta = V::mul(V::fset(kTwoPi), u2);
    const F radius = V::sqrt(V::mul(V::fset(-2.0f), log(u1)));
    F s, c;
    sincos(theta, &s, &c);
    *n0 = V::mul(radius, c);
    *n1 = V::mul(radius, s);
  }

  struct Keys {
    I k0[kPhiloxRounds];
    I k1[kPhiloxRounds];
  };

  static inline void make_keys(uint64_t seed, Keys* keys) {
    uint32_t k0 = static_cast<uint32_t>(seed);
    uint32_t k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < kPhiloxRounds; ++r) {
      keys->k0[r] = V::iset(k0);
      keys->k1[r] = V::iset(k1);
      k0 += kPhiloxKeyA;
      k1 += kPhiloxKeyB;
    }
  }

  // G independent groups of N counters (G chains interleave in the
  // pipeline), normals stored at out + 4 N g.
  template <int G>
  static inline void generate(const Keys& keys, const uint64_t* first, float* out) {
    I c0[G], c1[G], c2[G], c3[G];
    for (int g = 0; g < G; ++g) {
      V::counters(first[g], &c0[g], &c1[g]);
      c2[g] = V::iset(0u);
      c3[g] = V::iset(0u);
    }
    const I ra = V::iset(kPhiloxRoundA), rb = V::iset(kPhiloxRoundB);
    for (int r = 0; r < kPhiloxRounds; ++r) {
      for (int g = 0; g < G; ++g) {
        I hi_b, lo_b, hi_a, lo_a;
        V::mulhilo(c2[g], rb, &hi_b, &lo_b);
        V::mulhilo(c0[g], ra, &hi_a, &lo_a);
        c0[g] = V::ixor(V::ixor(hi_b, c1[g]), keys.k0[r]);
        c2[g] = V::ixor(V::ixor(hi_a, c3[g]), keys.k1[r]);
        c1[g] = lo_b;
        c3[g] = lo_a;
      }
    }
    for (int g = 0; g < G; ++g) {
      F n0, n1, n2, n3;
      box_muller(uniform(c0[g]), uniform(c1[g]), &n0, &n1);
      box_muller(uniform(c2[g]), uniform(c3[g]), &n2, &n3);
      V::store4(out + 4 * N * g, n0, n1, n2, n3);
    }
  }

  // Engine::noise: counters c0 .. c0 + n - 1 into out[0 .. 4 n).
  static void noise(uint64_t seed, uint64_t c0, int64_t n, float* out,
                    const uint8_t* keep) {
    Keys keys;
    make_keys(seed, &keys);
    int64_t c = 0;
    // two groups at a time where both hold a valid element
    for (; c + 2 * N <= n; c += 2 * N) {
      const bool live0 = keep == nullptr || V::any_nonzero(keep + 4 * c);
      const bool live1 = keep == nullptr || V::any_nonzero(keep + 4 * (c + N));
      const uint64_t first[2] = {c0 + static_cast<uint64_t>(c),
                                 c0 + static_cast<uint64_t>(c + N)};
      if (live0 && live1) {
        generate<2>(keys, first, out + 4 * c);
        continue;
      }
      if (live0) {
        generate<1>(keys, first, out + 4 * c);
      } else {
        std::memset(out + 4 * c, 0, sizeof(float) * 4 * N);
      }
      if (live1) {
        generate<1>(keys, first + 1, out + 4 * (c + N));
      } else {
        std::memset(out + 4 * (c + N), 0, sizeof(float) * 4 * N);
      }
    }
    for (; c < n; c += N) {
      const int64_t count = n - c < N ? n - c : N;
      const uint64_t first = c0 + static_cast<uint64_t>(c);
      if (count == N) {
        if (keep == nullptr || V::any_nonzero(keep + 4 * c)) {
          generate<1>(keys, &first, out + 4 * c);
        } else {
          std::memset(out + 4 * c, 0, sizeof(float) * 4 * N);
        }
      } else {  // the last, partial group: through a scratch vector
        alignas(64) float scratch[4 * N];
        generate<1>(keys, &first, scratch);
        std::memcpy(out + 4 * c, scratch, sizeof(float) * 4 * count);
      }
    }
  }
};

}  // namespace detail
}  // namespace cpu
}  // namespace ddm_fast
