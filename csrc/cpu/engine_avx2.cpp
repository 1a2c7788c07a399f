// The AVX2 + FMA engine: compiled with -mavx2 -mfma (setup.py), selected at
// run time only on CPUs that report both. The noise runs 8 Philox counters
// per 256-bit vector (noise_simd.h); the tile loops of engine.h are
// auto-vectorised for AVX2 with fused multiply-adds.
#if !defined(__AVX2__) || !defined(__FMA__)
#error "engine_avx2.cpp must be compiled with -mavx2 -mfma"
#endif

#define DDM_ENGINE_NS avx2

#include <immintrin.h>

#include <cstring>

#include "internal.h"
#include "noise_simd.h"

namespace ddm_fast {
namespace cpu {
namespace detail {
namespace avx2 {
namespace {

struct V {
  using F = __m256;
  using I = __m256i;
  using M = __m256;  // all-ones / all-zeros lanes
  static constexpr int N = 8;

  static inline F fset(float x) { return _mm256_set1_ps(x); }
  static inline I iset(uint32_t x) { return _mm256_set1_epi32(static_cast<int>(x)); }
  static inline F add(F a, F b) { return _mm256_add_ps(a, b); }
  static inline F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static inline F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static inline F max(F a, F b) { return _mm256_max_ps(a, b); }
  static inline F sqrt(F a) { return _mm256_sqrt_ps(a); }
  static inline F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static inline F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static inline F round_nearest(F a) {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static inline F to_float(I a) { return _mm256_cvtepi32_ps(a); }
  static inline I to_int(F a) { return _mm256_cvtps_epi32(a); }
  static inline I iadd(I a, I b) { return _mm256_add_epi32(a, b); }
  static inline I ixor(I a, I b) { return _mm256_xor_si256(a, b); }
  static inline I iand(I a, I b) { return _mm256_and_si256(a, b); }
  static inline I ior(I a, I b) { return _mm256_or_si256(a, b); }
  template <int S>
  static inline I srli(I a) { return _mm256_srli_epi32(a, S); }
  template <int S>
  static inline I srai(I a) { return _mm256_srai_epi32(a, S); }
  template <int S>
  static inline I slli(I a) { return _mm256_slli_epi32(a, S); }
  static inline F as_f(I a) { return _mm256_castsi256_ps(a); }
  static inline I as_i(F a) { return _mm256_castps_si256(a); }
  static inline M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static inline M ieq(I a, I b) { return _mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b)); }
  static inline F select(M m, F a, F b) { return _mm256_blendv_ps(a, b, m); }
  static inline I select_i(M m, I a, I b) {
    return _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), m));
  }

  // Lane-wise 32 x 32 -> 64-bit products: _mm256_mul_epu32 multiplies the
  // even lanes; the odd lanes after a 64-bit shift.
  static inline void mulhilo(I a, I k, I* hi, I* lo) {
    const I even = _mm256_mul_epu32(a, k);
    const I odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), k);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  }

  static inline void counters(uint64_t c, I* lo, I* hi) {
    const uint32_t l = static_cast<uint32_t>(c);
    const uint32_t h = static_cast<uint32_t>(c >> 32);
    if (l <= 0xFFFFFFFFu - (N - 1)) {
      *lo = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(l)),
                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      *hi = _mm256_set1_epi32(static_cast<int>(h));
    } else {  // the low word wraps inside the group: carry per lane
      alignas(32) uint32_t ls[N], hs[N];
      for (int i = 0; i < N; ++i) {
        const uint64_t ci = c + static_cast<uint64_t>(i);
        ls[i] = static_cast<uint32_t>(ci);
        hs[i] = static_cast<uint32_t>(ci >> 32);
      }
      *lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(ls));
      *hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(hs));
    }
  }

  // out[4 l + j] = n_j[l], l < 8: a 4 x 8 transpose.
  static inline void store4(float* out, F n0, F n1, F n2, F n3) {
    const F t0 = _mm256_unpacklo_ps(n0, n1);  // 0 0 1 1 | 4 4 5 5
    const F t1 = _mm256_unpackhi_ps(n0, n1);  // 2 2 3 3 | 6 6 7 7
    const F t2 = _mm256_unpacklo_ps(n2, n3);
    const F t3 = _mm256_unpackhi_ps(n2, n3);
    const F u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));  // counters 0 | 4
    const F u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));  // 1 | 5
    const F u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));  // 2 | 6
    const F u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));  // 3 | 7
    _mm256_storeu_ps(out + 0, _mm256_permute2f128_ps(u0, u1, 0x20));
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
    _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
  }

  static inline bool any_nonzero(const uint8_t* p) {  // 32 bytes
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return !_mm256_testz_si256(v, v);
  }
};

void generate_noise(uint64_t seed, uint64_t c0, int64_t n, float* out, const uint8_t* keep) {
  SimdNoise<V>::noise(seed, c0, n, out, keep);
}

}  // namespace
}  // namespace avx2
}  // namespace detail
}  // namespace cpu
}  // namespace ddm_fast

#include "engine.h"

namespace ddm_fast {
namespace cpu {
namespace detail {

extern const Engine kEngineAvx2 = {"avx2", &avx2::generate_noise, &avx2::randn_tile,
                                   &avx2::affine_tile, &avx2::reduce_tile};

}  // namespace detail
}  // namespace cpu
}  // namespace ddm_fast
