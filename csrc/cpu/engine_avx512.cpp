// The AVX-512 engine (F + DQ + BW + VL): compiled with -mavx512f -mavx512dq
// -mavx512bw -mavx512vl -mfma (setup.py), selected at run time only on CPUs
// that report all of them. The noise runs 16 Philox counters per 512-bit
// vector with the same mathematics as the AVX2 engine (noise_simd.h); the
// tile loops of engine.h are auto-vectorised for AVX-512.
#if !defined(__AVX512F__) || !defined(__AVX512DQ__) || !defined(__AVX512BW__) || \
    !defined(__AVX512VL__) || !defined(__FMA__)
#error "engine_avx512.cpp must be compiled with -mavx512f -mavx512dq -mavx512bw -mavx512vl -mfma"
#endif

#define DDM_ENGINE_NS avx512

// GCC 12 warns that the _mm512_undefined_* placeholders inside its own
// intrinsics are "used uninitialized" (a false positive, GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cstring>

#include "internal.h"
#include "noise_simd.h"

namespace ddm_fast {
namespace cpu {
namespace detail {
namespace avx512 {
namespace {

struct V {
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
  static constexpr int N = 16;

  static inline F fset(float x) { return _mm512_set1_ps(x); }
  static inline I iset(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
  static inline F add(F a, F b) { return _mm512_add_ps(a, b); }
  static inline F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static inline F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static inline F max(F a, F b) { return _mm512_max_ps(a, b); }
  static inline F sqrt(F a) { return _mm512_sqrt_ps(a); }
  static inline F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static inline F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static inline F round_nearest(F a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static inline F to_float(I a) { return _mm512_cvtepi32_ps(a); }
  static inline I to_int(F a) { return _mm512_cvtps_epi32(a); }
  static inline I iadd(I a, I b) { return _mm512_add_epi32(a, b); }
  static inline I ixor(I a, I b) { return _mm512_xor_si512(a, b); }
  static inline I iand(I a, I b) { return _mm512_and_si512(a, b); }
  static inline I ior(I a, I b) { return _mm512_or_si512(a, b); }
  template <int S>
  static inline I srli(I a) { return _mm512_srli_epi32(a, S); }
  template <int S>
  static inline I srai(I a) { return _mm512_srai_epi32(a, S); }
  template <int S>
  static inline I slli(I a) { return _mm512_slli_epi32(a, S); }
  static inline F as_f(I a) { return _mm512_castsi512_ps(a); }
  static inline I as_i(F a) { return _mm512_castps_si512(a); }
  static inline M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static inline M ieq(I a, I b) { return _mm512_cmpeq_epi32_mask(a, b); }
  static inline F select(M m, F a, F b) { return _mm512_mask_blend_ps(m, a, b); }
  static inline I select_i(M m, I a, I b) { return _mm512_mask_blend_epi32(m, a, b); }

  // Lane-wise 32 x 32 -> 64-bit products (even lanes, then odd lanes after
  // a 64-bit shift).
  static inline void mulhilo(I a, I k, I* hi, I* lo) {
    const I even = _mm512_mul_epu32(a, k);
    const I odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), k);
    *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
    *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  }

  static inline void counters(uint64_t c, I* lo, I* hi) {
    const uint32_t l = static_cast<uint32_t>(c);
    const uint32_t h = static_cast<uint32_t>(c >> 32);
    if (l <= 0xFFFFFFFFu - (N - 1)) {
      *lo = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(l)),
                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                               13, 14, 15));
      *hi = _mm512_set1_epi32(static_cast<int>(h));
    } else {  // the low word wraps inside the group: carry per lane
      alignas(64) uint32_t ls[N], hs[N];
      for (int i = 0; i < N; ++i) {
        const uint64_t ci = c + static_cast<uint64_t>(i);
        ls[i] = static_cast<uint32_t>(ci);
        hs[i] = static_cast<uint32_t>(ci >> 32);
      }
      *lo = _mm512_load_si512(ls);
      *hi = _mm512_load_si512(hs);
    }
  }

  // out[4 l + j] = n_j[l], l < 16: 4 x 4 transposes inside each 128-bit
  // lane, then a 4 x 4 transpose of the 128-bit lanes.
  static inline void store4(float* out, F n0, F n1, F n2, F n3) {
    const F t0 = _mm512_unpacklo_ps(n0, n1);
    const F t1 = _mm512_unpackhi_ps(n0, n1);
    const F t2 = _mm512_unpacklo_ps(n2, n3);
    const F t3 = _mm512_unpackhi_ps(n2, n3);
    // u_k holds counters k, k + 4, k + 8, k + 12 (one per 128-bit lane)
    const F u0 = _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    const F u1 = _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const F u2 = _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const F u3 = _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const F a = _mm512_shuffle_f32x4(u0, u1, 0x44);  // 0 4 1 5
    const F b = _mm512_shuffle_f32x4(u2, u3, 0x44);  // 2 6 3 7
    const F c = _mm512_shuffle_f32x4(u0, u1, 0xEE);  // 8 12 9 13
    const F d = _mm512_shuffle_f32x4(u2, u3, 0xEE);  // 10 14 11 15
    _mm512_storeu_ps(out + 0, _mm512_shuffle_f32x4(a, b, 0x88));   // 0 1 2 3
    _mm512_storeu_ps(out + 16, _mm512_shuffle_f32x4(a, b, 0xDD));  // 4 5 6 7
    _mm512_storeu_ps(out + 32, _mm512_shuffle_f32x4(c, d, 0x88));  // 8 9 10 11
    _mm512_storeu_ps(out + 48, _mm512_shuffle_f32x4(c, d, 0xDD));  // 12 13 14 15
  }

  static inline bool any_nonzero(const uint8_t* p) {  // 64 bytes
    const __m512i v = _mm512_loadu_si512(p);
    return _mm512_test_epi8_mask(v, v) != 0;
  }
};

void generate_noise(uint64_t seed, uint64_t c0, int64_t n, float* out, const uint8_t* keep) {
  SimdNoise<V>::noise(seed, c0, n, out, keep);
}

}  // namespace
}  // namespace avx512
}  // namespace detail
}  // namespace cpu
}  // namespace ddm_fast

#include "engine.h"

namespace ddm_fast {
namespace cpu {
namespace detail {

extern const Engine kEngineAvx512 = {"avx512", &avx512::generate_noise, &avx512::randn_tile,
                                     &avx512::affine_tile, &avx512::reduce_tile};

}  // namespace detail
}  // namespace cpu
}  // namespace ddm_fast
