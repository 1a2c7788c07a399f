// ddm_fast._C_cuda: the CUDA kernels of csrc/cuda/kernels.cu behind a
// framework-free pybind11 interface. Tensors cross as integers (device
// pointers, dtype codes, a cudaStream_t as an int); no torch header is
// included or linked, so one build serves every torch version. The Python
// side (ddm_fast/backends) checks the tensors; this module checks every
// argument again and raises ValueError naming the bad one, so a wrong call
// cannot crash the process. The GIL is released while kernels are launched.
//
// Compiled by the host compiler with the CUDA include directory, linked with
// the nvcc-compiled kernels and cudart_static.
#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "ddm_fast/kernels.h"

// The architectures the kernels were compiled for, as a string literal
// ("80;90"), defined by the build: DDM_FAST_CUDA_ARCHS_STR, or
// DDM_FAST_CUDA_ARCHS (the name setup.py uses); "unknown" otherwise.
#if !defined(DDM_FAST_CUDA_ARCHS_STR)
#if defined(DDM_FAST_CUDA_ARCHS)
#define DDM_FAST_CUDA_ARCHS_STR DDM_FAST_CUDA_ARCHS
#else
#define DDM_FAST_CUDA_ARCHS_STR "unknown"
#endif
#endif

namespace py = pybind11;

namespace {

using ddm_fast::AffineProblem;
using ddm_fast::DType;

[[noreturn]] void fail(const std::string& message) { throw py::value_error(message); }

std::string type_name(py::handle h) { return std::string(Py_TYPE(h.ptr())->tp_name); }

// An int argument (anything with __index__ except bool) in [lo, hi].
int64_t as_int(py::handle h, const char* name, int64_t lo = std::numeric_limits<int64_t>::min(),
               int64_t hi = std::numeric_limits<int64_t>::max()) {
  if (PyBool_Check(h.ptr())) fail(std::string(name) + " must be an int, got bool");
  PyObject* index = PyNumber_Index(h.ptr());
  if (index == nullptr) {
    PyErr_Clear();
    fail(std::string(name) + " must be an int, got " + type_name(h));
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index, &overflow);
  Py_DECREF(index);
  if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    fail(std::string(name) + " is out of the int64 range");
  }
  if (v < lo || v > hi) {
    std::ostringstream msg;
    msg << name << " must lie in [" << lo << ", " << hi << "], got " << v;
    fail(msg.str());
  }
  return static_cast<int64_t>(v);
}

// A device pointer or stream handle: an int in [0, 2^64).
uint64_t as_address(py::handle h, const char* name) {
  if (PyBool_Check(h.ptr())) fail(std::string(name) + " must be an int address, got bool");
  PyObject* index = PyNumber_Index(h.ptr());
  if (index == nullptr) {
    PyErr_Clear();
    fail(std::string(name) + " must be an int address, got " + type_name(h));
  }
  const unsigned long long v = PyLong_AsUnsignedLongLong(index);
  Py_DECREF(index);
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    fail(std::string(name) + " must be an int in [0, 2**64)");
  }
  return static_cast<uint64_t>(v);
}

bool as_flag(py::handle h, const char* name) {
  if (PyBool_Check(h.ptr())) return h.ptr() == Py_True;
  return as_int(h, name, 0, 1) != 0;
}

int element_size(DType d) {
  switch (d) {
    case ddm_fast::kFloat64:
      return 8;
    case ddm_fast::kBFloat16:
    case ddm_fast::kFloat16:
      return 2;
    default:
      return 4;
  }
}

DType as_dtype(py::handle h, const char* name) {
  return static_cast<DType>(as_int(h, name, 0, 3));  // 0 f32, 1 f64, 2 bf16, 3 f16
}

DType as_math_dtype(py::handle h, const char* name) {
  return static_cast<DType>(as_int(h, name, 0, 1));  // float32 or float64
}

// A device pointer that the kernels dereference (numel > 0): non-null and
// aligned to its element size (a misaligned access would fault the device).
const void* as_data_ptr(py::handle h, const char* name, int align, bool required) {
  const uint64_t v = as_address(h, name);
  if (required && v == 0) fail(std::string(name) + " must not be null (0)");
  if (v % static_cast<uint64_t>(align) != 0) {
    fail(std::string(name) + " is not aligned to its element size (" + std::to_string(align) +
         " bytes)");
  }
  return reinterpret_cast<const void*>(static_cast<uintptr_t>(v));
}

int cuda_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

int as_device(py::handle h) {
  const int64_t device = as_int(h, "device", 0, std::numeric_limits<int>::max());
  int count = 0;
  {
    py::gil_scoped_release release;
    count = cuda_device_count();
  }
  if (device >= count) {
    fail("device " + std::to_string(device) + " is not a visible CUDA device (" +
         std::to_string(count) + " visible)");
  }
  return static_cast<int>(device);
}

void* as_stream(py::handle h) {
  return reinterpret_cast<void*>(static_cast<uintptr_t>(as_address(h, "stream")));
}

// The 3-sequence argument `name` (x_ptrs or x_dtypes).
std::vector<py::object> triple(py::handle h, const char* name) {
  if (!PyTuple_Check(h.ptr()) && !PyList_Check(h.ptr()))
    fail(std::string(name) + " must be a tuple of 3 ints, got " + type_name(h));
  py::sequence seq = py::reinterpret_borrow<py::sequence>(h);
  if (seq.size() != 3)
    fail(std::string(name) + " must hold exactly 3 entries, got " + std::to_string(seq.size()));
  return {seq[0], seq[1], seq[2]};  // new references
}

// The arguments shared by affine, affine_sum and affine_dots.
AffineProblem problem(py::handle x_ptrs, py::handle x_dtypes, py::handle n_inputs,
                      py::handle coeffs_ptr, bool coeffs_required, py::handle math_dtype,
                      py::handle mask_ptr, py::handle mask_inner, py::handle mask_period,
                      py::handle seed, py::handle seed_ptr, py::handle offset, py::handle bias,
                      py::handle numel, py::handle rows) {
  AffineProblem p;
  p.numel = as_int(numel, "numel", 0);
  p.rows = as_int(rows, "rows", 1);
  if (p.numel % p.rows != 0) {
    fail("rows (" + std::to_string(p.rows) + ") must divide numel (" + std::to_string(p.numel) +
         ")");
  }
  p.n_inputs = static_cast<int>(as_int(n_inputs, "n_inputs", 1, 3));
  p.math = as_math_dtype(math_dtype, "math_dtype");
  const int64_t s = as_int(seed, "seed", -1);
  p.seed_ptr = static_cast<const uint64_t*>(as_data_ptr(seed_ptr, "seed_ptr", 8, false));
  p.has_noise = s >= 0 || p.seed_ptr != nullptr;
  p.seed = s >= 0 ? static_cast<uint64_t>(s) : 0;
  p.offset = as_int(offset, "offset", 0);
  if (p.offset > std::numeric_limits<int64_t>::max() - p.numel)
    fail("offset + numel must stay below 2**63");
  p.has_bias = as_flag(bias, "bias");
  const bool live = p.numel > 0;  // pointers are dereferenced

  const std::vector<py::object> ptrs = triple(x_ptrs, "x_ptrs");
  const std::vector<py::object> dtypes = triple(x_dtypes, "x_dtypes");
  static const char* kPtrNames[3] = {"x_ptrs[0]", "x_ptrs[1]", "x_ptrs[2]"};
  static const char* kDtypeNames[3] = {"x_dtypes[0]", "x_dtypes[1]", "x_dtypes[2]"};
  for (int k = 0; k < 3; ++k) {
    if (k < p.n_inputs) {
      p.x_dtype[k] = as_dtype(dtypes[k], kDtypeNames[k]);
      p.x[k] = as_data_ptr(ptrs[k], kPtrNames[k], element_size(p.x_dtype[k]), live);
    } else {
      p.x[k] = nullptr;  // unused entries are ignored
      p.x_dtype[k] = ddm_fast::kFloat32;
    }
  }
  p.coeffs = as_data_ptr(coeffs_ptr, "coeffs_ptr", element_size(p.math), live && coeffs_required);

  const uint64_t mask = as_address(mask_ptr, "mask_ptr");
  if (mask != 0) {
    p.mask.data = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(mask));
    p.mask.inner = as_int(mask_inner, "mask_inner", 1);
    p.mask.period = as_int(mask_period, "mask_period", 1);
    if (p.mask.period % p.mask.inner != 0)
      fail("mask_inner (" + std::to_string(p.mask.inner) + ") must divide mask_period (" +
           std::to_string(p.mask.period) + ")");
    if (p.numel % p.mask.period != 0)
      fail("mask_period (" + std::to_string(p.mask.period) + ") must divide numel (" +
           std::to_string(p.numel) + ")");
  }
  return p;
}

// ------------------------------------------------------------ functions
py::dict build_info() {
  py::dict info;
  std::ostringstream version;
  version << CUDART_VERSION / 1000 << "." << (CUDART_VERSION % 1000) / 10;
  info["cuda_version"] = version.str();
  py::list archs;
  std::string token;
  for (const char* c = DDM_FAST_CUDA_ARCHS_STR;; ++c) {
    if (*c == '\0' || *c == ';' || *c == ',' || *c == ' ') {
      if (!token.empty()) archs.append(token);
      token.clear();
      if (*c == '\0') break;
    } else {
      token.push_back(*c);
    }
  }
  info["archs"] = archs;
  info["api_version"] = ddm_fast::kApiVersion;
#if defined(DDM_FAST_BUILD_FLAGS)
  info["build_flags"] = std::string(DDM_FAST_BUILD_FLAGS);  // nvcc flags, if the build says
#endif
  return info;
}

int device_count() {
  py::gil_scoped_release release;
  return cuda_device_count();
}

void randn(py::handle out_ptr, py::handle out_dtype, py::handle numel, py::handle seed,
           py::handle seed_ptr, py::handle offset, py::handle device, py::handle stream) {
  const DType dtype = as_dtype(out_dtype, "out_dtype");
  const int64_t n = as_int(numel, "numel", 0);
  const auto* sp = static_cast<const uint64_t*>(as_data_ptr(seed_ptr, "seed_ptr", 8, false));
  const int64_t s = as_int(seed, "seed", sp != nullptr ? -1 : 0);
  const int64_t off = as_int(offset, "offset", 0);
  if (off > std::numeric_limits<int64_t>::max() - n) fail("offset + numel must stay below 2**63");
  void* out = const_cast<void*>(as_data_ptr(out_ptr, "out_ptr", element_size(dtype), n > 0));
  const int dev = as_device(device);
  void* st = as_stream(stream);
  py::gil_scoped_release release;
  ddm_fast::cuda::randn(out, dtype, n, s >= 0 ? static_cast<uint64_t>(s) : 0, sp, off, dev, st);
}

void affine(py::handle x_ptrs, py::handle x_dtypes, py::handle n_inputs, py::handle coeffs_ptr,
            py::handle coeffs2_ptr, py::handle math_dtype, py::handle mask_ptr,
            py::handle mask_inner, py::handle mask_period, py::handle seed, py::handle seed_ptr,
            py::handle offset, py::handle bias, py::handle numel, py::handle rows, py::handle out_ptr,
            py::handle out2_ptr, py::handle out_dtype, py::handle device, py::handle stream) {
  const AffineProblem p = problem(x_ptrs, x_dtypes, n_inputs, coeffs_ptr, true, math_dtype,
                                  mask_ptr, mask_inner, mask_period, seed, seed_ptr, offset, bias, numel,
                                  rows);
  const bool live = p.numel > 0;
  const DType dtype = as_dtype(out_dtype, "out_dtype");
  const void* coeffs2 = as_data_ptr(coeffs2_ptr, "coeffs2_ptr", element_size(p.math), false);
  void* out = const_cast<void*>(as_data_ptr(out_ptr, "out_ptr", element_size(dtype), live));
  void* out2 = const_cast<void*>(
      as_data_ptr(out2_ptr, "out2_ptr", element_size(dtype), live && coeffs2 != nullptr));
  const int dev = as_device(device);
  void* st = as_stream(stream);
  py::gil_scoped_release release;
  ddm_fast::cuda::affine(p, coeffs2, out, coeffs2 != nullptr ? out2 : nullptr, dtype, dev, st);
}

int64_t reduction_workspace_bytes(py::handle n_inputs, py::handle seed, py::handle bias,
                                  py::handle numel, py::handle rows, py::handle result_cols) {
  AffineProblem p;
  p.n_inputs = static_cast<int>(as_int(n_inputs, "n_inputs", 1, 3));
  p.has_noise = as_int(seed, "seed", -1) >= 0;
  p.has_bias = as_flag(bias, "bias");
  p.numel = as_int(numel, "numel", 0);
  p.rows = as_int(rows, "rows", 1);
  if (p.numel % p.rows != 0) {
    fail("rows (" + std::to_string(p.rows) + ") must divide numel (" + std::to_string(p.numel) +
         ")");
  }
  const int cols = static_cast<int>(as_int(result_cols, "result_cols", 1, p.n_cols()));
  return ddm_fast::cuda::reduction_workspace_bytes(p, cols);
}

void* workspace_arg(py::handle workspace_ptr, const AffineProblem& p, int cols) {
  const int64_t bytes = ddm_fast::cuda::reduction_workspace_bytes(p, cols);
  return const_cast<void*>(as_data_ptr(workspace_ptr, "workspace_ptr", 8, bytes > 0));
}

void affine_sum(py::handle x_ptrs, py::handle x_dtypes, py::handle n_inputs,
                py::handle coeffs_ptr, py::handle math_dtype, py::handle mask_ptr,
                py::handle mask_inner, py::handle mask_period, py::handle seed,
                py::handle seed_ptr, py::handle offset, py::handle bias, py::handle numel,
                py::handle rows, py::handle power, py::handle out_ptr, py::handle workspace_ptr,
                py::handle device, py::handle stream) {
  const AffineProblem p = problem(x_ptrs, x_dtypes, n_inputs, coeffs_ptr, true, math_dtype,
                                  mask_ptr, mask_inner, mask_period, seed, seed_ptr, offset, bias, numel,
                                  rows);
  const int pw = static_cast<int>(as_int(power, "power", 1, 2));
  // out: (rows,) in the math dtype, written even for numel == 0
  void* out = const_cast<void*>(as_data_ptr(out_ptr, "out_ptr", element_size(p.math), true));
  void* workspace = workspace_arg(workspace_ptr, p, 1);
  const int dev = as_device(device);
  void* st = as_stream(stream);
  py::gil_scoped_release release;
  ddm_fast::cuda::affine_sum(p, pw, out, workspace, dev, st);
}

void affine_dots(py::handle x_ptrs, py::handle x_dtypes, py::handle n_inputs,
                 py::handle weight_ptr, py::handle weight_dtype, py::handle weight_kind,
                 py::handle coeffs_ptr, py::handle math_dtype, py::handle mask_ptr,
                 py::handle mask_inner, py::handle mask_period, py::handle seed,
                 py::handle seed_ptr, py::handle offset, py::handle bias, py::handle numel,
                 py::handle rows, py::handle out_ptr, py::handle workspace_ptr, py::handle device,
                 py::handle stream) {
  const int kind = static_cast<int>(as_int(weight_kind, "weight_kind", 0, 2));
  const AffineProblem p =
      problem(x_ptrs, x_dtypes, n_inputs, coeffs_ptr, kind == ddm_fast::kWeightCombination,
              math_dtype, mask_ptr, mask_inner, mask_period, seed, seed_ptr, offset, bias, numel, rows);
  const void* weight = nullptr;
  DType wdtype = ddm_fast::kFloat32;
  if (kind == ddm_fast::kWeightTensor) {
    wdtype = as_dtype(weight_dtype, "weight_dtype");
    weight = as_data_ptr(weight_ptr, "weight_ptr", element_size(wdtype), p.numel > 0);
  }
  // out: (rows, n_cols) in the math dtype, written even for numel == 0
  void* out = const_cast<void*>(as_data_ptr(out_ptr, "out_ptr", element_size(p.math), true));
  void* workspace = workspace_arg(workspace_ptr, p, p.n_cols());
  const int dev = as_device(device);
  void* st = as_stream(stream);
  py::gil_scoped_release release;
  ddm_fast::cuda::affine_dots(p, weight, wdtype, static_cast<ddm_fast::WeightKind>(kind), out,
                              workspace, dev, st);
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() =
      "ddm_fast CUDA kernels (framework-free): device pointers, dtype codes "
      "(0 float32, 1 float64, 2 bfloat16, 3 float16) and a cudaStream_t, all "
      "as Python ints. seed = -1: no noise column, unless seed_ptr != 0 (the "
      "seed then read on the device from that uint64 word when the kernel runs: "
      "graph replays see its current value). Launches are asynchronous "
      "on `stream`.";
  m.attr("API_VERSION") = ddm_fast::kApiVersion;
  m.def("build_info", &build_info,
        "{'cuda_version': 'X.Y' (CUDART_VERSION of the build), 'archs': [...], "
        "'api_version': int} (+ 'build_flags' when the build defines them)");
  m.def("device_count", &device_count,
        "Number of visible CUDA devices; 0 when there is no driver or device (never raises).");
  m.def("randn", &randn, "out[i] = noise[offset + i] for i < numel.", py::arg("out_ptr"),
        py::arg("out_dtype"), py::arg("numel"), py::arg("seed"), py::arg("seed_ptr"), py::arg("offset"),
        py::arg("device"), py::arg("stream"));
  m.def("affine", &affine,
        "Per-row affine combination (and a second one from coeffs2_ptr unless 0), masked.",
        py::arg("x_ptrs"), py::arg("x_dtypes"), py::arg("n_inputs"), py::arg("coeffs_ptr"),
        py::arg("coeffs2_ptr"), py::arg("math_dtype"), py::arg("mask_ptr"),
        py::arg("mask_inner"), py::arg("mask_period"), py::arg("seed"), py::arg("seed_ptr"), py::arg("offset"),
        py::arg("bias"), py::arg("numel"), py::arg("rows"), py::arg("out_ptr"),
        py::arg("out2_ptr"), py::arg("out_dtype"), py::arg("device"), py::arg("stream"));
  m.def("reduction_workspace_bytes", &reduction_workspace_bytes,
        "Bytes of device scratch affine_sum (result_cols 1) / affine_dots (result_cols = "
        "n_cols) need; a function of (numel, rows, result_cols) only.",
        py::arg("n_inputs"), py::arg("seed"), py::arg("bias"), py::arg("numel"), py::arg("rows"),
        py::arg("result_cols"));
  m.def("affine_sum", &affine_sum,
        "out[r] = sum over valid elements of row r of (combination)**power, in the math "
        "dtype; deterministic.",
        py::arg("x_ptrs"), py::arg("x_dtypes"), py::arg("n_inputs"), py::arg("coeffs_ptr"),
        py::arg("math_dtype"), py::arg("mask_ptr"), py::arg("mask_inner"),
        py::arg("mask_period"), py::arg("seed"), py::arg("seed_ptr"), py::arg("offset"), py::arg("bias"),
        py::arg("numel"), py::arg("rows"), py::arg("power"), py::arg("out_ptr"),
        py::arg("workspace_ptr"), py::arg("device"), py::arg("stream"));
  m.def("affine_dots", &affine_dots,
        "out[r, j] = sum over valid elements of row r of w * column_j, columns (inputs, "
        "noise, 1), w = 1 (weight_kind 0), the weight tensor (1) or the combination (2); "
        "in the math dtype; deterministic.",
        py::arg("x_ptrs"), py::arg("x_dtypes"), py::arg("n_inputs"), py::arg("weight_ptr"),
        py::arg("weight_dtype"), py::arg("weight_kind"), py::arg("coeffs_ptr"),
        py::arg("math_dtype"), py::arg("mask_ptr"), py::arg("mask_inner"),
        py::arg("mask_period"), py::arg("seed"), py::arg("seed_ptr"), py::arg("offset"), py::arg("bias"),
        py::arg("numel"), py::arg("rows"), py::arg("out_ptr"), py::arg("workspace_ptr"),
        py::arg("device"), py::arg("stream"));
}
