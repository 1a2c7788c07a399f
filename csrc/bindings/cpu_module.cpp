// ddm_fast._C: the Python binding of the CPU kernels (csrc/cpu/).
//
// pybind11 only, no torch: tensors cross as data pointers (Python ints, 0
// for none) with dtype codes and sizes, so one build serves every torch
// version. ddm_fast/backends/extension.py is the only intended caller and
// checks every tensor first; this module still validates every scalar
// argument and raises ValueError naming the argument, so a wrong call is an
// exception, never a crash (a wrong pointer, of course, cannot be detected).
// The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "ddm_fast/kernels.h"

namespace py = pybind11;
using ddm_fast::AffineProblem;
using ddm_fast::DType;

#ifndef DDM_FAST_BUILD_FLAGS
#define DDM_FAST_BUILD_FLAGS "unknown"
#endif

namespace {

[[noreturn]] void fail(const std::string& message) { throw py::value_error(message); }

DType dtype_arg(const char* name, int64_t code) {
  if (code < 0 || code > 3) {
    fail(std::string(name) + " must be a dtype code 0 (float32), 1 (float64), "
         "2 (bfloat16) or 3 (float16), got " + std::to_string(code));
  }
  return static_cast<DType>(code);
}

DType math_arg(int64_t code) {
  if (code != ddm_fast::kFloat32 && code != ddm_fast::kFloat64) {
    fail("math_dtype must be 0 (float32) or 1 (float64), got " + std::to_string(code));
  }
  return static_cast<DType>(code);
}

const void* ptr_arg(const char* name, int64_t value, bool required) {
  if (value < 0) fail(std::string(name) + " must be a data pointer (>= 0), got " +
                      std::to_string(value));
  if (required && value == 0) fail(std::string(name) + " must not be 0 (a null pointer)");
  return reinterpret_cast<const void*>(static_cast<uintptr_t>(value));
}

void* out_arg(const char* name, int64_t value, bool required) {
  return const_cast<void*>(ptr_arg(name, value, required));
}

int threads_arg(int64_t threads) {
  if (threads < 1 || threads > 1 << 16) {
    fail("threads must be in 1..65536, got " + std::to_string(threads));
  }
  return static_cast<int>(threads);
}

void check_offset(int64_t offset) {
  if (offset < 0) fail("offset must be >= 0, got " + std::to_string(offset));
}

// The arguments shared by affine, affine_sum and affine_dots.
AffineProblem problem_arg(const std::vector<int64_t>& x_ptrs, const std::vector<int64_t>& x_dtypes,
                          int64_t n_inputs, int64_t coeffs_ptr, int64_t math_dtype,
                          int64_t mask_ptr, int64_t mask_inner, int64_t mask_period,
                          int64_t seed, int64_t seed_ptr, int64_t offset, bool bias,
                          int64_t numel, int64_t rows) {
  AffineProblem p;
  if (x_ptrs.size() != 3) {
    fail("x_ptrs must hold 3 pointers (0 for unused inputs), got " +
         std::to_string(x_ptrs.size()));
  }
  if (x_dtypes.size() != 3) {
    fail("x_dtypes must hold 3 dtype codes, got " + std::to_string(x_dtypes.size()));
  }
  if (n_inputs < 1 || n_inputs > 3) {
    fail("n_inputs must be 1, 2 or 3, got " + std::to_string(n_inputs));
  }
  if (numel < 0) fail("numel must be >= 0, got " + std::to_string(numel));
  if (rows < 1) fail("rows must be >= 1, got " + std::to_string(rows));
  if (numel % rows != 0) {
    fail("rows (" + std::to_string(rows) + ") must divide numel (" + std::to_string(numel) + ")");
  }
  if (seed < -1) {
    fail("seed must be -1 (no noise column) or in [0, 2**63), got " + std::to_string(seed));
  }
  check_offset(offset);
  p.numel = numel;
  p.rows = rows;
  p.n_inputs = static_cast<int>(n_inputs);
  static const char* const ptr_names[3] = {"x_ptrs[0]", "x_ptrs[1]", "x_ptrs[2]"};
  static const char* const dtype_names[3] = {"x_dtypes[0]", "x_dtypes[1]", "x_dtypes[2]"};
  for (int k = 0; k < p.n_inputs; ++k) {
    p.x[k] = ptr_arg(ptr_names[k], x_ptrs[k], numel > 0);
    p.x_dtype[k] = dtype_arg(dtype_names[k], x_dtypes[k]);
  }
  p.math = math_arg(math_dtype);
  p.coeffs = ptr_arg("coeffs_ptr", coeffs_ptr, true);
  p.mask.data = static_cast<const uint8_t*>(ptr_arg("mask_ptr", mask_ptr, false));
  if (p.mask.data != nullptr) {
    if (mask_inner < 1) fail("mask_inner must be >= 1, got " + std::to_string(mask_inner));
    if (mask_period < mask_inner) {
      fail("mask_period (" + std::to_string(mask_period) + ") must be >= mask_inner (" +
           std::to_string(mask_inner) + ")");
    }
    p.mask.inner = mask_inner;
    p.mask.period = mask_period;
  }
  p.has_noise = seed >= 0 || seed_ptr != 0;
  p.seed = seed >= 0 ? static_cast<uint64_t>(seed) : 0;
  p.seed_ptr = reinterpret_cast<const uint64_t*>(seed_ptr);
  p.offset = offset;
  p.has_bias = bias;
  return p;
}

// ------------------------------------------------------------ functions
void randn(int64_t out_ptr, int64_t out_dtype, int64_t numel, int64_t seed, int64_t seed_ptr,
           int64_t offset, int64_t threads) {
  if (numel < 0) fail("numel must be >= 0, got " + std::to_string(numel));
  if (seed < 0 && seed_ptr == 0) {
    fail("seed must be in [0, 2**63) (or seed_ptr given), got " + std::to_string(seed));
  }
  check_offset(offset);
  const DType dt = dtype_arg("out_dtype", out_dtype);
  void* out = out_arg("out_ptr", out_ptr, numel > 0);
  const int team = threads_arg(threads);
  ddm_fast::cpu::randn(out, dt, numel, seed >= 0 ? static_cast<uint64_t>(seed) : 0,
                       reinterpret_cast<const uint64_t*>(seed_ptr), offset, team);
}

void affine(const std::vector<int64_t>& x_ptrs, const std::vector<int64_t>& x_dtypes,
            int64_t n_inputs, int64_t coeffs_ptr, int64_t coeffs2_ptr, int64_t math_dtype,
            int64_t mask_ptr, int64_t mask_inner, int64_t mask_period, int64_t seed,
            int64_t seed_ptr, int64_t offset, bool bias, int64_t numel, int64_t rows, int64_t out_ptr,
            int64_t out2_ptr, int64_t out_dtype, int64_t threads) {
  const AffineProblem p = problem_arg(x_ptrs, x_dtypes, n_inputs, coeffs_ptr, math_dtype,
                                      mask_ptr, mask_inner, mask_period, seed, seed_ptr, offset, bias,
                                      numel, rows);
  const void* coeffs2 = ptr_arg("coeffs2_ptr", coeffs2_ptr, false);
  const DType dt = dtype_arg("out_dtype", out_dtype);
  void* out = out_arg("out_ptr", out_ptr, numel > 0);
  void* out2 = out_arg("out2_ptr", out2_ptr, coeffs2 != nullptr && numel > 0);
  const int team = threads_arg(threads);
  ddm_fast::cpu::affine(p, coeffs2, out, out2, dt, team);
}

void affine_sum(const std::vector<int64_t>& x_ptrs, const std::vector<int64_t>& x_dtypes,
                int64_t n_inputs, int64_t coeffs_ptr, int64_t math_dtype, int64_t mask_ptr,
                int64_t mask_inner, int64_t mask_period, int64_t seed, int64_t seed_ptr,
                int64_t offset, bool bias, int64_t numel, int64_t rows, int64_t power, int64_t out_ptr, int64_t threads) {
  const AffineProblem p = problem_arg(x_ptrs, x_dtypes, n_inputs, coeffs_ptr, math_dtype,
                                      mask_ptr, mask_inner, mask_period, seed, seed_ptr, offset, bias,
                                      numel, rows);
  if (power != 1 && power != 2) fail("power must be 1 or 2, got " + std::to_string(power));
  void* out = out_arg("out_ptr", out_ptr, true);
  const int team = threads_arg(threads);
  ddm_fast::cpu::affine_sum(p, static_cast<int>(power), out, team);
}

void affine_dots(const std::vector<int64_t>& x_ptrs, const std::vector<int64_t>& x_dtypes,
                 int64_t n_inputs, int64_t weight_ptr, int64_t weight_dtype, int64_t weight_kind,
                 int64_t coeffs_ptr, int64_t math_dtype, int64_t mask_ptr, int64_t mask_inner,
                 int64_t mask_period, int64_t seed, int64_t seed_ptr, int64_t offset, bool bias,
                 int64_t numel, int64_t rows, int64_t out_ptr, int64_t threads) {
  const AffineProblem p = problem_arg(x_ptrs, x_dtypes, n_inputs, coeffs_ptr, math_dtype,
                                      mask_ptr, mask_inner, mask_period, seed, seed_ptr, offset, bias,
                                      numel, rows);
  if (weight_kind < ddm_fast::kWeightOne || weight_kind > ddm_fast::kWeightCombination) {
    fail("weight_kind must be 0 (one), 1 (tensor) or 2 (combination), got " +
         std::to_string(weight_kind));
  }
  const auto kind = static_cast<ddm_fast::WeightKind>(weight_kind);
  const void* weight = nullptr;
  DType wdt = ddm_fast::kFloat32;
  if (kind == ddm_fast::kWeightTensor) {
    weight = ptr_arg("weight_ptr", weight_ptr, numel > 0);
    wdt = dtype_arg("weight_dtype", weight_dtype);
  }
  void* out = out_arg("out_ptr", out_ptr, true);
  const int team = threads_arg(threads);
  ddm_fast::cpu::affine_dots(p, weight, wdt, kind, out, team);
}

std::string simd_level() { return ddm_fast::cpu::simd_level(); }

bool set_simd_level(const std::string& level) {
  if (level != "auto" && level != "scalar" && level != "avx2" && level != "avx512") {
    fail("level must be 'auto', 'scalar', 'avx2' or 'avx512', got '" + level + "'");
  }
  return ddm_fast::cpu::set_simd_level(level.c_str());
}

py::dict build_info() {
  py::dict info;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  info["compiler"] = std::string("msvc ") + std::to_string(_MSC_VER);
#else
  info["compiler"] = std::string("unknown");
#endif
  info["flags"] = std::string(DDM_FAST_BUILD_FLAGS);
  py::list units;
  const std::string all = ddm_fast::cpu::simd_units();
  size_t start = 0;
  while (start <= all.size()) {
    const size_t comma = all.find(',', start);
    const size_t stop = comma == std::string::npos ? all.size() : comma;
    if (stop > start) units.append(all.substr(start, stop - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  info["simd_units"] = units;
  info["openmp"] = ddm_fast::cpu::openmp();
  info["api_version"] = ddm_fast::kApiVersion;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "ddm_fast's C++ (CPU) kernels on raw pointers: randn, affine, affine_sum, "
      "affine_dots (semantics: csrc/include/ddm_fast/kernels.h; caller: "
      "ddm_fast/backends/extension.py). Pointers are Python ints (0 for none), "
      "dtypes codes 0 float32, 1 float64, 2 bfloat16, 3 float16; seed -1 means "
      "no noise column unless seed_ptr != 0 (the seed then read from that "
      "uint64 word when the call runs).";
  m.attr("API_VERSION") = ddm_fast::kApiVersion;
  using release = py::call_guard<py::gil_scoped_release>;

  m.def("build_info", &build_info,
        "dict: compiler, flags, simd_units (compiled paths), openmp, api_version");
  m.def("simd_level", &simd_level, release(),
        "The SIMD path in use: 'avx512', 'avx2' or 'scalar'.");
  m.def("set_simd_level", &set_simd_level, py::arg("level"), release(),
        "Force a path ('scalar', 'avx2', 'avx512') or 'auto'; False when this "
        "CPU or build cannot run it. For tests.");
  m.def("randn", &randn, py::arg("out_ptr"), py::arg("out_dtype"), py::arg("numel"),
        py::arg("seed"), py::arg("seed_ptr"), py::arg("offset"), py::arg("threads"), release(),
        "out[i] = noise[offset + i] for i < numel.");
  m.def("affine", &affine, py::arg("x_ptrs"), py::arg("x_dtypes"), py::arg("n_inputs"),
        py::arg("coeffs_ptr"), py::arg("coeffs2_ptr"), py::arg("math_dtype"),
        py::arg("mask_ptr"), py::arg("mask_inner"), py::arg("mask_period"), py::arg("seed"),
        py::arg("seed_ptr"), py::arg("offset"), py::arg("bias"), py::arg("numel"), py::arg("rows"),
        py::arg("out_ptr"), py::arg("out2_ptr"), py::arg("out_dtype"), py::arg("threads"),
        release(),
        "Per-row affine combination of the inputs, the noise and a constant, "
        "masked; a second output from coeffs2 when coeffs2_ptr != 0.");
  m.def("affine_sum", &affine_sum, py::arg("x_ptrs"), py::arg("x_dtypes"),
        py::arg("n_inputs"), py::arg("coeffs_ptr"), py::arg("math_dtype"),
        py::arg("mask_ptr"), py::arg("mask_inner"), py::arg("mask_period"), py::arg("seed"),
        py::arg("seed_ptr"), py::arg("offset"), py::arg("bias"), py::arg("numel"), py::arg("rows"),
        py::arg("power"), py::arg("out_ptr"), py::arg("threads"), release(),
        "out[r] = sum over the valid elements of row r of v^power (deterministic).");
  m.def("affine_dots", &affine_dots, py::arg("x_ptrs"), py::arg("x_dtypes"),
        py::arg("n_inputs"), py::arg("weight_ptr"), py::arg("weight_dtype"),
        py::arg("weight_kind"), py::arg("coeffs_ptr"), py::arg("math_dtype"),
        py::arg("mask_ptr"), py::arg("mask_inner"), py::arg("mask_period"), py::arg("seed"),
        py::arg("seed_ptr"), py::arg("offset"), py::arg("bias"), py::arg("numel"), py::arg("rows"),
        py::arg("out_ptr"), py::arg("threads"), release(),
        "out[r, j] = sum over the valid elements of row r of w * column_j "
        "(deterministic); w = 1, the weight tensor or the combination.");
}
