// The CUDA backend of ddm_fast: namespace ddm_fast::cuda of kernels.h.
// The per-thread work lives in kernels_impl.cuh (__host__ __device__, so
// csrc/cuda/tests/emulate_kernels.cu can run it on the host); this file has
// the __global__ kernels, the launches and the public functions.
//
// Semantics: kernels.h and ddm_fast/ops/reference.py (the oracle). Layout of
// the work (every kernel):
//
// * Chunks. Element i of the tensor is the global noise index g = offset + i.
//   The global index space is cut into chunks of E = 4 CPT elements, i.e.
//   CPT consecutive Philox counters (chunk k holds counters CPT k .. CPT k +
//   CPT - 1). A thread owns whole chunks, so one normals4() call feeds four
//   elements and no kernel evaluates a counter twice (except that two
//   reduction blocks share the counter straddling their rows' boundary, as
//   in the Triton kernels). CPT = 1 for affine and the reductions (their
//   loads, noise and coefficients of more elements per thread would pass 64
//   registers), 2 for randn. Grid-stride loops over chunks (element-wise
//   kernels); the reductions' chunk-to-thread map is fixed (below).
// * Vector access. The chunk grid is aligned to the global index: with
//   offset % 4 == 0 every full chunk starts at a multiple of 4 elements, so a
//   16-byte aligned tensor is moved with 128-bit loads/stores for float32
//   (one per 4 elements) and float64 (two), 64-bit ones for 16-bit types
//   (float64 math works on sub-chunks of 2 elements: 128-bit for float64
//   data). Chunks at the tensor's (a reduction row's) edges, unaligned
//   offsets or pointers take a scalar path with per-element bounds. The
//   alignment is tested per chunk, so any pointer works.
// * Masks. keep[i] = mask[(i / period) * inner + i % inner] != 0 (MaskView).
//   Mode 1 (period == inner) reads the mask like the data (one 32-bit load
//   per chunk when aligned); mode 2 divides once per chunk (multiply-high
//   FastDiv) and walks the (O, M, I) position. A masked or out-of-range
//   element never enters arithmetic: its inputs are selected to 0 (a select,
//   not a product: NaN/Inf under the mask is harmless), its output is 0, a
//   chunk without any kept element loads no input, and a counter whose four
//   elements are all masked draws no noise.
// * Rows. Row r = i / per_row uses coeffs[r, :]. An element-wise chunk whose
//   elements share a row (all but those straddling a row end) loads that
//   row's coefficients once; a straddling chunk loads them per element. A
//   reduction block lies inside one row and loads them once.
// * Reductions: deterministic two stages, no atomics. Stage 1: block
//   (row, b) covers the chunks [c0 + b CHB, c0 + (b+1) CHB) of its row (c0:
//   the row's first chunk; CHB chunks per block: a function of (numel, rows)
//   only, see plan_reduction); thread t takes chunks t, t + 256, ... of them
//   in order, accumulating in the math dtype, then a fixed shuffle tree sums
//   the block; one partial per (row, block, result column) goes to the
//   workspace as double. Stage 2: one warp per (row, column) adds its row's
//   partials in a fixed order (lane-strided, then a shuffle tree) in double
//   and writes the result in the math dtype. So float32 math accumulates in
//   float32 within a block (at most 64 elements serially per thread, then a
//   256-way tree: at most 16384 elements) and in double across blocks.
// * Index type: int32 element indices (cheaper index and division
//   arithmetic) unless numel >= 2^31 - 2^20; then int64. Philox counters are
//   uint64 always.
//
// No --use_fast_math: the noise uses the precise logf / sincosf of
// elementwise.h. fp16 <-> float uses the hardware cvt instructions (exact
// for fp16 -> float; round-to-nearest-even for float -> fp16, the rounding
// of elementwise.h's float_to_fp16, whose NaN encoding is kept); bf16 uses
// elementwise.h's bit conversions. float64 -> 16-bit rounds through float32
// (as torch does). Inputs are read through the read-only data cache
// (__ldg): outputs must not overlap inputs.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "ddm_fast/kernels.h"
#include "kernels_impl.cuh"

namespace ddm_fast {
namespace cuda {
namespace {

using namespace detail;  // NOLINT: this file's own implementation

constexpr unsigned kFullWarp = 0xFFFFFFFFu;

// ------------------------------------------------------------------ kernels
// Grid-stride loops over chunks (relative to k_first); 256 threads per
// block; launch bounds keep every kernel at <= 64 registers (4 blocks of
// 256 threads per SM: >= 50% occupancy).
template <typename Tag, typename I>
__global__ void __launch_bounds__(kThreads, 4) randn_kernel(const RandnArgs<I> a) {
  const I stride = static_cast<I>(gridDim.x) * kThreads;
  for (I kk = static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; kk < a.n_chunks; kk += stride)
    randn_chunk<Tag, I>(a, kk);
}

template <typename M, typename I, int CPT, int H, bool TWO>
__global__ void __launch_bounds__(kThreads, 4) affine_kernel(const AffineArgs<M, I> a) {
  const I stride = static_cast<I>(gridDim.x) * kThreads;
  for (I kk = static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; kk < a.n_chunks; kk += stride)
    affine_chunk<M, I, CPT, H, TWO>(a, kk);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {  // result in lane 0, fixed tree
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFullWarp, v, o);
  return v;
}

// Sum of v over the block, valid in thread 0; fixed order. All threads call.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch /* kWarps */) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch reuse across calls
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = T(0);
  if (warp == 0) {
    r = lane < kWarps ? scratch[lane] : T(0);
    r = warp_sum(r);
  }
  return r;
}

// Stage 1: block (row, b) = blockIdx.x writes partials[blockIdx.x, :] (one
// double per result column); with one block per row (`direct`) it writes
// the result out[row, :] itself (the same value stage 2 would produce: one
// double rounded back to M) and stage 2 is not launched. DOTS false:
// affine_sum, true: affine_dots.
template <typename M>
__device__ __forceinline__ void put_result(double* partials, M* direct, int64_t at, M s) {
  if (direct != nullptr)
    direct[at] = s;
  else
    partials[at] = static_cast<double>(s);
}

template <typename M, typename I, int CPT, int H, bool DOTS>
__global__ void __launch_bounds__(kThreads, 4)
    reduce_kernel(const ReduceArgs<M, I> a, M* direct) {
  __shared__ M scratch[kWarps];
  const ReduceAcc<M> acc =
      reduce_thread<M, I, CPT, H, DOTS>(a, static_cast<I>(blockIdx.x), threadIdx.x);
  const Common<I>& p = a.p;
  const int64_t at = static_cast<int64_t>(blockIdx.x) * a.n_out;
  const bool lead = threadIdx.x == 0;
  const M s0 = block_sum<M>(acc.x0, scratch);
  if (lead) put_result<M>(a.partials, direct, at, s0);
  if constexpr (DOTS) {  // columns: inputs, noise, 1
    int col = 1;
    if (p.n_inputs > 1) {
      const M s = block_sum<M>(acc.x1, scratch);
      if (lead) put_result<M>(a.partials, direct, at + col, s);
      ++col;
    }
    if (p.n_inputs > 2) {
      const M s = block_sum<M>(acc.x2, scratch);
      if (lead) put_result<M>(a.partials, direct, at + col, s);
      ++col;
    }
    if (p.has_noise) {
      const M s = block_sum<M>(acc.noise, scratch);
      if (lead) put_result<M>(a.partials, direct, at + col, s);
      ++col;
    }
    if (p.has_bias) {
      const M s = block_sum<M>(acc.one, scratch);
      if (lead) put_result<M>(a.partials, direct, at + col, s);
    }
  }
}

// out[pair] = sum over blocks b (in order, lane-strided, then a fixed tree)
// of partials[row, b, col], pair = row * n_out + col; one warp per pair.
template <typename M>
__global__ void __launch_bounds__(kThreads, 4)
    sum_partials_kernel(const double* partials, M* out, int64_t n_pairs, int n_out,
                        int64_t blocks_per_row) {
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (pair >= n_pairs) return;  // whole warps only
  const int64_t row = pair / n_out;
  const int col = static_cast<int>(pair - row * n_out);
  const double* base = partials + row * blocks_per_row * n_out + col;
  double s = 0.0;
  for (int64_t b = lane; b < blocks_per_row; b += 32) s += base[b * n_out];
  s = warp_sum(s);
  if (lane == 0) out[pair] = static_cast<M>(s);
}

// ------------------------------------------------------------------ host
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("ddm_fast CUDA backend: ") + what + " failed: " +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  }
}

void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Makes `device` current with cudaSetDevice (this library links its own
// static cudart, whose current device is the driver's current context, i.e.
// torch's current device; the device is passed and set explicitly) and
// restores the previous device on exit, like torch's device guard. When
// `device` is already current nothing is changed.
class DeviceScope {
 public:
  explicit DeviceScope(int device) : device_(device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      (void)cudaGetLastError();
      previous_ = -1;
    }
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceScope() {
    if (previous_ >= 0 && previous_ != device_) {
      (void)cudaSetDevice(previous_);
      (void)cudaGetLastError();
    }
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int device_;
  int previous_ = -1;
};

int sm_count(int device) {
  constexpr int kCached = 64;
  static std::atomic<int> cache[kCached];
  if (device >= 0 && device < kCached) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute(MultiProcessorCount)");
  if (sms < 1) sms = 1;
  if (device >= 0 && device < kCached) cache[device].store(sms, std::memory_order_relaxed);
  return sms;
}

// Grid of an element-wise grid-stride kernel: enough blocks for every chunk,
// at most 32 per SM (several waves of resident blocks; the loop does the rest).
unsigned elementwise_grid(int64_t n_chunks, int device) {
  const int64_t want = ceil_div(n_chunks, kThreads);
  const int64_t cap = static_cast<int64_t>(sm_count(device)) * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(want, cap)));
}

bool valid_dtype(DType d) { return d == kFloat32 || d == kFloat64 || d == kBFloat16 || d == kFloat16; }

void validate(const AffineProblem& p, const char* op) {
  const std::string where = std::string("ddm_fast::cuda::") + op + ": ";
  if (p.numel < 0) throw std::invalid_argument(where + "numel must be >= 0");
  if (p.rows < 1 || p.numel % p.rows != 0)
    throw std::invalid_argument(where + "rows must be >= 1 and divide numel");
  if (p.n_inputs < 1 || p.n_inputs > 3)
    throw std::invalid_argument(where + "n_inputs must be 1, 2 or 3");
  if (p.math != kFloat32 && p.math != kFloat64)
    throw std::invalid_argument(where + "math dtype must be float32 or float64");
  if (p.offset < 0) throw std::invalid_argument(where + "offset must be >= 0");
  if (p.numel > 0 && p.offset > INT64_MAX - p.numel)
    throw std::invalid_argument(where + "offset + numel overflows int64");
  for (int k = 0; k < p.n_inputs; ++k) {
    if (!valid_dtype(p.x_dtype[k])) throw std::invalid_argument(where + "bad input dtype");
    if (p.numel > 0 && p.x[k] == nullptr) throw std::invalid_argument(where + "null input");
  }
  if (p.mask.data != nullptr &&
      (p.mask.inner < 1 || p.mask.period < p.mask.inner || p.mask.period % p.mask.inner != 0))
    throw std::invalid_argument(where +
                                "mask inner must be >= 1 and divide period (period >= inner)");
}

template <typename M, typename I, int CPT, int H, bool DOTS>
void launch_reduce(const AffineProblem& p, const void* weight, DType weight_dtype, int kind,
                   int power, int n_out, void* out, void* workspace, cudaStream_t stream,
                   const char* name) {
  const ReduceArgs<M, I> a =
      reduce_args<M, I, CPT>(p, weight, weight_dtype, kind, power, n_out, workspace);
  const int64_t blocks = p.rows * static_cast<int64_t>(a.blocks_per_row);
  const int64_t pairs = p.rows * n_out;
  const int64_t grid2 = ceil_div(pairs, kWarps);
  if (blocks > INT32_MAX || grid2 > INT32_MAX)
    throw std::invalid_argument(std::string(name) + ": too many rows for one launch");
  // one block per row: stage 1 writes the result (no stage 2 launch)
  M* direct = a.blocks_per_row == 1 ? static_cast<M*>(out) : nullptr;
  reduce_kernel<M, I, CPT, H, DOTS>
      <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, direct);
  check_launch(name);
  if (direct != nullptr) return;
  sum_partials_kernel<M><<<static_cast<unsigned>(grid2), kThreads, 0, stream>>>(
      a.partials, static_cast<M*>(out), pairs, n_out, static_cast<int64_t>(a.blocks_per_row));
  check_launch(name);
}

template <bool DOTS>
void reduce(const AffineProblem& p, const void* weight, DType weight_dtype, int kind, int power,
            int n_out, void* out, void* workspace, int device, void* stream_ptr,
            const char* name) {
  DeviceScope scope(device);
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const size_t elem = p.math == kFloat64 ? sizeof(double) : sizeof(float);
  if (p.numel == 0) {  // empty rows sum to 0 (all-zero bits in both dtypes)
    check(cudaMemsetAsync(out, 0, static_cast<size_t>(p.rows * n_out) * elem, stream),
          "cudaMemsetAsync");
    return;
  }
  const bool small = p.numel < kInt32Limit;
  if (p.math == kFloat64) {
    if (small)
      launch_reduce<double, int32_t, kChunkCPT, 2, DOTS>(p, weight, weight_dtype, kind, power, n_out, out,
                                              workspace, stream, name);
    else
      launch_reduce<double, int64_t, kChunkCPT, 2, DOTS>(p, weight, weight_dtype, kind, power, n_out, out,
                                              workspace, stream, name);
  } else {
    if (small)
      launch_reduce<float, int32_t, kChunkCPT, 4, DOTS>(p, weight, weight_dtype, kind, power, n_out, out,
                                             workspace, stream, name);
    else
      launch_reduce<float, int64_t, kChunkCPT, 4, DOTS>(p, weight, weight_dtype, kind, power, n_out, out,
                                             workspace, stream, name);
  }
}

template <typename Tag, typename I>
void launch_randn(void* out, int64_t numel, uint64_t seed, const uint64_t* seed_ptr,
                  int64_t offset, int device, cudaStream_t stream) {
  const RandnArgs<I> a = randn_args<I>(out, numel, seed, seed_ptr, offset);
  randn_kernel<Tag, I><<<elementwise_grid(a.n_chunks, device), kThreads, 0, stream>>>(a);
  check_launch("randn_kernel");
}

template <typename M, typename I, int CPT, int H>
void launch_affine(const AffineProblem& p, const void* coeffs2, void* out, void* out2,
                   DType out_dtype, int device, cudaStream_t stream) {
  const AffineArgs<M, I> a = affine_args<M, I, CPT>(p, coeffs2, out, out2, out_dtype);
  const unsigned grid = elementwise_grid(a.n_chunks, device);
  if (coeffs2 != nullptr)
    affine_kernel<M, I, CPT, H, true><<<grid, kThreads, 0, stream>>>(a);
  else
    affine_kernel<M, I, CPT, H, false><<<grid, kThreads, 0, stream>>>(a);
  check_launch("affine_kernel");
}

}  // namespace

// ------------------------------------------------------------ public API
void randn(void* out, DType out_dtype, int64_t numel, uint64_t seed, const uint64_t* seed_ptr,
           int64_t offset, int device, void* stream_ptr) {
  if (numel < 0 || offset < 0 || (numel > 0 && offset > INT64_MAX - numel))
    throw std::invalid_argument("ddm_fast::cuda::randn: bad numel or offset");
  if (!valid_dtype(out_dtype)) throw std::invalid_argument("ddm_fast::cuda::randn: bad dtype");
  if (numel == 0) return;
  if (out == nullptr) throw std::invalid_argument("ddm_fast::cuda::randn: null output");
  DeviceScope scope(device);
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const bool small = numel < kInt32Limit;
#define DDM_RANDN(TAG)                                                          \
  (small ? launch_randn<TAG, int32_t>(out, numel, seed, seed_ptr, offset, device, stream) \
         : launch_randn<TAG, int64_t>(out, numel, seed, seed_ptr, offset, device, stream))
  switch (out_dtype) {
    case kFloat64:
      DDM_RANDN(F64);
      break;
    case kBFloat16:
      DDM_RANDN(BF16);
      break;
    case kFloat16:
      DDM_RANDN(FP16);
      break;
    default:
      DDM_RANDN(F32);
      break;
  }
#undef DDM_RANDN
}

void affine(const AffineProblem& p, const void* coeffs2, void* out, void* out2, DType out_dtype,
            int device, void* stream_ptr) {
  validate(p, "affine");
  if (!valid_dtype(out_dtype)) throw std::invalid_argument("ddm_fast::cuda::affine: bad dtype");
  if (p.numel == 0) return;
  if (p.coeffs == nullptr || out == nullptr || (coeffs2 != nullptr && out2 == nullptr))
    throw std::invalid_argument("ddm_fast::cuda::affine: null coefficients or output");
  DeviceScope scope(device);
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const bool small = p.numel < kInt32Limit;
  if (p.math == kFloat64) {
    if (small)
      launch_affine<double, int32_t, kChunkCPT, 2>(p, coeffs2, out, out2, out_dtype, device, stream);
    else
      launch_affine<double, int64_t, kChunkCPT, 2>(p, coeffs2, out, out2, out_dtype, device, stream);
  } else {
    if (small)
      launch_affine<float, int32_t, kChunkCPT, 4>(p, coeffs2, out, out2, out_dtype, device, stream);
    else
      launch_affine<float, int64_t, kChunkCPT, 4>(p, coeffs2, out, out2, out_dtype, device, stream);
  }
}

int64_t reduction_workspace_bytes(const AffineProblem& p, int result_cols) {
  return workspace_bytes(p, result_cols);
}

void affine_sum(const AffineProblem& p, int power, void* out, void* workspace, int device,
                void* stream) {
  validate(p, "affine_sum");
  if (power != 1 && power != 2)
    throw std::invalid_argument("ddm_fast::cuda::affine_sum: power must be 1 or 2");
  if (out == nullptr) throw std::invalid_argument("ddm_fast::cuda::affine_sum: null output");
  if (p.numel > 0 && (p.coeffs == nullptr || workspace == nullptr))
    throw std::invalid_argument("ddm_fast::cuda::affine_sum: null coefficients or workspace");
  reduce<false>(p, nullptr, kFloat32, kWeightOne, power, 1, out, workspace, device, stream,
                "affine_sum reduce_kernel");
}

void affine_dots(const AffineProblem& p, const void* weight, DType weight_dtype, WeightKind kind,
                 void* out, void* workspace, int device, void* stream) {
  validate(p, "affine_dots");
  if (kind != kWeightOne && kind != kWeightTensor && kind != kWeightCombination)
    throw std::invalid_argument("ddm_fast::cuda::affine_dots: bad weight kind");
  if (out == nullptr) throw std::invalid_argument("ddm_fast::cuda::affine_dots: null output");
  if (p.numel > 0) {
    if (workspace == nullptr)
      throw std::invalid_argument("ddm_fast::cuda::affine_dots: null workspace");
    if (kind == kWeightTensor && (weight == nullptr || !valid_dtype(weight_dtype)))
      throw std::invalid_argument("ddm_fast::cuda::affine_dots: bad weight tensor");
    if (kind == kWeightCombination && p.coeffs == nullptr)
      throw std::invalid_argument("ddm_fast::cuda::affine_dots: null coefficients");
  }
  reduce<true>(p, weight, weight_dtype, kind, 1, p.n_cols(), out, workspace, device, stream,
               "affine_dots reduce_kernel");
}

}  // namespace cuda
}  // namespace ddm_fast
