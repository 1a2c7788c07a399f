// The CPU backend's driver: ddm_fast::cpu::{randn, affine, affine_sum,
// affine_dots} of kernels.h. It cuts a call into tiles, runs them on an
// OpenMP team (or on the calling thread for small problems), and hands each
// tile to the engine of the instruction set chosen at run time.
//
// Reductions are deterministic: every row is cut into blocks of kBlock
// elements counted from the row start; each block gives one partial sum per
// result column (float lanes for float32 math, see engine.h), stored in
// double; the partials of a row are then added in block order, in double,
// on the calling thread. Neither the thread count nor the tiling changes a
// bit of the result.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <utility>
#include <memory>
#include <new>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif
#endif

#include "internal.h"

namespace ddm_fast {
namespace cpu {
namespace detail {
namespace {

// ------------------------------------------------------------- dispatch
bool cpu_has(const char* feature_set) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const std::string set = feature_set;
  if (set == "avx2") {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  if (set == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("fma");
  }
#else
  (void)feature_set;
#endif
  return false;
}

// A SIMD engine is used only if it reproduces the portable engine's noise
// within a few ulp on a probe (three whole groups of counters and a partial
// one, across a carry into the counter's high word): a guard for paths that
// the machine building the package could not run (e.g. AVX-512 on a build
// host without it). Each engine is probed once per process.
bool engine_agrees(const Engine& e) {
  constexpr int64_t kCounters = 53;
  constexpr uint64_t kFirst = 0xFFFFFFFFull - 20;
  constexpr uint64_t kSeed = 0x0123456789ABCDEFull;
  float got[4 * kCounters], want[4 * kCounters];
  e.noise(kSeed, kFirst, kCounters, got, nullptr);
  kEngineScalar.noise(kSeed, kFirst, kCounters, want, nullptr);
  for (int64_t i = 0; i < 4 * kCounters; ++i) {
    const float scale = std::max(1.0f, std::fabs(want[i]));
    if (!(std::fabs(got[i] - want[i]) <= 16.0f * 1.1920929e-7f * scale)) return false;
  }
  return true;
}

bool engine_usable(const Engine& e, const char* feature_set) {
  if (!cpu_has(feature_set)) return false;
  static std::mutex lock;
  static std::vector<std::pair<const Engine*, bool>> verdicts;
  std::lock_guard<std::mutex> guard(lock);
  for (const auto& v : verdicts) {
    if (v.first == &e) return v.second;
  }
  const bool ok = engine_agrees(e);
  if (!ok) {
    std::fprintf(stderr,
                 "ddm_fast: the %s CPU engine disagrees with the portable engine on its "
                 "self-test; it is disabled (please report this)\n",
                 e.name);
  }
  verdicts.emplace_back(&e, ok);
  return ok;
}

const Engine* best_engine() {
#if defined(DDM_FAST_HAVE_AVX512)
  if (engine_usable(kEngineAvx512, "avx512")) return &kEngineAvx512;
#endif
#if defined(DDM_FAST_HAVE_AVX2)
  if (engine_usable(kEngineAvx2, "avx2")) return &kEngineAvx2;
#endif
  return &kEngineScalar;
}

std::atomic<const Engine*> g_engine{nullptr};

const Engine& engine() {
  const Engine* e = g_engine.load(std::memory_order_acquire);
  if (e == nullptr) {
    e = best_engine();
    g_engine.store(e, std::memory_order_release);
  }
  return *e;
}

// ------------------------------------------------------------ threading
// GNU OpenMP is not fork-safe: a child forked after the parent ran an
// OpenMP team can hang in its first parallel region. A child of such a
// parent therefore runs every call on its calling thread.
std::atomic<bool> g_team_started{false};
std::atomic<bool> g_serial_after_fork{false};
#if defined(_OPENMP) && (defined(__unix__) || defined(__APPLE__))
void on_fork_child() {
  if (g_team_started.load(std::memory_order_relaxed)) {
    g_serial_after_fork.store(true, std::memory_order_relaxed);
  }
}
const int g_atfork_registered = pthread_atfork(nullptr, nullptr, &on_fork_child);
#endif

// The calling thread's workspace, allocated on first use (null if out of
// memory: the caller reports it after the parallel region).
Workspace* workspace() {
  thread_local std::unique_ptr<Workspace> ws;
  if (!ws) ws.reset(new (std::nothrow) Workspace);
  return ws.get();
}

// body(t, ws) for t < n_tiles: on `threads` OpenMP threads (fewer when
// there are fewer tiles) when the problem is large enough, else on the
// calling thread. Tiles are handed out dynamically, four at a time, so a
// thread slowed down by other processes does not hold the others back; no
// result depends on which thread ran a tile.
template <class Body>
void run_tiles(int64_t n_tiles, int64_t numel, int threads, const Body& body) {
  if (n_tiles <= 0) return;
  bool out_of_memory = false;
#if defined(_OPENMP)
  if (threads > 1 && numel >= kParallelMin && n_tiles > 1 &&
      !g_serial_after_fork.load(std::memory_order_relaxed)) {
    const int team = static_cast<int>(std::min<int64_t>(threads, n_tiles));
    g_team_started.store(true, std::memory_order_relaxed);
#pragma omp parallel num_threads(team) reduction(|| : out_of_memory)
    {
      Workspace* ws = workspace();
      if (ws == nullptr) out_of_memory = true;
#pragma omp for schedule(dynamic, 4)
      for (int64_t t = 0; t < n_tiles; ++t) {
        if (ws != nullptr) body(t, *ws);
      }
    }
    if (out_of_memory) throw std::bad_alloc();
    return;
  }
#else
  (void)numel;
  (void)threads;
#endif
  Workspace* ws = workspace();
  if (ws == nullptr) throw std::bad_alloc();
  for (int64_t t = 0; t < n_tiles; ++t) body(t, *ws);
}

// Element-wise tiling: tile t = [start + t kTile, start + (t + 1) kTile)
// clipped to [0, numel), with start in (-4, 0] chosen so that every tile but
// the first begins on a Philox counter (offset + i = 0 mod 4): no counter
// is computed twice and the SIMD groups stay whole.
struct Tiling {
  int64_t start;
  int64_t count;
  int64_t numel;
  Tiling(int64_t numel_, int64_t offset) : numel(numel_) {
    start = -static_cast<int64_t>(static_cast<uint64_t>(offset) & 3u);
    count = (numel - start + kTile - 1) / kTile;
  }
  int64_t begin(int64_t t) const { return std::max<int64_t>(0, start + t * kTile); }
  int64_t end(int64_t t) const { return std::min<int64_t>(numel, start + (t + 1) * kTile); }
};

template <class T>
void store_results(const std::vector<double>& sums, void* out) {
  T* dst = static_cast<T*>(out);
  for (size_t i = 0; i < sums.size(); ++i) dst[i] = static_cast<T>(sums[i]);
}

// affine_sum / affine_dots: blocks, partials, per-row sums in block order.
void reduce(const AffineProblem& p, Job& job, void* out, int threads) {
  const Engine& e = engine();
  const int64_t rows = p.rows;
  const int n_res = job.n_results;
  std::vector<double> sums(static_cast<size_t>(rows * n_res), 0.0);
  if (p.numel > 0) {
    const int64_t per_row = p.per_row();
    const int64_t bpr = (per_row + kBlock - 1) / kBlock;
    std::vector<double> partials(static_cast<size_t>(rows * bpr * n_res));
    job.partials = partials.data();
    job.blocks_per_row = bpr;
    if (bpr == 1) {  // short rows: whole rows per tile
      const int64_t rows_per_tile = std::max<int64_t>(1, kTile / per_row);
      const int64_t n_tiles = (rows + rows_per_tile - 1) / rows_per_tile;
      run_tiles(n_tiles, p.numel, threads, [&](int64_t t, Workspace& ws) {
        const int64_t r0 = t * rows_per_tile;
        const int64_t r1 = std::min(rows, r0 + rows_per_tile);
        e.reduce_tile(job, r0 * per_row, r1 * per_row, ws);
      });
    } else {  // long rows: one block per tile
      run_tiles(rows * bpr, p.numel, threads, [&](int64_t t, Workspace& ws) {
        const int64_t row = t / bpr;
        const int64_t block = t % bpr;
        const int64_t i0 = row * per_row + block * kBlock;
        const int64_t i1 = std::min(row * per_row + per_row, i0 + kBlock);
        e.reduce_tile(job, i0, i1, ws);
      });
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int c = 0; c < n_res; ++c) {
        double s = 0.0;
        for (int64_t b = 0; b < bpr; ++b) s += partials[static_cast<size_t>((r * bpr + b) * n_res + c)];
        sums[static_cast<size_t>(r * n_res + c)] = s;
      }
    }
  }
  if (p.math == kFloat64) {
    store_results<double>(sums, out);
  } else {
    store_results<float>(sums, out);
  }
}

}  // namespace
}  // namespace detail

// ------------------------------------------------------------ the API
namespace {
// The problem with its seed read from seed_ptr (host memory here), once per
// call, before any tile runs.
AffineProblem with_seed(const AffineProblem& p) {
  AffineProblem q = p;
  if (q.seed_ptr != nullptr) q.seed = *q.seed_ptr;
  q.seed_ptr = nullptr;
  return q;
}
}  // namespace

void randn(void* out, DType out_dtype, int64_t numel, uint64_t seed, const uint64_t* seed_ptr,
           int64_t offset, int threads) {
  if (numel <= 0) return;
  if (seed_ptr != nullptr) seed = *seed_ptr;
  const detail::Engine& e = detail::engine();
  const detail::Tiling tiling(numel, offset);
  detail::run_tiles(tiling.count, numel, threads, [&](int64_t t, detail::Workspace& ws) {
    e.randn_tile(out, out_dtype, seed, offset, tiling.begin(t), tiling.end(t), ws);
  });
}

void affine(const AffineProblem& problem, const void* coeffs2, void* out, void* out2,
            DType out_dtype, int threads) {
  if (problem.numel <= 0) return;
  const AffineProblem p = with_seed(problem);
  const detail::Engine& e = detail::engine();
  detail::Job job;
  job.p = &p;
  job.coeffs2 = coeffs2;
  job.out = out;
  job.out2 = coeffs2 != nullptr ? out2 : nullptr;
  job.out_dtype = out_dtype;
  const detail::Tiling tiling(p.numel, p.has_noise ? p.offset : 0);
  detail::run_tiles(tiling.count, p.numel, threads, [&](int64_t t, detail::Workspace& ws) {
    e.affine_tile(job, tiling.begin(t), tiling.end(t), ws);
  });
}

void affine_sum(const AffineProblem& problem, int power, void* out, int threads) {
  const AffineProblem p = with_seed(problem);
  detail::Job job;
  job.p = &p;
  job.dots = false;
  job.power = power;
  job.n_results = 1;
  detail::reduce(p, job, out, threads);
}

void affine_dots(const AffineProblem& problem, const void* weight, DType weight_dtype,
                 WeightKind kind, void* out, int threads) {
  const AffineProblem p = with_seed(problem);
  detail::Job job;
  job.p = &p;
  job.dots = true;
  job.weight_kind = kind;
  job.weight = weight;
  job.weight_dtype = weight_dtype;
  job.n_results = p.n_cols();
  detail::reduce(p, job, out, threads);
}

const char* simd_level() { return detail::engine().name; }

bool set_simd_level(const char* level) {
  if (level == nullptr) return false;
  const std::string name = level;
  const detail::Engine* chosen = nullptr;
  if (name == "auto") {
    chosen = detail::best_engine();
  } else if (name == "scalar") {
    chosen = &detail::kEngineScalar;
#if defined(DDM_FAST_HAVE_AVX2)
  } else if (name == "avx2") {
    if (detail::engine_usable(detail::kEngineAvx2, "avx2")) chosen = &detail::kEngineAvx2;
#endif
#if defined(DDM_FAST_HAVE_AVX512)
  } else if (name == "avx512") {
    if (detail::engine_usable(detail::kEngineAvx512, "avx512")) {
      chosen = &detail::kEngineAvx512;
    }
#endif
  }
  if (chosen == nullptr) return false;
  detail::g_engine.store(chosen, std::memory_order_release);
  return true;
}

const char* simd_units() {
  return "scalar"
#if defined(DDM_FAST_HAVE_AVX2)
         ",avx2"
#endif
#if defined(DDM_FAST_HAVE_AVX512)
         ",avx512"
#endif
      ;
}

bool openmp() {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace ddm_fast
