// The per-thread work of the CUDA kernels (csrc/cuda/kernels.cu) as
// __host__ __device__ code: loads and stores of a chunk, the mask, the noise,
// the combination, one chunk of randn / affine, one thread's share of a
// reduction block, and the host-side setup (argument structs, the reduction
// plan). kernels.cu wraps them in __global__ kernels (grid-stride loops,
// block reductions); csrc/cuda/tests/emulate_kernels.cu runs the very same
// functions on the host, thread by thread, against a direct reference. The
// layout of the work is described at the top of kernels.cu.
//
// Compiled by nvcc only (device or host side).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "ddm_fast/kernels.h"
#include "fast_div.cuh"

#define DDM_INLINE __host__ __device__ __forceinline__
#if defined(__CUDA_ARCH__)
#define DDM_UNROLL _Pragma("unroll")
#else
#define DDM_UNROLL  // the host pass (emulation, host stubs): plain loops
#endif

namespace ddm_fast {
namespace cuda {
namespace detail {

constexpr int kThreads = 256;  // every kernel: 256 threads per block
constexpr int kWarps = kThreads / 32;
constexpr int kChunkCPT = 1;  // Philox counters per chunk: affine, reductions
constexpr int kRandnCPT = 2;  // randn (no inputs: 8 outputs per thread fit)

// int32 element indices below this many elements (chunks overhang a tensor
// by less than 2 E elements; reductions' last-block bounds by a few chunks).
constexpr int64_t kInt32Limit = (int64_t{1} << 31) - (int64_t{1} << 20);

// Read-only loads: through the non-coherent data cache on the device.
template <typename T>
DDM_INLINE T ldg(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// ------------------------------------------------------------ conversions
struct F32 {
  using S = float;
};
struct F64 {
  using S = double;
};
struct BF16 {
  using S = uint16_t;
};
struct FP16 {
  using S = uint16_t;
};

// fp16 <-> float: the hardware cvt on the device (exact / round-to-nearest-
// even, as elementwise.h's bit conversions, which the host uses).
DDM_INLINE float fp16_bits_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  return fp16_to_float(h);
#endif
}

DDM_INLINE uint16_t float_to_fp16_bits(float f) {
#if defined(__CUDA_ARCH__)
  uint16_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return f != f ? float_to_fp16(f) : h;  // elementwise.h's NaN bits
#else
  return float_to_fp16(f);
#endif
}

template <typename Tag, typename M>
struct Conv;
template <typename M>
struct Conv<F32, M> {
  DDM_INLINE static M in(float v) { return static_cast<M>(v); }
  DDM_INLINE static float out(M v) { return static_cast<float>(v); }
};
template <typename M>
struct Conv<F64, M> {
  DDM_INLINE static M in(double v) { return static_cast<M>(v); }
  DDM_INLINE static double out(M v) { return static_cast<double>(v); }
};
// float64 -> 16-bit rounds through float32, as torch's conversions do.
template <typename M>
struct Conv<BF16, M> {
  DDM_INLINE static M in(uint16_t v) {
    return static_cast<M>(bf16_to_float(v));
  }
  DDM_INLINE static uint16_t out(M v) {
    return float_to_bf16(static_cast<float>(v));
  }
};
template <typename M>
struct Conv<FP16, M> {
  DDM_INLINE static M in(uint16_t v) {
    return static_cast<M>(fp16_bits_to_float(v));
  }
  DDM_INLINE static uint16_t out(M v) {
    return float_to_fp16_bits(static_cast<float>(v));
  }
};

// ------------------------------------------------------- chunk load/store
template <int BYTES>
struct VecOf;
template <>
struct VecOf<16> {
  using T = uint4;
};
template <>
struct VecOf<8> {
  using T = uint2;
};
template <>
struct VecOf<4> {
  using T = unsigned int;
};
template <>
struct VecOf<2> {
  using T = unsigned short;
};

// E values of storage type S moved as 16-byte vectors (8 or 4 bytes when
// the whole chunk is smaller).
template <typename S, int E>
struct Span {
  static constexpr int kBytes = E * static_cast<int>(sizeof(S));
  static constexpr int kVecBytes = kBytes >= 16 ? 16 : kBytes;
  static constexpr int kVecs = kBytes / kVecBytes;
  using V = typename VecOf<kVecBytes>::T;
  union U {
    V v[kVecs];
    S s[E];
  };
  DDM_INLINE static bool aligned(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & (kVecBytes - 1)) == 0;
  }
};

// x[e] = keep[e] ? value of element i0 + e : 0. `full`: all E elements lie
// inside the tensor, so a vector load may read the masked ones too (they
// are selected away, never used in arithmetic).
template <typename Tag, typename M, int E, typename I>
DDM_INLINE void load_chunk(const void* base, I i0, bool full, const bool* keep,
                                           M* x) {
  using S = typename Tag::S;
  using Sp = Span<S, E>;
  const S* p = static_cast<const S*>(base);
  if (full && Sp::aligned(p + i0)) {
    typename Sp::U u;
    const typename Sp::V* vp = reinterpret_cast<const typename Sp::V*>(p + i0);
DDM_UNROLL
    for (int v = 0; v < Sp::kVecs; ++v) u.v[v] = ldg(vp + v);
DDM_UNROLL
    for (int e = 0; e < E; ++e) x[e] = keep[e] ? Conv<Tag, M>::in(u.s[e]) : M(0);
  } else {
DDM_UNROLL
    for (int e = 0; e < E; ++e) {
      M value = M(0);
      if (keep[e]) value = Conv<Tag, M>::in(ldg(p + (i0 + e)));
      x[e] = value;
    }
  }
}

template <typename M, int E, typename I>
DDM_INLINE void load_any(const void* base, DType dtype, I i0, bool full,
                                         const bool* keep, M* x) {
  switch (dtype) {
    case kFloat64:
      load_chunk<F64, M, E, I>(base, i0, full, keep, x);
      break;
    case kBFloat16:
      load_chunk<BF16, M, E, I>(base, i0, full, keep, x);
      break;
    case kFloat16:
      load_chunk<FP16, M, E, I>(base, i0, full, keep, x);
      break;
    default:
      load_chunk<F32, M, E, I>(base, i0, full, keep, x);
      break;
  }
}

// Stores v[e] for the in-range elements (all of them when `full`).
template <typename Tag, typename M, int E, typename I>
DDM_INLINE void store_chunk(void* base, I i0, bool full, const bool* in_range,
                                            const M* v) {
  using S = typename Tag::S;
  using Sp = Span<S, E>;
  S* p = static_cast<S*>(base);
  if (full && Sp::aligned(p + i0)) {
    typename Sp::U u;
DDM_UNROLL
    for (int e = 0; e < E; ++e) u.s[e] = Conv<Tag, M>::out(v[e]);
    typename Sp::V* vp = reinterpret_cast<typename Sp::V*>(p + i0);
DDM_UNROLL
    for (int k = 0; k < Sp::kVecs; ++k) vp[k] = u.v[k];
  } else {
DDM_UNROLL
    for (int e = 0; e < E; ++e) {
      if (in_range[e]) p[i0 + e] = Conv<Tag, M>::out(v[e]);
    }
  }
}

template <typename M, int E, typename I>
DDM_INLINE void store_any(void* base, DType dtype, I i0, bool full,
                                          const bool* in_range, const M* v) {
  switch (dtype) {
    case kFloat64:
      store_chunk<F64, M, E, I>(base, i0, full, in_range, v);
      break;
    case kBFloat16:
      store_chunk<BF16, M, E, I>(base, i0, full, in_range, v);
      break;
    case kFloat16:
      store_chunk<FP16, M, E, I>(base, i0, full, in_range, v);
      break;
    default:
      store_chunk<F32, M, E, I>(base, i0, full, in_range, v);
      break;
  }
}

// ------------------------------------------------------------------ mask
template <typename I>
struct MaskArgs {
  const uint8_t* data;  // nullptr: no mask (mode 0)
  I inner;
  I period;
  I mid;  // period / inner
  FastDiv<I> div_inner;
  FastDiv<I> div_period;
  int mode;  // 0: none, 1: the data's layout, 2: (O, M, I) against (O, 1, I)
};

// in_range[e] = lo <= i0 + e < hi; keep[e] = in_range[e] && mask != 0.
// `full` (all E in range) must equal in_range[0..E) all true.
template <int E, typename I>
DDM_INLINE void chunk_keep(const MaskArgs<I>& m, I i0, I lo, I hi, bool full,
                                           bool (&in_range)[E], bool (&keep)[E]) {
DDM_UNROLL
  for (int e = 0; e < E; ++e) {
    in_range[e] = full || (i0 + e >= lo && i0 + e < hi);
    keep[e] = in_range[e];
  }
  if (m.mode == 0) return;
  if (m.mode == 1) {
    using Sp = Span<uint8_t, E>;
    static_assert(Sp::kVecs == 1, "one vector of mask bytes per chunk");
    if (full && Sp::aligned(m.data + i0)) {
      const typename Sp::V word = ldg(reinterpret_cast<const typename Sp::V*>(m.data + i0));
DDM_UNROLL
      for (int e = 0; e < E; ++e) {
        // E == 8: uint2 (x: bytes 0..3, y: 4..7); E == 4: one 32-bit word
        unsigned w;
        if constexpr (E == 8) {
          w = e < 4 ? reinterpret_cast<const uint2&>(word).x
                    : reinterpret_cast<const uint2&>(word).y;
        } else {
          w = reinterpret_cast<const unsigned&>(word);
        }
        keep[e] = ((w >> (8 * (e & 3))) & 0xFFu) != 0u;
      }
    } else {
DDM_UNROLL
      for (int e = 0; e < E; ++e) {
        if (in_range[e]) keep[e] = ldg(m.data + (i0 + e)) != 0;
      }
    }
    return;
  }
  // mode 2: the in-range elements are consecutive from s0 = max(i0, lo);
  // s0 = q period + j inner + s has mask index q inner + s: divide once, walk.
  const I s0 = i0 > lo ? i0 : lo;
  const I q = m.div_period.div(s0);
  const I rem = s0 - q * m.period;
  I j = m.div_inner.div(rem);
  I s = rem - j * m.inner;
  I base = q * m.inner;
DDM_UNROLL
  for (int e = 0; e < E; ++e) {
    if (in_range[e]) {
      keep[e] = ldg(m.data + (base + s)) != 0;
      if (++s == m.inner) {
        s = 0;
        if (++j == m.mid) {
          j = 0;
          base += m.inner;
        }
      }
    }
  }
}

// ----------------------------------------------------------------- noise
// nz[4t + j] = noise[4 (first_counter + t) + j] for every counter t of the
// chunk holding a kept element; 0 for the others (never used).
template <int CPT>
DDM_INLINE void chunk_noise(uint64_t first_counter, uint64_t seed,
                                            const bool (&keep)[4 * CPT], float (&nz)[4 * CPT]) {
DDM_UNROLL
  for (int t = 0; t < CPT; ++t) {
    if (keep[4 * t] || keep[4 * t + 1] || keep[4 * t + 2] || keep[4 * t + 3]) {
      normals4(first_counter + t, seed, nz + 4 * t);
    } else {
      nz[4 * t] = nz[4 * t + 1] = nz[4 * t + 2] = nz[4 * t + 3] = 0.0f;
    }
  }
}

// The seed of a launch: the word at seed_ptr when given (read when the
// kernel runs, so a replayed CUDA graph sees the word's current value), else
// the seed passed by value.
DDM_INLINE uint64_t launch_seed(const uint64_t* seed_ptr, uint64_t seed) {
  return seed_ptr != nullptr ? ldg(seed_ptr) : seed;
}

// -------------------------------------------------------- the combination
template <typename I>
struct Common {
  const void* x[3];
  DType x_dtype[3];
  int n_inputs;
  int n_cols;
  bool has_noise;
  bool has_bias;
  uint64_t seed;
  const uint64_t* seed_ptr;  // not null: the seed is read from here
  MaskArgs<I> mask;
  I numel;
  I per_row;
  FastDiv<I> div_row;  // / per_row
  int64_t k_first;  // global index of the first chunk: offset / E
  I head;           // offset - k_first * E, in [0, E): element i is chunk
                    // position head + i of the grid starting at k_first
};

template <typename M>
struct Coefs {
  M x0, x1, x2, noise, bias;
};

template <typename M, typename I>
DDM_INLINE Coefs<M> load_coefs(const M* table, I row, const Common<I>& a) {
  const M* r = table + row * static_cast<I>(a.n_cols);
  Coefs<M> c;
  c.x0 = ldg(r);
  c.x1 = a.n_inputs > 1 ? ldg(r + 1) : M(0);
  c.x2 = a.n_inputs > 2 ? ldg(r + 2) : M(0);
  c.noise = a.has_noise ? ldg(r + a.n_inputs) : M(0);
  c.bias = a.has_bias ? ldg(r + a.n_inputs + (a.has_noise ? 1 : 0)) : M(0);
  return c;
}

// Products and sums rounded separately (no FMA contraction, which nvcc
// applies by default): the combination rounds exactly like the eager
// reference's column-by-column c_j * column_j additions (and the C++ backend,
// built with -ffp-contract=off).
DDM_INLINE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
DDM_INLINE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
DDM_INLINE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
DDM_INLINE double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// c_0 x_0 + c_1 x_1 + c_2 x_2 + c_noise noise + c_bias, left to right (the
// reference's order; the bias column is c_bias * 1 = c_bias exactly).
template <typename M, typename I>
DDM_INLINE M combine(const Coefs<M>& c, const Common<I>& a, M x0, M x1, M x2, float noise) {
  M v = mul_rn(c.x0, x0);
  if (a.n_inputs > 1) v = add_rn(v, mul_rn(c.x1, x1));
  if (a.n_inputs > 2) v = add_rn(v, mul_rn(c.x2, x2));
  if (a.has_noise) v = add_rn(v, mul_rn(c.noise, static_cast<M>(noise)));
  if (a.has_bias) v = add_rn(v, c.bias);
  return v;
}

// The H inputs values of elements i0 .. i0 + H - 1 (keep: their H flags).
template <typename M, int H, typename I>
DDM_INLINE void load_inputs(const Common<I>& a, I i0, bool full, const bool* keep,
                                            M (&x0)[H], M (&x1)[H], M (&x2)[H]) {
  load_any<M, H, I>(a.x[0], a.x_dtype[0], i0, full, keep, x0);
  if (a.n_inputs > 1) {
    load_any<M, H, I>(a.x[1], a.x_dtype[1], i0, full, keep, x1);
  } else {
DDM_UNROLL
    for (int e = 0; e < H; ++e) x1[e] = M(0);
  }
  if (a.n_inputs > 2) {
    load_any<M, H, I>(a.x[2], a.x_dtype[2], i0, full, keep, x2);
  } else {
DDM_UNROLL
    for (int e = 0; e < H; ++e) x2[e] = M(0);
  }
}

// ----------------------------------------------------------------- randn
template <typename I>
struct RandnArgs {
  void* out;
  uint64_t seed;
  const uint64_t* seed_ptr;  // not null: the seed is read from here
  I numel;
  I n_chunks;
  int64_t k_first;
  I head;
};

// Chunk kk (relative to k_first) of randn: kRandnCPT counters.
template <typename Tag, typename I>
DDM_INLINE void randn_chunk(const RandnArgs<I>& a, I kk) {
  constexpr int CPT = kRandnCPT;
  constexpr int E = 4 * CPT;
  const I i0 = kk * E - a.head;
  const bool full = i0 >= 0 && i0 <= a.numel - E;
  bool in_range[E];
DDM_UNROLL
  for (int e = 0; e < E; ++e) in_range[e] = full || (i0 + e >= 0 && i0 + e < a.numel);
  float nz[E];
  chunk_noise<CPT>(static_cast<uint64_t>(a.k_first + kk) * CPT,
                   launch_seed(a.seed_ptr, a.seed), in_range, nz);
  store_chunk<Tag, float, E, I>(a.out, i0, full, in_range, nz);
}

// ---------------------------------------------------------------- affine
template <typename M, typename I>
struct AffineArgs {
  Common<I> p;
  const M* coeffs;
  const M* coeffs2;  // nullptr: no second output
  void* out;
  void* out2;
  DType out_dtype;
  I n_chunks;
};

// Chunk kk (relative to k_first) of affine: CPT counters (E = 4 CPT
// elements), processed in sub-chunks of H elements (H = E, or 2 for float64
// math: register pressure): the mask and the noise of the whole chunk
// first, then per sub-chunk the loads, the combination and the stores.
template <typename M, typename I, int CPT, int H, bool TWO>
DDM_INLINE void affine_chunk(const AffineArgs<M, I>& a, I kk) {
  constexpr int E = 4 * CPT;
  static_assert(E % H == 0, "sub-chunks must tile the chunk");
  const Common<I>& p = a.p;
  const I i0 = kk * E - p.head;
  const bool full = i0 >= 0 && i0 <= p.numel - E;
  bool in_range[E], keep[E];
  chunk_keep<E, I>(p.mask, i0, I(0), p.numel, full, in_range, keep);
  // a chunk without kept elements reads nothing (see load_chunk) and
  // draws no noise; its in-range outputs are written as 0
  bool any = false;
DDM_UNROLL
  for (int e = 0; e < E; ++e) any |= keep[e];
  float nz[E];
  if (p.has_noise) {
    chunk_noise<CPT>(static_cast<uint64_t>(p.k_first + kk) * CPT,
                     launch_seed(p.seed_ptr, p.seed), keep, nz);
  } else {
DDM_UNROLL
    for (int e = 0; e < E; ++e) nz[e] = 0.0f;
  }
  // Rows: when the chunk's in-range elements share one row (all but the
  // chunks straddling a row end), its coefficients are loaded once;
  // otherwise each element loads those of its own row.
  const I first = i0 > 0 ? i0 : I(0);
  const I row = p.div_row.div(first);
  // (conservative at the tensor's end: the last chunk may take the slow path)
  const bool one_row = i0 + (E - 1) < (row + 1) * p.per_row;
  // Float64 math with two outputs: one pass per output (the second re-reads
  // the inputs, from L1), as both tables in registers would spill.
  constexpr int kPasses = (TWO && sizeof(M) == 8) ? 2 : 1;
  constexpr bool kBoth = TWO && kPasses == 1;  // both outputs in one pass
DDM_UNROLL
  for (int pass = 0; pass < kPasses; ++pass) {
    const M* table = pass == 0 ? a.coeffs : a.coeffs2;
    void* dst = pass == 0 ? a.out : a.out2;
    Coefs<M> c{}, c2{};
    if (one_row) {
      c = load_coefs<M, I>(table, row, p);
      if (kBoth) c2 = load_coefs<M, I>(a.coeffs2, row, p);
    }
DDM_UNROLL
    for (int h = 0; h < E; h += H) {
      M x0[H], x1[H], x2[H];
      load_inputs<M, H, I>(p, i0 + h, full && any, keep + h, x0, x1, x2);
      M out[H], out2[H];
DDM_UNROLL
      for (int e = 0; e < H; ++e) {
        const bool k = keep[h + e];
        if (!one_row && k) {
          const I r = p.div_row.div(i0 + (h + e));
          c = load_coefs<M, I>(table, r, p);
          if (kBoth) c2 = load_coefs<M, I>(a.coeffs2, r, p);
        }
        out[e] = k ? combine<M, I>(c, p, x0[e], x1[e], x2[e], nz[h + e]) : M(0);
        out2[e] = (kBoth && k) ? combine<M, I>(c2, p, x0[e], x1[e], x2[e], nz[h + e]) : M(0);
      }
      store_any<M, H, I>(dst, a.out_dtype, i0 + h, full, in_range + h, out);
      if (kBoth) store_any<M, H, I>(a.out2, a.out_dtype, i0 + h, full, in_range + h, out2);
    }
  }
}

template <typename M, typename I>
struct ReduceArgs {
  Common<I> p;
  const M* coeffs;  // may be nullptr for affine_dots with weight kinds 0, 1
  const void* weight;
  DType weight_dtype;
  int weight_kind;  // affine_dots: WeightKind
  int power;        // affine_sum: 1 or 2
  int n_out;        // result columns: 1 (sum) or n_cols (dots)
  I blocks_per_row;
  I chunks_per_block;
  double* partials;  // (rows, blocks_per_row, n_out)
};

// The accumulators of one thread of a reduction block.
template <typename M>
struct ReduceAcc {
  M x0, x1, x2, noise, one;  // affine_sum: x0 only
};

// The chunks [begin, end) (relative to k_first) of stage-1 block `block_id`
// = row * blocks_per_row + b: the row's chunks [first + b CHB, first + (b+1)
// CHB), clipped to the row's last chunk. May be empty.
template <typename M, typename I, int CPT>
DDM_INLINE void block_chunks(const ReduceArgs<M, I>& a, I block_id, I* row, I* begin, I* end) {
  constexpr int E = 4 * CPT;
  const Common<I>& p = a.p;
  *row = block_id / a.blocks_per_row;
  const I block = block_id - *row * a.blocks_per_row;
  const I lo = *row * p.per_row;  // the row's elements: [lo, lo + per_row)
  const I row_first = (lo + p.head) / E;                 // chunks of the row:
  const I row_last = (lo + p.per_row - 1 + p.head) / E;  // first .. last
  *begin = row_first + block * a.chunks_per_block;
  const I stop = *begin + a.chunks_per_block;
  *end = row_last + 1 < stop ? row_last + 1 : stop;
}

// One thread's share of stage-1 block `block_id`: chunks begin + tid,
// begin + tid + kThreads, ... in this order. DOTS false: affine_sum, true:
// affine_dots. Chunks and sub-chunks as in affine_chunk.
template <typename M, typename I, int CPT, int H, bool DOTS>
DDM_INLINE ReduceAcc<M> reduce_thread(const ReduceArgs<M, I>& a, I block_id, int tid) {
  constexpr int E = 4 * CPT;
  static_assert(E % H == 0, "sub-chunks must tile the chunk");
  const Common<I>& p = a.p;
  I row, begin, end;
  block_chunks<M, I, CPT>(a, block_id, &row, &begin, &end);
  const I lo = row * p.per_row;
  const I hi = lo + p.per_row;

  const bool need_coefs = !DOTS || a.weight_kind == kWeightCombination;
  Coefs<M> c{M(0), M(0), M(0), M(0), M(0)};
  if (need_coefs) c = load_coefs<M, I>(a.coeffs, row, p);

  M acc0 = M(0), acc1 = M(0), acc2 = M(0), acc_noise = M(0), acc_one = M(0);
  for (I kk = begin + static_cast<I>(tid); kk < end; kk += kThreads) {
    const I i0 = kk * E - p.head;
    const bool full = i0 >= lo && i0 <= hi - E;
    bool in_range[E], keep[E];
    chunk_keep<E, I>(p.mask, i0, lo, hi, full, in_range, keep);
    bool any = false;
DDM_UNROLL
    for (int e = 0; e < E; ++e) any |= keep[e];
    if (!any) continue;
    float nz[E];
    if (p.has_noise) {
      chunk_noise<CPT>(static_cast<uint64_t>(p.k_first + kk) * CPT,
                     launch_seed(p.seed_ptr, p.seed), keep, nz);
    } else {
DDM_UNROLL
      for (int e = 0; e < E; ++e) nz[e] = 0.0f;
    }
DDM_UNROLL
    for (int h = 0; h < E; h += H) {
      M x0[H], x1[H], x2[H];
      load_inputs<M, H, I>(p, i0 + h, full, keep + h, x0, x1, x2);
      M w[H];
      if (DOTS && a.weight_kind == kWeightTensor) {
        load_any<M, H, I>(a.weight, a.weight_dtype, i0 + h, full, keep + h, w);
      } else {
DDM_UNROLL
        for (int e = 0; e < H; ++e) w[e] = M(0);
      }
DDM_UNROLL
      for (int e = 0; e < H; ++e) {
        const bool k = keep[h + e];
        if constexpr (DOTS) {
          // w = 0 on masked elements, where every column is 0 too (inputs
          // selected to 0, noise finite): adding w * column adds exact zeros
          M we;
          if (a.weight_kind == kWeightOne) {
            we = k ? M(1) : M(0);
          } else if (a.weight_kind == kWeightTensor) {
            we = w[e];  // 0 where !keep (not loaded)
          } else {
            we = k ? combine<M, I>(c, p, x0[e], x1[e], x2[e], nz[h + e]) : M(0);
          }
          acc0 += we * x0[e];
          if (p.n_inputs > 1) acc1 += we * x1[e];
          if (p.n_inputs > 2) acc2 += we * x2[e];
          if (p.has_noise) acc_noise += we * static_cast<M>(nz[h + e]);
          if (p.has_bias) acc_one += we;
        } else {
          M v = combine<M, I>(c, p, x0[e], x1[e], x2[e], nz[h + e]);
          if (a.power == 2) v = mul_rn(v, v);
          acc0 += k ? v : M(0);
        }
      }
    }
  }

  return ReduceAcc<M>{acc0, acc1, acc2, acc_noise, acc_one};
}

// ------------------------------------------------------------ host setup
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename I>
MaskArgs<I> mask_args(const MaskView& m) {
  MaskArgs<I> r;
  r.data = m.data;
  r.inner = static_cast<I>(m.data ? m.inner : 1);
  r.period = static_cast<I>(m.data ? m.period : 1);
  r.mid = r.period / r.inner;
  r.div_inner = FastDiv<I>(r.inner);
  r.div_period = FastDiv<I>(r.period);
  r.mode = m.data == nullptr ? 0 : (m.period == m.inner ? 1 : 2);
  return r;
}

template <typename I>
Common<I> common_args(const AffineProblem& p, int cpt) {
  const int64_t E = 4 * cpt;
  Common<I> c;
  for (int k = 0; k < 3; ++k) {
    c.x[k] = k < p.n_inputs ? p.x[k] : nullptr;
    c.x_dtype[k] = k < p.n_inputs ? p.x_dtype[k] : kFloat32;
  }
  c.n_inputs = p.n_inputs;
  c.n_cols = p.n_cols();
  c.has_noise = p.has_noise;
  c.has_bias = p.has_bias;
  c.seed = p.seed;
  c.seed_ptr = p.seed_ptr;
  c.mask = mask_args<I>(p.mask);
  c.numel = static_cast<I>(p.numel);
  c.per_row = static_cast<I>(p.per_row());
  c.div_row = FastDiv<I>(c.per_row);
  c.k_first = p.offset / E;
  c.head = static_cast<I>(p.offset - c.k_first * E);
  return c;
}

inline int64_t n_chunks_of(int64_t numel, int64_t offset, int cpt) {
  const int64_t E = 4 * cpt;
  return (offset + numel - 1) / E - offset / E + 1;  // numel >= 1
}

// ---- reduction plan: a pure function of (numel, rows), nothing else (not
// the device, not the offset, not the math dtype), so the summation order
// is reproducible everywhere.
constexpr int64_t kMaxCountersPerBlock = 4096;  // 16 chunks (64 elements) per thread
constexpr int64_t kMinCountersPerBlock = 256;   // 1 chunk per thread
constexpr int64_t kTargetBlocks = 1024;         // about one wave of resident blocks

struct ReducePlan {
  int64_t chunks_per_block;
  int64_t blocks_per_row;
};

// Chunks per stage-1 block: the largest power of two in [256, 4096] that
// leaves at least kTargetBlocks blocks (parallelism on short rows), and the
// blocks per row that cover the most chunks a row of numel / rows elements
// can span at any alignment: (per_row + E - 2) / E + 1.
inline ReducePlan plan_reduction(int64_t numel, int64_t rows) {
  constexpr int64_t E = 4 * kChunkCPT;
  const int64_t per_row = numel / rows;
  const int64_t row_chunks = (per_row + E - 2) / E + 1;
  const int64_t per_block_min = kMinCountersPerBlock / kChunkCPT;
  int64_t per_block = kMaxCountersPerBlock / kChunkCPT;
  while (per_block > per_block_min && rows * ceil_div(row_chunks, per_block) < kTargetBlocks)
    per_block /= 2;
  ReducePlan plan;
  plan.chunks_per_block = per_block;
  plan.blocks_per_row = ceil_div(row_chunks, per_block);
  return plan;
}

// Bytes of the reductions' workspace: rows * blocks_per_row * result_cols
// doubles; a function of (numel, rows, result_cols) only.
inline int64_t workspace_bytes(const AffineProblem& p, int result_cols) {
  if (p.numel <= 0 || p.rows < 1 || result_cols < 1) return 0;
  const int64_t blocks = plan_reduction(p.numel, p.rows).blocks_per_row;
  return p.rows * blocks * result_cols * static_cast<int64_t>(sizeof(double));
}

// ---- the kernels' argument structs (numel >= 1)
template <typename I>
RandnArgs<I> randn_args(void* out, int64_t numel, uint64_t seed, const uint64_t* seed_ptr,
                        int64_t offset) {
  constexpr int64_t E = 4 * kRandnCPT;
  RandnArgs<I> a;
  a.out = out;
  a.seed = seed;
  a.seed_ptr = seed_ptr;
  a.numel = static_cast<I>(numel);
  a.n_chunks = static_cast<I>(n_chunks_of(numel, offset, kRandnCPT));
  a.k_first = offset / E;
  a.head = static_cast<I>(offset - a.k_first * E);
  return a;
}

template <typename M, typename I, int CPT>
AffineArgs<M, I> affine_args(const AffineProblem& p, const void* coeffs2, void* out, void* out2,
                             DType out_dtype) {
  AffineArgs<M, I> a;
  a.p = common_args<I>(p, CPT);
  a.coeffs = static_cast<const M*>(p.coeffs);
  a.coeffs2 = static_cast<const M*>(coeffs2);
  a.out = out;
  a.out2 = out2;
  a.out_dtype = out_dtype;
  a.n_chunks = static_cast<I>(n_chunks_of(p.numel, p.offset, CPT));
  return a;
}

// Stage 1 writes rows * blocks_per_row * n_out doubles to `workspace`.
template <typename M, typename I, int CPT>
ReduceArgs<M, I> reduce_args(const AffineProblem& p, const void* weight, DType weight_dtype,
                             int kind, int power, int n_out, void* workspace) {
  static_assert(CPT == kChunkCPT, "the plan counts chunks of kChunkCPT counters");
  const ReducePlan plan = plan_reduction(p.numel, p.rows);
  ReduceArgs<M, I> a;
  a.p = common_args<I>(p, CPT);
  a.coeffs = static_cast<const M*>(p.coeffs);
  a.weight = weight;
  a.weight_dtype = weight_dtype;
  a.weight_kind = kind;
  a.power = power;
  a.n_out = n_out;
  a.blocks_per_row = static_cast<I>(plan.blocks_per_row);
  a.chunks_per_block = static_cast<I>(plan.chunks_per_block);
  a.partials = static_cast<double*>(workspace);
  return a;
}

}  // namespace detail
}  // namespace cuda
}  // namespace ddm_fast
