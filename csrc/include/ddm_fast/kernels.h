// The framework-free kernel API of ddm_fast's C++ (CPU) and CUDA backends:
// raw pointers, sizes, dtype codes, a thread count or a CUDA stream. No torch
// types cross this boundary, so one build serves every torch version; the
// Python side (ddm_fast/backends/extension.py) validates every tensor before
// its pointer gets here.
//
// The four primitives (docs/math.md, "The kernels"):
//
//   randn        out[i] = noise[offset + i]
//   affine       out[i] = keep[i] ? sum_k c[r,k] x_k[i] + c[r,K] noise[offset+i]
//                                   + c[r,K+1] : 0,   r = i / (numel / rows)
//                (a second output from a second table, sharing the loads)
//   affine_sum   out[r] = sum_{i in row r, keep[i]} v[i]^power
//   affine_dots  out[r, j] = sum_{i in row r, keep[i]} w[i] * column_j[i],
//                columns (x_0 .. x_{K-1}, noise, 1), w = 1 / weight / v
//
// Masked (keep == 0) elements are never read into the arithmetic: their
// inputs are replaced by 0 before any product, so NaN or Inf under land
// reaches no value and no sum. Math is float32, or float64 when the
// coefficient table is float64; the noise is float32 always. Reductions are
// deterministic: fixed blocks, fixed order, independent of the thread count.
#pragma once

#include <cstdint>

#include "elementwise.h"

namespace ddm_fast {

// 2: the seed may be read at run time from memory (seed_ptr).
constexpr int kApiVersion = 2;

// How the mask is read. data index i -> mask index
//   (i / period) * inner + i % inner
// (data (O, M, I) against mask (O, 1, I): inner = I, period = M * I;
// period == inner: the mask has the data's layout). data == nullptr: no mask.
struct MaskView {
  const uint8_t* data = nullptr;
  int64_t inner = 1;
  int64_t period = 1;
};

// One per-row affine combination over `numel` elements split into `rows`
// equal rows. coeffs: (rows, n_cols) row-major in `math` (kFloat32 or
// kFloat64), n_cols = n_inputs + has_noise + has_bias.
struct AffineProblem {
  int64_t numel = 0;
  int64_t rows = 1;
  int n_inputs = 1;
  const void* x[3] = {nullptr, nullptr, nullptr};
  DType x_dtype[3] = {kFloat32, kFloat32, kFloat32};
  const void* coeffs = nullptr;
  DType math = kFloat32;
  MaskView mask;
  bool has_noise = false;
  uint64_t seed = 0;
  // When not null, the seed is read from this word when the kernel runs
  // instead of `seed` (device memory for CUDA, host memory for CPU): a
  // captured CUDA graph then replays with whatever seed the word holds, so a
  // replay draws fresh noise after the word is updated in place.
  const uint64_t* seed_ptr = nullptr;
  int64_t offset = 0;
  bool has_bias = false;

  int n_cols() const { return n_inputs + (has_noise ? 1 : 0) + (has_bias ? 1 : 0); }
  int64_t per_row() const { return rows > 0 ? numel / rows : 0; }
};

enum WeightKind : int { kWeightOne = 0, kWeightTensor = 1, kWeightCombination = 2 };

namespace cpu {
// `threads` >= 1: the OpenMP team size (the caller passes torch's setting).
// seed_ptr: as AffineProblem::seed_ptr (nullptr: use `seed`).
void randn(void* out, DType out_dtype, int64_t numel, uint64_t seed, const uint64_t* seed_ptr,
           int64_t offset, int threads);
// coeffs2 == nullptr: no second output (out2 ignored).
void affine(const AffineProblem& p, const void* coeffs2, void* out, void* out2,
            DType out_dtype, int threads);
// out: (rows,) in p.math.
void affine_sum(const AffineProblem& p, int power, void* out, int threads);
// out: (rows, n_cols) in p.math. weight: only for kWeightTensor.
void affine_dots(const AffineProblem& p, const void* weight, DType weight_dtype,
                 WeightKind kind, void* out, int threads);
// "avx512", "avx2" or "scalar": the path chosen at run time for this CPU.
const char* simd_level();
// Force a path ("scalar", "avx2", "avx512", or "auto"); false when this CPU
// or build cannot run it. For tests.
bool set_simd_level(const char* level);
// The paths compiled into this build, comma-separated ("scalar,avx2,avx512").
const char* simd_units();
// Whether this build runs its tiles on an OpenMP team (else `threads` is
// ignored and every call runs on the calling thread).
bool openmp();
}  // namespace cpu

namespace cuda {
// Same semantics on device pointers, launched on `stream` (a cudaStream_t)
// of device `device`. Asynchronous; errors of the launch are thrown
// (std::invalid_argument for bad arguments, std::runtime_error with the CUDA
// error string for CUDA failures). Pointers must be aligned to their element
// size; outputs must not overlap inputs (inputs are read through the
// read-only data cache). The combination rounds each product and sum
// separately (no FMA contraction), like the eager reference.
void randn(void* out, DType out_dtype, int64_t numel, uint64_t seed, const uint64_t* seed_ptr,
           int64_t offset, int device, void* stream);
void affine(const AffineProblem& p, const void* coeffs2, void* out, void* out2,
            DType out_dtype, int device, void* stream);
// `workspace`: scratch of reduction_workspace_bytes(p, result_cols) bytes on
// the device, 8-byte aligned (the Python side allocates it through torch's
// caching allocator); result_cols = 1 for affine_sum, p.n_cols() for
// affine_dots. The size depends on (numel, rows, result_cols) only; 0 for
// numel == 0. The reductions write `out` also when numel == 0 (zeros).
int64_t reduction_workspace_bytes(const AffineProblem& p, int result_cols);
void affine_sum(const AffineProblem& p, int power, void* out, void* workspace,
                int device, void* stream);
void affine_dots(const AffineProblem& p, const void* weight, DType weight_dtype,
                 WeightKind kind, void* out, void* workspace, int device, void* stream);
}  // namespace cuda

}  // namespace ddm_fast
