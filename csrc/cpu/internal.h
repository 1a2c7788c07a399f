// Internals of the CPU backend shared by the driver (kernels_cpu.cpp) and the
// per-ISA engines (engine_scalar.cpp, engine_avx2.cpp, engine_avx512.cpp).
//
// Split of work:
//   * the driver validates nothing (the binding does), cuts the problem into
//     tiles, runs them on an OpenMP team, owns the thread-local workspaces
//     and the per-block partial sums of the reductions;
//   * an engine processes one tile: it gathers the mask, generates the
//     noise, converts the inputs to the math dtype, combines, and stores or
//     reduces. Every engine is the same source (engine.h) compiled with
//     different target flags, plus its own noise generator.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ddm_fast/kernels.h"

namespace ddm_fast {
namespace cpu {
namespace detail {

// Elements per tile of the element-wise kernels. A multiple of 32 (one AVX2
// group of 8 Philox counters is 32 elements); the workspace below is sized
// for it.
constexpr int64_t kTile = 2048;
// Reduction block: every row is cut into blocks of kBlock elements counted
// from the row's first element; a block is reduced alone, in a fixed order,
// so the result does not depend on how blocks are spread over threads.
constexpr int64_t kBlock = 2048;
// Below this many elements a call stays on the calling thread: starting an
// OpenMP team costs more than the work.
constexpr int64_t kParallelMin = 65536;
// Accumulator lanes of a block reduction (fixed: part of the summation
// order, independent of the ISA the engine is compiled for).
constexpr int kLanesFloat = 32;
constexpr int kLanesDouble = 16;

// Scratch of one thread, allocated once per thread (64-byte aligned).
struct alignas(64) Workspace {
  // keep[kPad + j]: mask byte of tile element j (1 = valid), zero-padded so
  // that whole Philox counters (4 elements) and whole groups of counters
  // can be tested; noise[kPad + j] likewise. kPad >= 3.
  static constexpr int64_t kPad = 64;
  static constexpr int64_t kCap = kTile + 2 * kPad;
  alignas(64) uint8_t keep[kCap];
  alignas(64) float noise[kCap];
  alignas(64) double noise_math[kTile];  // the noise in float64 math
  alignas(64) double x[3][kTile];        // converted inputs (float or double)
  alignas(64) double weight[kTile];      // converted weight tensor
  alignas(64) double v[kTile];           // combination / first output
  alignas(64) double v2[kTile];          // second output
};

// One call, flattened for the engines.
struct Job {
  const AffineProblem* p = nullptr;
  // affine
  const void* coeffs2 = nullptr;
  void* out = nullptr;
  void* out2 = nullptr;
  DType out_dtype = kFloat32;
  // reductions: affine_sum (dots == false) or affine_dots
  bool dots = false;
  int power = 1;
  WeightKind weight_kind = kWeightOne;
  const void* weight = nullptr;
  DType weight_dtype = kFloat32;
  int n_results = 1;            // partial sums per block (1, or n_cols)
  int64_t blocks_per_row = 1;   // ceil(per_row / kBlock)
  double* partials = nullptr;   // [rows * blocks_per_row * n_results]
};

// One ISA's implementation of the tile operations.
struct Engine {
  const char* name;
  // The four normals of counters c0 .. c0 + n_counters - 1 into out[0 ..
  // 4 n_counters). keep (nullable) has the same layout: groups of counters
  // whose keep bytes are all 0 may be skipped (written as 0).
  void (*noise)(uint64_t seed, uint64_t c0, int64_t n_counters, float* out,
                const uint8_t* keep);
  // randn on elements [i0, i1) (i1 - i0 <= kTile).
  void (*randn_tile)(void* out, DType out_dtype, uint64_t seed, int64_t offset,
                     int64_t i0, int64_t i1, Workspace& ws);
  // affine on elements [i0, i1) (i1 - i0 <= kTile).
  void (*affine_tile)(const Job& job, int64_t i0, int64_t i1, Workspace& ws);
  // Reductions on elements [i0, i1), a union of whole blocks (<= kTile
  // elements in all): writes job.partials of every block it holds.
  void (*reduce_tile)(const Job& job, int64_t i0, int64_t i1, Workspace& ws);
};

extern const Engine kEngineScalar;
#if defined(DDM_FAST_HAVE_AVX2)
extern const Engine kEngineAvx2;
#endif
#if defined(DDM_FAST_HAVE_AVX512)
extern const Engine kEngineAvx512;
#endif

}  // namespace detail
}  // namespace cpu
}  // namespace ddm_fast
