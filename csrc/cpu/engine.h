// The tile engine of the CPU backend, compiled once per instruction set.
//
// No include guard on purpose: each engine unit (engine_scalar.cpp,
// engine_avx2.cpp, engine_avx512.cpp) defines DDM_ENGINE_NS and, in
// namespace ddm_fast::cpu::detail::DDM_ENGINE_NS,
//
//   void generate_noise(uint64_t seed, uint64_t c0, int64_t n_counters,
//                       float* out, const uint8_t* keep);
//
// then includes this file once; the compiler vectorises the loops below for
// that unit's target flags. Everything here has internal linkage or lives in
// the unit's own namespace, so the units never share a compiled function.
//
// One tile = up to kTile consecutive elements [i0, i1):
//   1. keep[j]: the mask gathered in contiguous runs (memcpy / memset);
//   2. the noise of the tile's Philox counters (skipping fully masked
//      groups of counters);
//   3. every input in the math dtype T (float or double): a pointer into
//      the tensor when it already has dtype T, else a converted copy in the
//      thread's workspace;
//   4. per row segment, its coefficient row loaded once and a simple loop
//      (vectorised) combining the columns, masked elements selected to 0;
//   5. the store (converted to the output dtype), or the block reductions.
//
// Masked elements are never trusted: inputs, weights and noise there may be
// NaN or Inf (or garbage), and every value derived from them is replaced by
// exactly 0 with a select (never a multiplication by the mask) before it is
// stored or summed.
#ifndef DDM_ENGINE_NS
#error "define DDM_ENGINE_NS before including engine.h"
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "internal.h"

namespace ddm_fast {
namespace cpu {
namespace detail {
namespace DDM_ENGINE_NS {
namespace {

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return kFloat32; }
template <>
constexpr DType dtype_of<double>() { return kFloat64; }

// ------------------------------------------------------------ conversions
inline float bf16_bits_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// float_to_bf16 of elementwise.h written branch-free so that it vectorises
// (round to nearest even, NaN kept a quiet NaN).
inline uint16_t float_to_bf16_rne(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet = (u >> 16) | 0x0040u;
  return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded);
}

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// fp16_to_float / float_to_fp16 of elementwise.h (same results for every
// input, checked exhaustively), written with selects instead of branches
// and loops so that they vectorise (after F. Giesen's half <-> float
// conversions: subnormals through one exact float operation).
inline float fp16_bits_to_float(uint16_t h) {
  const uint32_t shifted_exp = 0x7C00u << 13;
  const uint32_t body = (static_cast<uint32_t>(h) & 0x7FFFu) << 13;
  const uint32_t exp = body & shifted_exp;
  const uint32_t normal = body + ((127u - 15u) << 23);
  const uint32_t special = normal + ((128u - 16u) << 23);  // Inf / NaN
  // zero / subnormal: 2^-14 * (mantissa / 1024), exactly
  const uint32_t tiny = f32_bits(f32_from_bits(normal + (1u << 23)) - f32_from_bits(113u << 23));
  // selects as masks (every candidate is used, so nothing is branched on)
  const uint32_t is_special = 0u - static_cast<uint32_t>(exp == shifted_exp);
  const uint32_t is_tiny = 0u - static_cast<uint32_t>(exp == 0);
  const uint32_t is_normal = ~(is_special | is_tiny);
  uint32_t u = (special & is_special) | (tiny & is_tiny) | (normal & is_normal);
  u |= (static_cast<uint32_t>(h) & 0x8000u) << 16;
  return f32_from_bits(u);
}

inline uint16_t float_to_fp16_rne(float f) {
  const uint32_t bits = f32_bits(f);
  const uint32_t sign = bits & 0x80000000u;
  const uint32_t a = bits ^ sign;
  // >= 65536 (or Inf / NaN): Inf, or a quiet NaN
  const uint32_t big = a > 0x7F800000u ? 0x7E00u : 0x7C00u;
  // < 2^-14: the float addition to 0.5 rounds the mantissa (to nearest even)
  const uint32_t tiny = f32_bits(f32_from_bits(a) + f32_from_bits(126u << 23)) - (126u << 23);
  // normal: rebias, round to nearest even on bit 13
  const uint32_t normal = (a + ((15u - 127u) << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
  const uint32_t is_big = 0u - static_cast<uint32_t>(a >= (143u << 23));
  const uint32_t is_tiny = 0u - static_cast<uint32_t>(a < (113u << 23));
  const uint32_t is_normal = ~(is_big | is_tiny);
  const uint32_t h = (big & is_big) | (tiny & is_tiny) | (normal & is_normal);
  return static_cast<uint16_t>(h | (sign >> 16));
}

// The n elements at index i0 of a tensor of dtype `dt`, in T: a pointer into
// the tensor when dt is T, else `buf` filled with the converted values
// (float64 -> float32 and everything -> bf16/fp16 round to nearest even,
// as torch's .to()).
template <class T>
const T* load_tile(const void* base, DType dt, int64_t i0, int64_t n, T* buf) {
  switch (dt) {
    case kFloat32: {
      const float* src = static_cast<const float*>(base) + i0;
      if (dtype_of<T>() == kFloat32) return reinterpret_cast<const T*>(src);
      for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<T>(src[j]);
      break;
    }
    case kFloat64: {
      const double* src = static_cast<const double*>(base) + i0;
      if (dtype_of<T>() == kFloat64) return reinterpret_cast<const T*>(src);
      for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<T>(src[j]);
      break;
    }
    case kBFloat16: {
      const uint16_t* src = static_cast<const uint16_t*>(base) + i0;
      for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<T>(bf16_bits_to_float(src[j]));
      break;
    }
    case kFloat16: {
      const uint16_t* src = static_cast<const uint16_t*>(base) + i0;
      for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<T>(fp16_bits_to_float(src[j]));
      break;
    }
  }
  return buf;
}

// Store n values of T at index i0 of a tensor of dtype `dt`. float64 math to
// a 16-bit dtype goes through float32, as torch's .to() does.
template <class T>
void store_tile(const T* src, int64_t n, void* base, DType dt, int64_t i0) {
  switch (dt) {
    case kFloat32: {
      float* dst = static_cast<float*>(base) + i0;
      for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
      break;
    }
    case kFloat64: {
      double* dst = static_cast<double*>(base) + i0;
      for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<double>(src[j]);
      break;
    }
    case kBFloat16: {
      uint16_t* dst = static_cast<uint16_t*>(base) + i0;
      for (int64_t j = 0; j < n; ++j) dst[j] = float_to_bf16_rne(static_cast<float>(src[j]));
      break;
    }
    case kFloat16: {
      uint16_t* dst = static_cast<uint16_t*>(base) + i0;
      for (int64_t j = 0; j < n; ++j) dst[j] = float_to_fp16_rne(static_cast<float>(src[j]));
      break;
    }
  }
}

// --------------------------------------------------------------- the mask
// v where keep != 0, else +0: a bitwise AND with a mask made from the keep
// byte. Written on the bits (not `keep ? v : 0`) so that the value is
// always computed and the compiler vectorises the select instead of
// branching around a floating-point operation; NaN and Inf become +0.
template <class T>
inline T keep_or_zero(T v, uint8_t keep) {
  using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  U bits;
  std::memcpy(&bits, &v, sizeof v);
  bits &= U(0) - static_cast<U>(keep != 0);
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// keep[j] = mask[(i / period) * inner + i % inner], i = i0 + j, j < n: runs
// of consecutive mask bytes are copied whole; inner == 1 (one mask value
// per period, e.g. a (B, C, 1, 1) mask) is a memset per run.
void gather_mask(const MaskView& m, int64_t i0, int64_t n, uint8_t* keep) {
  int64_t j = 0;
  while (j < n) {
    const int64_t i = i0 + j;
    const int64_t q = i / m.period;
    const int64_t in_period = i - q * m.period;
    int64_t len = std::min(m.period - in_period, n - j);
    if (m.inner == 1) {
      std::memset(keep + j, m.data[q], static_cast<size_t>(len));
    } else {
      const int64_t in_inner = i % m.inner;
      len = std::min(len, m.inner - in_inner);
      const uint8_t* src = m.data + q * m.inner + in_inner;
      if (len >= 32) {
        std::memcpy(keep + j, src, static_cast<size_t>(len));
      } else {
        for (int64_t k = 0; k < len; ++k) keep[j + k] = src[k];
      }
    }
    j += len;
  }
}

// ------------------------------------------------------------- one tile
// Everything a tile computes before combining: the mask, the columns.
template <class T>
struct TileData {
  const uint8_t* keep = nullptr;  // null: no mask
  const T* cols[4] = {nullptr, nullptr, nullptr, nullptr};  // inputs, noise
  int n_data = 0;                 // inputs + noise
};

// The tile's noise: p[j] = noise[offset + i0 + j] for j < n. keep: whether
// ws.keep holds the gathered mask (then groups without a valid element are
// skipped).
const float* noise_tile(uint64_t seed, int64_t offset, int64_t i0, int64_t n,
                        bool use_keep, Workspace& ws) {
  const uint64_t g0 = static_cast<uint64_t>(offset) + static_cast<uint64_t>(i0);
  const int64_t lead = static_cast<int64_t>(g0 & 3u);
  const int64_t n_counters = (lead + n + 3) / 4;
  float* base = ws.noise + Workspace::kPad - lead;
  const uint8_t* keep = use_keep ? ws.keep + Workspace::kPad - lead : nullptr;
  generate_noise(seed, g0 >> 2, n_counters, base, keep);
  return ws.noise + Workspace::kPad;
}

template <class T>
TileData<T> prepare_tile(const AffineProblem& p, int64_t i0, int64_t n, Workspace& ws) {
  TileData<T> t;
  if (p.mask.data != nullptr) {
    uint8_t* keep = ws.keep + Workspace::kPad;
    gather_mask(p.mask, i0, n, keep);
    // zero pads around the tile: the noise generator tests whole counters
    std::memset(keep - 4, 0, 4);
    std::memset(keep + n, 0, 4);
    t.keep = keep;
  }
  for (int k = 0; k < p.n_inputs; ++k) {
    t.cols[t.n_data++] = load_tile<T>(p.x[k], p.x_dtype[k], i0, n,
                                      reinterpret_cast<T*>(ws.x[k]));
  }
  if (p.has_noise) {
    const float* z = noise_tile(p.seed, p.offset, i0, n, t.keep != nullptr, ws);
    if (dtype_of<T>() == kFloat32) {
      t.cols[t.n_data++] = reinterpret_cast<const T*>(z);
    } else {
      T* zd = reinterpret_cast<T*>(ws.noise_math);
      for (int64_t j = 0; j < n; ++j) zd[j] = static_cast<T>(z[j]);
      t.cols[t.n_data++] = zd;
    }
  }
  return t;
}

// ------------------------------------------------------ the combination
// out[j] = sum_k c[k] col_k[j] (+ c[NC]), selected to 0 where !keep[j];
// with TWO also out2 from c2. NC: data columns (inputs + noise), 1..4.
template <class T, int NC, bool BIAS, bool TWO, bool MASKED>
void combine(int64_t n, const T* const* col, const T* c, const T* c2,
             const uint8_t* keep, T* out, T* out2) {
  const T* x0 = col[0];
  const T* x1 = NC > 1 ? col[1] : col[0];
  const T* x2 = NC > 2 ? col[2] : col[0];
  const T* x3 = NC > 3 ? col[3] : col[0];
  const T a0 = c[0], a1 = NC > 1 ? c[1] : T(0), a2 = NC > 2 ? c[2] : T(0),
          a3 = NC > 3 ? c[3] : T(0), ab = BIAS ? c[NC] : T(0);
  T b0 = T(0), b1 = T(0), b2 = T(0), b3 = T(0), bb = T(0);
  if (TWO) {
    b0 = c2[0];
    if (NC > 1) b1 = c2[1];
    if (NC > 2) b2 = c2[2];
    if (NC > 3) b3 = c2[3];
    if (BIAS) bb = c2[NC];
  }
  for (int64_t j = 0; j < n; ++j) {
    T acc = a0 * x0[j];
    if (NC > 1) acc += a1 * x1[j];
    if (NC > 2) acc += a2 * x2[j];
    if (NC > 3) acc += a3 * x3[j];
    if (BIAS) acc += ab;
    T acc2 = T(0);
    if (TWO) {
      acc2 = b0 * x0[j];
      if (NC > 1) acc2 += b1 * x1[j];
      if (NC > 2) acc2 += b2 * x2[j];
      if (NC > 3) acc2 += b3 * x3[j];
      if (BIAS) acc2 += bb;
    }
    if (MASKED) {
      acc = keep_or_zero(acc, keep[j]);
      if (TWO) acc2 = keep_or_zero(acc2, keep[j]);
    }
    out[j] = acc;
    if (TWO) out2[j] = acc2;
  }
}

template <class T>
using CombineFn = void (*)(int64_t, const T* const*, const T*, const T*,
                           const uint8_t*, T*, T*);

template <class T, int NC>
CombineFn<T> pick_combine_nc(bool bias, bool two, bool masked) {
  const int key = (bias ? 4 : 0) + (two ? 2 : 0) + (masked ? 1 : 0);
  switch (key) {
    case 0: return &combine<T, NC, false, false, false>;
    case 1: return &combine<T, NC, false, false, true>;
    case 2: return &combine<T, NC, false, true, false>;
    case 3: return &combine<T, NC, false, true, true>;
    case 4: return &combine<T, NC, true, false, false>;
    case 5: return &combine<T, NC, true, false, true>;
    case 6: return &combine<T, NC, true, true, false>;
    default: return &combine<T, NC, true, true, true>;
  }
}

template <class T>
CombineFn<T> pick_combine(int n_data, bool bias, bool two, bool masked) {
  switch (n_data) {
    case 1: return pick_combine_nc<T, 1>(bias, two, masked);
    case 2: return pick_combine_nc<T, 2>(bias, two, masked);
    case 3: return pick_combine_nc<T, 3>(bias, two, masked);
    default: return pick_combine_nc<T, 4>(bias, two, masked);
  }
}

// --------------------------------------------------- block reductions
// A block is reduced into L accumulator lanes (32 for float, 16 for double:
// kLanes* of internal.h): lane l sums the terms j = l, l + L, l + 2 L, ...
// of the block in that order, the last partial chunk zero-padded; the lanes
// are then added in double in a fixed pairwise tree. The lanes are explicit
// (four 32-byte GCC vectors), so the order is a property of the source, not
// of the instruction set the unit is compiled for (the baseline unit runs
// each 32-byte vector as two SSE halves), and no reassociation is allowed
// (no fast-math).
template <class T>
struct Pack;
template <>
struct Pack<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t M __attribute__((vector_size(32)));
  typedef uint8_t K __attribute__((vector_size(8)));
  static constexpr int W = 8;
};
template <>
struct Pack<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef int64_t M __attribute__((vector_size(32)));
  typedef uint8_t K __attribute__((vector_size(4)));
  static constexpr int W = 4;
};
constexpr int kPacks = 4;
static_assert(kPacks * Pack<float>::W == kLanesFloat, "float lanes");
static_assert(kPacks * Pack<double>::W == kLanesDouble, "double lanes");

template <class T>
inline typename Pack<T>::V load_pack(const T* p) {
  typename Pack<T>::V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// v where keep != 0, else +0 (bitwise, as keep_or_zero)
template <class T>
inline typename Pack<T>::V keep_pack(typename Pack<T>::V v, const uint8_t* keep) {
  typedef typename Pack<T>::M M;
  typename Pack<T>::K k;
  std::memcpy(&k, keep, sizeof k);
  const M m = __builtin_convertvector(k, M) != 0;  // -1 where kept
  return reinterpret_cast<typename Pack<T>::V>(reinterpret_cast<M>(v) & m);
}

template <int H>
inline void fold(double* d) {  // d[l] += d[l + H] for l < H, then H / 2, ...
  for (int l = 0; l < H; ++l) d[l] += d[l + H];
  if constexpr (H > 1) fold<H / 2>(d);
}

template <class T>
inline double lanes_total(const typename Pack<T>::V* acc) {
  constexpr int W = Pack<T>::W;
  double d[kPacks * W];
  for (int p = 0; p < kPacks; ++p) {
    for (int i = 0; i < W; ++i) d[p * W + i] = static_cast<double>(acc[p][i]);
  }
  fold<kPacks * W / 2>(d);
  return d[0];
}

// Term(const T* x, const T* w, const uint8_t* keep, int p) -> V: the terms
// of lanes p W .. p W + W - 1 of the chunk starting at x, w, keep.
template <class T, class Term>
inline double reduce_block(int64_t n, const T* x, const T* w, const uint8_t* keep,
                           const Term& term) {
  typedef typename Pack<T>::V V;
  constexpr int W = Pack<T>::W;
  constexpr int L = kPacks * W;
  V acc[kPacks];
  for (int p = 0; p < kPacks; ++p) acc[p] = V{};
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    for (int p = 0; p < kPacks; ++p) {
      acc[p] += term(x ? x + j : nullptr, w ? w + j : nullptr, keep ? keep + j : nullptr, p);
    }
  }
  if (j < n) {  // the partial chunk: whole packs, then one zero-padded pack
    const int rem = static_cast<int>(n - j);
    const int whole = rem / W;
    for (int p = 0; p < whole; ++p) {
      acc[p] += term(x ? x + j : nullptr, w ? w + j : nullptr, keep ? keep + j : nullptr, p);
    }
    const int rest = rem - whole * W;
    if (rest > 0) {
      const int64_t at = j + static_cast<int64_t>(whole) * W;
      V xs = V{}, ws = V{};
      typename Pack<T>::K ks = typename Pack<T>::K{};  // pads: keep = 0
      for (int i = 0; i < rest; ++i) {
        if (x) xs[i] = x[at + i];
        if (w) ws[i] = w[at + i];
        ks[i] = keep ? keep[at + i] : uint8_t(1);
      }
      const V t = term(reinterpret_cast<const T*>(&xs), reinterpret_cast<const T*>(&ws),
                       reinterpret_cast<const uint8_t*>(&ks), 0);
      acc[whole] += keep_pack<T>(t, reinterpret_cast<const uint8_t*>(&ks));
    }
  }
  return lanes_total<T>(acc);
}

// sum of (keep ? v^P : 0)
template <class T, int P, bool MASKED>
double block_sum(const T* v, const uint8_t* keep, int64_t n) {
  typedef typename Pack<T>::V V;
  constexpr int W = Pack<T>::W;
  return reduce_block<T>(n, v, nullptr, keep,
                         [](const T* x, const T*, const uint8_t* k, int p) {
                           V t = load_pack(x + p * W);
                           if (P == 2) t = t * t;
                           if (MASKED) t = keep_pack<T>(t, k + p * W);
                           return t;
                         });
}

// sum of (keep ? w * x : 0); HAS_W: w given (else 1); HAS_X: x given (else 1).
template <class T, bool HAS_W, bool HAS_X, bool MASKED>
double block_dot(const T* w, const T* x, const uint8_t* keep, int64_t n) {
  typedef typename Pack<T>::V V;
  constexpr int W = Pack<T>::W;
  return reduce_block<T>(n, x, w, keep,
                         [](const T* xp, const T* wp, const uint8_t* k, int p) {
                           V t;
                           if (HAS_W && HAS_X) {
                             t = load_pack(wp + p * W) * load_pack(xp + p * W);
                           } else if (HAS_W) {
                             t = load_pack(wp + p * W);
                           } else if (HAS_X) {
                             t = load_pack(xp + p * W);
                           } else {
                             t = V{} + T(1);
                           }
                           if (MASKED) t = keep_pack<T>(t, k + p * W);
                           return t;
                         });
}

template <class T, bool MASKED>
double dot_any(const T* w, const T* x, const uint8_t* keep, int64_t n) {
  if (w != nullptr) {
    return x != nullptr ? block_dot<T, true, true, MASKED>(w, x, keep, n)
                        : block_dot<T, true, false, MASKED>(w, x, keep, n);
  }
  return x != nullptr ? block_dot<T, false, true, MASKED>(w, x, keep, n)
                      : block_dot<T, false, false, MASKED>(w, x, keep, n);
}

// ------------------------------------------------------------ the tiles
void randn_tile(void* out, DType out_dtype, uint64_t seed, int64_t offset,
                int64_t i0, int64_t i1, Workspace& ws) {
  const float* z = noise_tile(seed, offset, i0, i1 - i0, false, ws);
  store_tile<float>(z, i1 - i0, out, out_dtype, i0);
}

template <class T>
void affine_tile_t(const Job& job, int64_t i0, int64_t i1, Workspace& ws) {
  const AffineProblem& p = *job.p;
  const int64_t n = i1 - i0;
  const TileData<T> t = prepare_tile<T>(p, i0, n, ws);
  const bool two = job.coeffs2 != nullptr;
  T* dst = job.out_dtype == dtype_of<T>() ? static_cast<T*>(job.out) + i0
                                          : reinterpret_cast<T*>(ws.v);
  T* dst2 = nullptr;
  if (two) {
    dst2 = job.out_dtype == dtype_of<T>() ? static_cast<T*>(job.out2) + i0
                                          : reinterpret_cast<T*>(ws.v2);
  }
  const CombineFn<T> fn = pick_combine<T>(t.n_data, p.has_bias, two, t.keep != nullptr);
  const int n_cols = p.n_cols();
  const int64_t per_row = p.per_row();
  const T* table = static_cast<const T*>(p.coeffs);
  const T* table2 = static_cast<const T*>(job.coeffs2);
  for (int64_t s = i0; s < i1;) {
    const int64_t row = s / per_row;
    const int64_t e = std::min(i1, (row + 1) * per_row);
    const int64_t o = s - i0;
    const T* cols[4];
    for (int k = 0; k < t.n_data; ++k) cols[k] = t.cols[k] + o;
    fn(e - s, cols, table + row * n_cols, two ? table2 + row * n_cols : nullptr,
       t.keep != nullptr ? t.keep + o : nullptr, dst + o, two ? dst2 + o : nullptr);
    s = e;
  }
  if (job.out_dtype != dtype_of<T>()) {
    store_tile<T>(dst, n, job.out, job.out_dtype, i0);
    if (two) store_tile<T>(dst2, n, job.out2, job.out_dtype, i0);
  }
}

template <class T>
void reduce_tile_t(const Job& job, int64_t i0, int64_t i1, Workspace& ws) {
  const AffineProblem& p = *job.p;
  const int64_t n = i1 - i0;
  const TileData<T> t = prepare_tile<T>(p, i0, n, ws);
  const bool masked = t.keep != nullptr;
  const bool is_sum = !job.dots;
  const bool need_v = is_sum || job.weight_kind == kWeightCombination;
  const CombineFn<T> fn = pick_combine<T>(t.n_data, p.has_bias, false, false);
  const T* weight = nullptr;
  if (!is_sum && job.weight_kind == kWeightTensor) {
    weight = load_tile<T>(job.weight, job.weight_dtype, i0, n,
                          reinterpret_cast<T*>(ws.weight));
  }
  T* v = reinterpret_cast<T*>(ws.v);
  const int n_cols = p.n_cols();
  const int64_t per_row = p.per_row();
  const T* table = static_cast<const T*>(p.coeffs);
  for (int64_t s = i0; s < i1;) {
    const int64_t row = s / per_row;
    const int64_t row_start = row * per_row;
    const int64_t block = (s - row_start) / kBlock;
    const int64_t e = std::min(row_start + per_row, row_start + (block + 1) * kBlock);
    const int64_t len = e - s;
    const int64_t o = s - i0;
    const uint8_t* keep = masked ? t.keep + o : nullptr;
    double* part = job.partials + (row * job.blocks_per_row + block) * job.n_results;
    const T* cols[4];
    for (int k = 0; k < t.n_data; ++k) cols[k] = t.cols[k] + o;
    if (need_v) fn(len, cols, table + row * n_cols, nullptr, nullptr, v + o, nullptr);
    if (is_sum) {
      if (job.power == 2) {
        part[0] = masked ? block_sum<T, 2, true>(v + o, keep, len)
                         : block_sum<T, 2, false>(v + o, keep, len);
      } else {
        part[0] = masked ? block_sum<T, 1, true>(v + o, keep, len)
                         : block_sum<T, 1, false>(v + o, keep, len);
      }
    } else {
      const T* w = job.weight_kind == kWeightOne ? nullptr
                   : job.weight_kind == kWeightTensor ? weight + o
                                                      : v + o;
      int k = 0;
      for (; k < t.n_data; ++k) {
        part[k] = masked ? dot_any<T, true>(w, cols[k], keep, len)
                         : dot_any<T, false>(w, cols[k], keep, len);
      }
      if (p.has_bias) {
        part[k] = masked ? dot_any<T, true>(w, nullptr, keep, len)
                         : dot_any<T, false>(w, nullptr, keep, len);
      }
    }
    s = e;
  }
}

void affine_tile(const Job& job, int64_t i0, int64_t i1, Workspace& ws) {
  if (job.p->math == kFloat64) {
    affine_tile_t<double>(job, i0, i1, ws);
  } else {
    affine_tile_t<float>(job, i0, i1, ws);
  }
}

void reduce_tile(const Job& job, int64_t i0, int64_t i1, Workspace& ws) {
  if (job.p->math == kFloat64) {
    reduce_tile_t<double>(job, i0, i1, ws);
  } else {
    reduce_tile_t<float>(job, i0, i1, ws);
  }
}

}  // namespace
}  // namespace DDM_ENGINE_NS
}  // namespace detail
}  // namespace cpu
}  // namespace ddm_fast
