// Host emulation of the CUDA kernels: runs the very per-thread functions of
// csrc/cuda/kernels_impl.cuh (randn_chunk, affine_chunk, reduce_thread and
// the argument/plan builders), chunk by chunk and thread by thread, on host
// memory, and compares with a direct element-by-element evaluation of
// kernels.h's semantics. Needs nvcc to compile (the functions are
// __host__ __device__) but no GPU to run: no CUDA API is called.
//
//   nvcc -O2 -std=c++17 --expt-relaxed-constexpr -Icsrc/include -Icsrc/cuda
//       csrc/cuda/tests/emulate_kernels.cu -o /tmp/emulate && /tmp/emulate
//
// Covered: every dtype mix, float32/float64 math, int32 and int64 index
// paths (int64 forced on small tensors), offsets not multiple of 4 and past
// 2^32 counters, misaligned pointers (scalar paths) and aligned ones (vector
// paths), masks in the data's layout and in (O, 1, I) layouts, NaN/Inf under
// the mask, rows shorter than a chunk, rows spanning many reduction blocks,
// two outputs, and canaries around every output (no write out of range).
// Not covered: the warp shuffles / block tree (emulated by a sequential sum),
// the device's fp16 cvt instructions, the grid-stride loop and launches.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels_impl.cuh"

using namespace ddm_fast;
using namespace ddm_fast::cuda::detail;

static int failures = 0;
static int reported = 0;
#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (!(cond)) {                                       \
      ++failures;                                        \
      if (reported++ < 30) {                             \
        std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
        std::printf(__VA_ARGS__);                        \
        std::printf("\n");                               \
      }                                                  \
    }                                                    \
  } while (0)

static int dsize(DType d) { return d == kFloat64 ? 8 : (d == kFloat32 ? 4 : 2); }
static const char* dname(DType d) {
  return d == kFloat32 ? "f32" : d == kFloat64 ? "f64" : d == kBFloat16 ? "bf16" : "f16";
}

// Host storage whose data start `misalign_bytes` past a 64-byte boundary,
// with canary bytes (0xA5) on both sides. Move-only (pointers into it are
// handed to the kernels).
struct Buffer {
  std::vector<unsigned char> raw;
  size_t start = 0;
  size_t bytes = 0;
  Buffer() = default;
  Buffer(size_t n_bytes, size_t misalign_bytes) : raw(n_bytes + 256, 0xA5), bytes(n_bytes) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(raw.data());
    start = ((base + 63) & ~uintptr_t(63)) - base + 64 + misalign_bytes;  // < 160
    std::memset(raw.data() + start, 0, n_bytes);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&&) = default;
  Buffer& operator=(Buffer&&) = default;
  void* data() { return raw.data() + start; }
  const void* data() const { return raw.data() + start; }
  bool canaries_intact() const {
    for (size_t i = 0; i < start; ++i)
      if (raw[i] != 0xA5) return false;
    for (size_t i = start + bytes; i < raw.size(); ++i)
      if (raw[i] != 0xA5) return false;
    return true;
  }
};


template <typename M>
static M read_math(const void* p, DType d, int64_t i) {
  switch (d) {
    case kFloat64:
      return static_cast<M>(static_cast<const double*>(p)[i]);
    case kBFloat16:
      return static_cast<M>(bf16_to_float(static_cast<const uint16_t*>(p)[i]));
    case kFloat16:
      return static_cast<M>(fp16_to_float(static_cast<const uint16_t*>(p)[i]));
    default:
      return static_cast<M>(static_cast<const float*>(p)[i]);
  }
}

static void write_value(void* p, DType d, int64_t i, double v) {
  switch (d) {
    case kFloat64:
      static_cast<double*>(p)[i] = v;
      break;
    case kBFloat16:
      static_cast<uint16_t*>(p)[i] = float_to_bf16(static_cast<float>(v));
      break;
    case kFloat16:
      static_cast<uint16_t*>(p)[i] = float_to_fp16(static_cast<float>(v));
      break;
    default:
      static_cast<float*>(p)[i] = static_cast<float>(v);
  }
}

// The bits the kernel must store for math value v in dtype d.
template <typename M>
static uint64_t stored_bits(M v, DType d) {
  switch (d) {
    case kFloat64: {
      double x = static_cast<double>(v);
      uint64_t b;
      std::memcpy(&b, &x, 8);
      return b;
    }
    case kBFloat16:
      return float_to_bf16(static_cast<float>(v));
    case kFloat16:
      return float_to_fp16(static_cast<float>(v));
    default: {
      float x = static_cast<float>(v);
      uint32_t b;
      std::memcpy(&b, &x, 4);
      return b;
    }
  }
}

static uint64_t element_bits(const void* p, DType d, int64_t i) {
  switch (d) {
    case kFloat64: {
      uint64_t b;
      std::memcpy(&b, static_cast<const double*>(p) + i, 8);
      return b;
    }
    case kBFloat16:
    case kFloat16:
      return static_cast<const uint16_t*>(p)[i];
    default: {
      uint32_t b;
      std::memcpy(&b, static_cast<const float*>(p) + i, 4);
      return b;
    }
  }
}

// ---------------------------------------------------------------- a problem
struct Case {
  int64_t numel, rows, offset;
  int n_inputs;
  DType xd[3];
  DType math;
  DType out_dtype;
  DType wd;
  bool noise, bias, two;
  uint64_t seed;
  bool seed_in_memory;  // the kernels read the seed through seed_ptr
  int mask_mode;  // 0 none, 1 data layout, 2 (O, 1, I)
  int64_t O, Mid, In;
  int misalign[5];  // elements: x0, x1, x2, out/out2, weight
  bool force64;
  std::string describe() const {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "numel=%lld rows=%lld offset=%lld n=%d x=(%s,%s,%s) math=%s out=%s noise=%d "
                  "bias=%d two=%d seed_ptr=%d mask=%d (O=%lld M=%lld I=%lld) mis=(%d,%d,%d,%d,%d) "
                  "int64=%d",
                  (long long)numel, (long long)rows, (long long)offset, n_inputs, dname(xd[0]),
                  dname(xd[1]), dname(xd[2]), dname(math), dname(out_dtype), noise, bias, two,
                  seed_in_memory, mask_mode, (long long)O, (long long)Mid, (long long)In, misalign[0],
                  misalign[1], misalign[2], misalign[3], misalign[4], force64);
    return buf;
  }
};

struct Data {
  Buffer x[3], weight, coeffs, coeffs2, mask, seed_word;
  uint64_t seed;  // the seed the noise must come from
  std::vector<uint8_t> keep;  // per element
  AffineProblem p;
};

static Data make_data(const Case& c, std::mt19937_64& rng) {
  Data d;
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<int> coin(0, 3);
  // mask
  d.keep.assign(c.numel, 1);
  if (c.mask_mode != 0) {
    int64_t mask_numel = c.mask_mode == 1 ? c.numel : c.O * c.In;
    d.mask = Buffer(mask_numel, c.misalign[0] % 3);
    uint8_t* m = static_cast<uint8_t*>(d.mask.data());
    for (int64_t j = 0; j < mask_numel; ++j) m[j] = coin(rng) == 0 ? 0 : (coin(rng) ? 1 : 7);
    for (int64_t i = 0; i < c.numel; ++i) {
      const int64_t inner = c.mask_mode == 1 ? 1 : c.In;
      const int64_t period = c.mask_mode == 1 ? 1 : c.Mid * c.In;
      d.keep[i] = m[(i / period) * inner + i % inner] != 0;
    }
    d.p.mask.data = m;
    d.p.mask.inner = c.mask_mode == 1 ? 1 : c.In;
    d.p.mask.period = c.mask_mode == 1 ? 1 : c.Mid * c.In;
  }
  for (int k = 0; k < c.n_inputs; ++k) {
    d.x[k] = Buffer(c.numel * dsize(c.xd[k]), c.misalign[k] * dsize(c.xd[k]));
    for (int64_t i = 0; i < c.numel; ++i) {
      double v = normal(rng);
      if (!d.keep[i]) v = (i % 3 == 0) ? NAN : (i % 3 == 1 ? INFINITY : -1e30);  // land
      write_value(d.x[k].data(), c.xd[k], i, v);
    }
    d.p.x[k] = d.x[k].data();
    d.p.x_dtype[k] = c.xd[k];
  }
  d.weight = Buffer(c.numel * dsize(c.wd), c.misalign[4] * dsize(c.wd));
  for (int64_t i = 0; i < c.numel; ++i)
    write_value(d.weight.data(), c.wd, i, d.keep[i] ? normal(rng) : NAN);
  d.p.numel = c.numel;
  d.p.rows = c.rows;
  d.p.n_inputs = c.n_inputs;
  d.p.math = c.math;
  d.p.has_noise = c.noise;
  d.seed = c.seed;
  d.p.seed = c.seed;
  if (c.seed_in_memory) {
    // the by-value seed is wrong on purpose: only the word may be used
    d.seed_word = Buffer(sizeof(uint64_t), 0);
    std::memcpy(d.seed_word.data(), &c.seed, sizeof(uint64_t));
    d.p.seed = ~c.seed;
    d.p.seed_ptr = static_cast<const uint64_t*>(d.seed_word.data());
  }
  d.p.offset = c.offset;
  d.p.has_bias = c.bias;
  const int cols = d.p.n_cols();
  const size_t es = c.math == kFloat64 ? 8 : 4;
  d.coeffs = Buffer(c.rows * cols * es, 0);
  d.coeffs2 = Buffer(c.rows * cols * es, 0);
  for (int64_t j = 0; j < c.rows * cols; ++j) {
    write_value(d.coeffs.data(), c.math, j, normal(rng));
    write_value(d.coeffs2.data(), c.math, j, normal(rng));
  }
  d.p.coeffs = d.coeffs.data();
  return d;
}

// The combination of element i, exactly as the kernels order it.
template <typename M>
static M reference_value(const Data& d, const void* table, int64_t i) {
  const AffineProblem& p = d.p;
  const int64_t row = i / p.per_row();
  const M* c = static_cast<const M*>(table) + row * p.n_cols();
  M x[3] = {M(0), M(0), M(0)};
  for (int k = 0; k < p.n_inputs; ++k) x[k] = read_math<M>(p.x[k], p.x_dtype[k], i);
  M v = c[0] * x[0];
  if (p.n_inputs > 1) v += c[1] * x[1];
  if (p.n_inputs > 2) v += c[2] * x[2];
  if (p.has_noise)
    v += c[p.n_inputs] * static_cast<M>(normal_at(static_cast<uint64_t>(p.offset + i), d.seed));
  if (p.has_bias) v += c[p.n_inputs + (p.has_noise ? 1 : 0)];
  return v;
}

// ----------------------------------------------------------------- randn
template <typename Tag, typename I>
static void run_randn(int64_t numel, uint64_t seed, int64_t offset, DType d, int misalign) {
  Buffer out(numel * dsize(d), misalign * dsize(d));
  // odd misalignments read the seed through seed_ptr (a wrong by-value seed)
  const uint64_t word = seed;
  const RandnArgs<I> a = misalign % 2 ? randn_args<I>(out.data(), numel, ~seed, &word, offset)
                                      : randn_args<I>(out.data(), numel, seed, nullptr, offset);
  for (I kk = 0; kk < a.n_chunks; ++kk) randn_chunk<Tag, I>(a, kk);
  for (int64_t i = 0; i < numel; ++i) {
    const float n = normal_at(static_cast<uint64_t>(offset + i), seed);
    CHECK(element_bits(out.data(), d, i) == stored_bits<float>(n, d),
          "randn numel=%lld offset=%lld %s i=%lld", (long long)numel, (long long)offset,
          dname(d), (long long)i);
  }
  CHECK(out.canaries_intact(), "randn wrote out of range (numel=%lld offset=%lld)",
        (long long)numel, (long long)offset);
}

template <typename I>
static void randn_case(int64_t numel, uint64_t seed, int64_t offset, DType d, int misalign) {
  switch (d) {
    case kFloat64:
      return run_randn<F64, I>(numel, seed, offset, d, misalign);
    case kBFloat16:
      return run_randn<BF16, I>(numel, seed, offset, d, misalign);
    case kFloat16:
      return run_randn<FP16, I>(numel, seed, offset, d, misalign);
    default:
      return run_randn<F32, I>(numel, seed, offset, d, misalign);
  }
}

// ---------------------------------------------------------------- affine
template <typename M, typename I, int H>
static void run_affine(const Case& c, Data& d) {
  Buffer out(c.numel * dsize(c.out_dtype), c.misalign[3] * dsize(c.out_dtype));
  Buffer out2(c.numel * dsize(c.out_dtype), c.misalign[3] * dsize(c.out_dtype));
  for (size_t b = 0; b < out.bytes; ++b) static_cast<unsigned char*>(out.data())[b] = 0x5A;
  for (size_t b = 0; b < out2.bytes; ++b) static_cast<unsigned char*>(out2.data())[b] = 0x5A;
  const void* coeffs2 = c.two ? d.coeffs2.data() : nullptr;
  const AffineArgs<M, I> a =
      affine_args<M, I, kChunkCPT>(d.p, coeffs2, out.data(), c.two ? out2.data() : nullptr,
                                   c.out_dtype);
  for (I kk = 0; kk < a.n_chunks; ++kk) {
    if (c.two)
      affine_chunk<M, I, kChunkCPT, H, true>(a, kk);
    else
      affine_chunk<M, I, kChunkCPT, H, false>(a, kk);
  }
  for (int t = 0; t < (c.two ? 2 : 1); ++t) {
    const Buffer& o = t == 0 ? out : out2;
    const void* table = t == 0 ? d.coeffs.data() : d.coeffs2.data();
    for (int64_t i = 0; i < c.numel; ++i) {
      const M want = d.keep[i] ? reference_value<M>(d, table, i) : M(0);
      const uint64_t got = element_bits(o.data(), c.out_dtype, i);
      CHECK(got == stored_bits<M>(want, c.out_dtype), "affine out%d[%lld]: %s", t + 1,
            (long long)i, c.describe().c_str());
    }
    CHECK(o.canaries_intact(), "affine out%d wrote out of range: %s", t + 1,
          c.describe().c_str());
  }
  if (!c.two) {
    bool untouched = true;
    for (size_t b = 0; b < out2.bytes; ++b)
      untouched &= static_cast<const unsigned char*>(out2.data())[b] == 0x5A;
    CHECK(untouched, "affine wrote out2 without coeffs2");
  }
}

// ------------------------------------------------------------ reductions
// Emulates reduce_kernel + sum_partials_kernel: per block the threads'
// accumulators (summed in thread order here, in a fixed tree on the GPU),
// then per (row, column) the blocks in order, in double.
template <typename M, typename I, int H, bool DOTS>
static std::vector<double> emulate_reduce(const Data& d, int kind, int power, int n_out,
                                          const void* weight, DType wd) {
  const int64_t bytes = workspace_bytes(d.p, n_out);
  std::vector<double> workspace(bytes / 8 + 1, -12345.0);
  const ReduceArgs<M, I> a =
      reduce_args<M, I, kChunkCPT>(d.p, weight, wd, kind, power, n_out, workspace.data());
  const int64_t blocks = d.p.rows * static_cast<int64_t>(a.blocks_per_row);
  CHECK(blocks * n_out * 8 <= bytes, "workspace too small: %lld blocks x %d > %lld bytes",
        (long long)blocks, n_out, (long long)bytes);
  // coverage: the blocks of a row tile its chunks exactly once
  for (int64_t row = 0; row < d.p.rows; ++row) {
    const I lo = static_cast<I>(row * d.p.per_row());
    const I first = (lo + a.p.head) / 4, last = (lo + a.p.per_row - 1 + a.p.head) / 4;
    I next = first;
    for (I b = 0; b < a.blocks_per_row; ++b) {
      I r, begin, end;
      block_chunks<M, I, kChunkCPT>(a, static_cast<I>(row * a.blocks_per_row + b), &r, &begin,
                                    &end);
      CHECK(r == row, "block_chunks row");
      if (begin < end) {
        CHECK(begin == next, "row %lld block %lld starts at chunk %lld, expected %lld",
              (long long)row, (long long)b, (long long)begin, (long long)next);
        next = end;
      }
    }
    CHECK(next == last + 1, "row %lld: blocks end at chunk %lld, row's last is %lld",
          (long long)row, (long long)next, (long long)last);
  }
  for (int64_t block = 0; block < blocks; ++block) {
    M sums[5] = {M(0), M(0), M(0), M(0), M(0)};
    for (int tid = 0; tid < kThreads; ++tid) {
      const ReduceAcc<M> acc = reduce_thread<M, I, kChunkCPT, H, DOTS>(a, static_cast<I>(block), tid);
      sums[0] += acc.x0;
      sums[1] += acc.x1;
      sums[2] += acc.x2;
      sums[3] += acc.noise;
      sums[4] += acc.one;
    }
    double* out = workspace.data() + block * n_out;
    out[0] = sums[0];
    if (DOTS) {  // the column order of reduce_kernel
      int col = 1;
      if (d.p.n_inputs > 1) out[col++] = sums[1];
      if (d.p.n_inputs > 2) out[col++] = sums[2];
      if (d.p.has_noise) out[col++] = sums[3];
      if (d.p.has_bias) out[col++] = sums[4];
      CHECK(col == n_out, "dots columns");
    }
  }
  std::vector<double> result(d.p.rows * n_out, 0.0);
  for (int64_t row = 0; row < d.p.rows; ++row)
    for (int col = 0; col < n_out; ++col) {
      double s = 0.0;
      for (int64_t b = 0; b < a.blocks_per_row; ++b)
        s += workspace[(row * a.blocks_per_row + b) * n_out + col];
      result[row * n_out + col] = static_cast<double>(static_cast<M>(s));
    }
  return result;
}

template <typename M>
static void compare_sums(const char* what, const std::vector<double>& got,
                         const std::vector<double>& want, const std::vector<double>& scale,
                         const Case& c, bool exact_last_column, int n_out) {
  const double tol = sizeof(M) == 4 ? 2e-5 : 1e-12;
  for (size_t j = 0; j < want.size(); ++j) {
    const bool exact = exact_last_column && static_cast<int>(j % n_out) == n_out - 1;
    const double err = std::fabs(got[j] - want[j]);
    if (exact) {
      CHECK(got[j] == want[j], "%s [%zu] count %.17g != %.17g: %s", what, j, got[j], want[j],
            c.describe().c_str());
    } else {
      CHECK(std::isfinite(got[j]) && err <= tol * (scale[j] + 1e-30) + 1e-300,
            "%s [%zu] %.17g vs %.17g (err %.3g, scale %.3g): %s", what, j, got[j], want[j], err,
            scale[j], c.describe().c_str());
    }
  }
}

template <typename M, typename I, int H>
static void run_reductions(const Case& c, Data& d) {
  const AffineProblem& p = d.p;
  const int64_t per_row = p.per_row();
  // affine_sum, power 1 and 2
  for (int power = 1; power <= 2; ++power) {
    std::vector<double> want(p.rows, 0.0), scale(p.rows, 0.0);
    for (int64_t i = 0; i < c.numel; ++i) {
      if (!d.keep[i]) continue;
      const double v = static_cast<double>(reference_value<M>(d, p.coeffs, i));
      const double t = power == 2 ? v * v : v;
      want[i / per_row] += t;
      scale[i / per_row] += std::fabs(t);
    }
    const std::vector<double> got = emulate_reduce<M, I, H, false>(d, 0, power, 1, nullptr, kFloat32);
    compare_sums<M>(power == 1 ? "affine_sum(1)" : "affine_sum(2)", got, want, scale, c, false, 1);
  }
  // affine_dots, every weight kind
  const int cols = p.n_cols();
  for (int kind = 0; kind <= 2; ++kind) {
    std::vector<double> want(p.rows * cols, 0.0), scale(p.rows * cols, 0.0);
    for (int64_t i = 0; i < c.numel; ++i) {
      if (!d.keep[i]) continue;
      double w = 1.0;
      if (kind == 1) w = static_cast<double>(read_math<M>(d.weight.data(), c.wd, i));
      if (kind == 2) w = static_cast<double>(reference_value<M>(d, p.coeffs, i));
      const int64_t r = i / per_row;
      int col = 0;
      auto add = [&](double column) {
        want[r * cols + col] += w * column;
        scale[r * cols + col] += std::fabs(w * column);
        ++col;
      };
      for (int k = 0; k < p.n_inputs; ++k) add(read_math<M>(p.x[k], p.x_dtype[k], i));
      if (p.has_noise) add(normal_at(static_cast<uint64_t>(p.offset + i), d.seed));
      if (p.has_bias) add(1.0);
    }
    const std::vector<double> got =
        emulate_reduce<M, I, H, true>(d, kind, 1, cols, d.weight.data(), c.wd);
    // kind 0 with bias: the last column counts the valid elements, exactly
    compare_sums<M>("affine_dots", got, want, scale, c, kind == 0 && p.has_bias, cols);
  }
}

template <typename M, typename I, int H>
static void run_case_typed(const Case& c, Data& d) {
  run_affine<M, I, H>(c, d);
  run_reductions<M, I, H>(c, d);
}

static void run_case(const Case& c, std::mt19937_64& rng) {
  Data d = make_data(c, rng);
  const bool i64 = c.force64 || c.numel >= kInt32Limit;
  if (c.math == kFloat64) {
    if (i64)
      run_case_typed<double, int64_t, 2>(c, d);
    else
      run_case_typed<double, int32_t, 2>(c, d);
  } else {
    if (i64)
      run_case_typed<float, int64_t, 4>(c, d);
    else
      run_case_typed<float, int32_t, 4>(c, d);
  }
}

int main(int argc, char** argv) {
  const int n_random = argc > 1 ? std::atoi(argv[1]) : 400;
  std::mt19937_64 rng(20251125);
  const int64_t offsets[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 13, (int64_t{1} << 34) + 3,
                             (int64_t{1} << 40) + 6, (int64_t{1} << 62) - 17};
  const DType dtypes[] = {kFloat32, kFloat64, kBFloat16, kFloat16};

  // randn: every dtype, offsets, sizes around chunk edges, both index types
  int randn_cases = 0;
  for (int64_t numel : {1, 2, 3, 7, 8, 9, 15, 16, 17, 100, 1029})
    for (int64_t offset : offsets)
      for (DType d : dtypes)
        for (int mis = 0; mis < 2; ++mis) {
          randn_case<int32_t>(numel, 0x1234 + numel, offset, d, mis);
          randn_case<int64_t>(numel, 77, offset, d, mis);
          ++randn_cases;
        }
  std::printf("randn: %d cases (x2 index types)\n", randn_cases);

  // affine / affine_sum / affine_dots: fixed edge cases, then random ones
  std::vector<Case> cases;
  auto base = [&]() {
    Case c{};
    c.numel = 64;
    c.rows = 4;
    c.offset = 0;
    c.n_inputs = 1;
    c.xd[0] = c.xd[1] = c.xd[2] = kFloat32;
    c.math = kFloat32;
    c.out_dtype = kFloat32;
    c.wd = kFloat32;
    c.noise = true;
    c.bias = false;
    c.two = false;
    c.seed = 5;
    c.seed_in_memory = false;
    c.mask_mode = 0;
    c.O = 1;
    c.Mid = 1;
    c.In = 64;
    return c;
  };
  // rows of one element, rows shorter than a chunk, offsets not multiple of 4
  for (int64_t off : {0, 1, 2, 3, 5})
    for (int64_t rows : {1, 2, 3, 6, 12, 36}) {
      Case c = base();
      c.numel = 36;
      c.rows = rows;
      c.offset = off;
      c.n_inputs = 2;
      c.bias = true;
      c.two = true;
      cases.push_back(c);
      c.math = kFloat64;
      c.xd[0] = c.xd[1] = kFloat64;
      c.out_dtype = kFloat64;
      cases.push_back(c);
    }
  // rows spanning several reduction blocks (per_row > 1024 elements), both
  // index types, mask (O, 1, I)
  for (int64_t off : {int64_t{0}, int64_t{3}, (int64_t{1} << 34) + 1}) {
    Case c = base();
    c.numel = 4 * 3 * 1031;
    c.rows = 4;
    c.offset = off;
    c.n_inputs = 3;
    c.xd[1] = kBFloat16;
    c.xd[2] = kFloat16;
    c.bias = true;
    c.mask_mode = 2;
    c.O = 4;
    c.Mid = 3;
    c.In = 1031;
    cases.push_back(c);
    c.force64 = true;
    cases.push_back(c);
    c.force64 = false;
    c.rows = 1;
    c.numel = 3 * 50000;
    c.O = 1;
    c.Mid = 3;
    c.In = 50000;
    c.two = true;
    cases.push_back(c);
  }
  // rows of exactly one reduction block's worth of chunks (256 x 4
  // elements) and their neighbours, at every alignment: a misaligned row
  // spans one chunk more and needs a second block
  for (int64_t per_row : {1023, 1024, 1025, 2048})
    for (int64_t off : {0, 1, 2, 3, 4}) {
      Case c = base();
      c.numel = 4 * per_row;
      c.rows = 4;
      c.offset = off;
      c.In = c.numel;
      c.bias = true;
      cases.push_back(c);
    }
  std::uniform_int_distribution<int> pick(0, 1 << 30);
  auto choose = [&](int n) { return pick(rng) % n; };
  for (int t = 0; t < n_random; ++t) {
    Case c = base();
    const int64_t Os[] = {1, 2, 3, 5};
    const int64_t Ms[] = {1, 2, 3, 7};
    const int64_t Is[] = {1, 2, 3, 4, 5, 8, 9, 16, 33, 64, 100, 257};
    c.O = Os[choose(4)];
    c.Mid = Ms[choose(4)];
    c.In = Is[choose(12)];
    if (choose(10) == 0) c.In *= 37;  // rows past 1024 elements sometimes
    c.numel = c.O * c.Mid * c.In;
    std::vector<int64_t> divisors;
    for (int64_t r = 1; r <= c.numel; ++r)
      if (c.numel % r == 0) divisors.push_back(r);
    c.rows = divisors[choose(static_cast<int>(divisors.size()))];
    c.offset = choose(3) == 0 ? offsets[choose(13)] : choose(100);
    c.n_inputs = 1 + choose(3);
    for (int k = 0; k < 3; ++k) c.xd[k] = dtypes[choose(4)];
    c.math = kFloat32;
    for (int k = 0; k < c.n_inputs; ++k)
      if (c.xd[k] == kFloat64) c.math = kFloat64;
    if (choose(8) == 0) c.math = kFloat64;
    c.out_dtype = dtypes[choose(4)];
    c.wd = dtypes[choose(4)];
    c.noise = choose(4) != 0;
    c.bias = choose(2) == 0;
    c.two = choose(2) == 0;
    c.seed = static_cast<uint64_t>(pick(rng)) * 2654435761ull;
    c.seed_in_memory = c.noise && choose(3) == 0;
    c.mask_mode = choose(3);
    if (c.mask_mode == 2 && c.Mid == 1) c.mask_mode = 1;
    for (int k = 0; k < 5; ++k) c.misalign[k] = choose(3) == 0 ? 1 + choose(3) : 0;
    c.force64 = choose(4) == 0;
    cases.push_back(c);
  }
  for (const Case& c : cases) run_case(c, rng);
  std::printf("affine / affine_sum / affine_dots: %zu cases\n", cases.size());
  if (failures) {
    std::printf("%d FAILURES\n", failures);
    return 1;
  }
  std::printf("emulate_kernels: all passed\n");
  return 0;
}
