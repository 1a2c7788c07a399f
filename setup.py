"""ddm_fast: fused kernels for denoising diffusion models on geophysical grids.

``pip install .`` installs the Python package, the Triton kernels (``kernels/``
as ``ddm_fast.kernels``) and builds two compiled modules from ``csrc/`` (see
``csrc/README.md``):

* ``ddm_fast._C``: the C++ (CPU) kernels, OpenMP, a portable engine plus
  AVX2 and AVX-512 engines compiled with their own flags and chosen at run
  time. Always attempted; if it cannot be built (no C++ compiler, ...) the
  install goes on with one warning and ddm_fast uses its reference backend,
  unless ``DDM_FAST_REQUIRE_EXTENSIONS=1``.
* ``ddm_fast._C_cuda``: the CUDA kernels, built whenever ``nvcc`` is found
  (``DDM_FAST_CUDA=0`` / ``1`` force it off / on; ``DDM_FAST_CUDA_ARCHS``,
  default "8.0;9.0", picks the architectures, plus PTX of the highest). It
  links the CUDA runtime statically, so it imports on machines without a
  GPU. A CUDA compile error fails the build.

Neither module links against torch (raw pointers cross the boundary), so one
build serves every torch version. The build configuration is recorded in
``ddm_fast/_build_config.json``.
"""
import concurrent.futures
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
INCLUDE_DIR = os.path.join("csrc", "include")

# The SIMD engines: compiled with their own target flags; the rest of the
# CPU sources use the portable baseline (no -march, so the module runs on any
# x86-64 CPU and picks its engine at run time).
SIMD_UNITS = {
    "avx2": (os.path.join("csrc", "cpu", "engine_avx2.cpp"), ["-mavx2", "-mfma"]),
    "avx512": (os.path.join("csrc", "cpu", "engine_avx512.cpp"),
               ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2",
                "-mfma"]),
}
CPU_SOURCES = sorted(
    path for path in glob.glob(os.path.join("csrc", "cpu", "*.cpp"))
    if path not in {source for source, _ in SIMD_UNITS.values()}
) + [os.path.join("csrc", "bindings", "cpu_module.cpp")]
HEADERS = sorted(glob.glob(os.path.join("csrc", "include", "ddm_fast", "*.h")))
# (the SIMD units are listed too, so that an sdist carries them)
CPU_DEPENDS = (sorted(glob.glob(os.path.join("csrc", "cpu", "*.h"))) + HEADERS
               + [source for source, _ in SIMD_UNITS.values()])
CUDA_DEPENDS = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))
                      + glob.glob(os.path.join("csrc", "cuda", "*.cuh"))) + HEADERS
CUDA_KERNELS = os.path.join("csrc", "cuda", "kernels.cu")
CUDA_BINDING = os.path.join("csrc", "bindings", "cuda_module.cpp")

# Baseline flags of every C++ unit (GCC / Clang). -ffp-contract=off: the
# combinations round exactly like the eager reference on every engine (the
# noise code uses explicit FMA intrinsics). Never -ffast-math: the noise must
# match the other backends within a few ulp.
BASE_FLAGS = ["-std=c++17", "-O3", "-g0", "-fvisibility=hidden", "-ffp-contract=off",
              "-Wno-psabi"]
OPENMP_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "-Xcompiler", "-fPIC", "-std=c++17", "--expt-relaxed-constexpr"]
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def _api_version() -> int:
    with open(os.path.join(ROOT, INCLUDE_DIR, "ddm_fast", "kernels.h"), encoding="utf-8") as f:
        match = re.search(r"kApiVersion\s*=\s*(\d+)", f.read())
    return int(match.group(1)) if match else 0


def _env(name):
    value = os.environ.get(name, "").strip()
    return value or None


def _note(message: str) -> None:
    print(f"ddm_fast setup: {message}", file=sys.stderr, flush=True)


def _x86() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64", "i386", "i686", "x86"}


def _tool_version(command) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ------------------------------------------------------------------ CUDA
def _find_nvcc():
    home = _env("CUDA_HOME") or _env("CUDA_PATH")
    candidates = []
    if home:
        candidates.append(os.path.join(home, "bin", "nvcc"))
    which = shutil.which("nvcc")
    if which:
        candidates.append(which)
    candidates.append("/usr/local/cuda/bin/nvcc")
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _cuda_home(nvcc: str) -> str:
    home = _env("CUDA_HOME") or _env("CUDA_PATH")
    if home:
        return home
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if os.path.isfile(os.path.join(guess, "include", "cuda_runtime.h")):
        return guess
    return "/usr/local/cuda"


def _cuda_lib_dir(home: str):
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                os.path.join("targets", "sbsa-linux", "lib")):
        path = os.path.join(home, sub)
        if os.path.isfile(os.path.join(path, "libcudart_static.a")):
            return path
    return os.path.join(home, "lib64")


def _cuda_archs(spec: str):
    """'8.0;9.0' (also '80,90', 'sm_90', '9.0a', '8.6+PTX') -> (gencode flags,
    arch names). PTX of the highest plain architecture is always added."""
    archs, ptx = [], set()
    for token in re.split(r"[;,\s]+", spec.strip()):
        if not token:
            continue
        with_ptx = token.upper().endswith("+PTX")
        token = token[:-4] if with_ptx else token
        token = token.lower().replace("sm_", "").replace("compute_", "").replace(".", "")
        if not re.fullmatch(r"\d{2,3}[af]?", token):
            raise ValueError(f"DDM_FAST_CUDA_ARCHS: cannot parse architecture {token!r} "
                             f"in {spec!r} (expected e.g. '8.0;9.0')")
        if token not in archs:
            archs.append(token)
        if with_ptx:
            ptx.add(token)
    if not archs:
        raise ValueError(f"DDM_FAST_CUDA_ARCHS={spec!r} names no architecture")
    plain = [a for a in archs if a.isdigit()]
    if plain:
        ptx.add(max(plain, key=int))
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    for arch in sorted(ptx):
        flags += ["-gencode", f"arch=compute_{arch},code=compute_{arch}"]
    return flags, archs


class BuildExt(build_ext):
    """Compiles every object in parallel (per-unit flags for the SIMD engines
    and nvcc for the CUDA kernels), then links each module through
    setuptools. Writes ddm_fast/_build_config.json."""

    def run(self):
        self._config = {"api_version": _api_version(),
                        "cpu": {"built": False}, "cuda": {"built": False}}
        self._skipped = []
        super().run()
        self._write_config()
        if self.inplace or getattr(self, "editable_mode", False):
            self._remove_stale_inplace()

    def _remove_stale_inplace(self):
        """An editable install that skips a module removes the copy an
        earlier build left next to the sources (it would import with a
        possibly stale API)."""
        build_py = self.get_finalized_command("build_py")
        package_dir = os.path.abspath(build_py.get_package_dir("ddm_fast"))
        for name in self._skipped:
            path = os.path.join(package_dir, os.path.basename(self.get_ext_filename(name)))
            if os.path.isfile(path):
                _note(f"removing the stale {os.path.basename(path)} of an earlier build")
                os.remove(path)

    # -------------------------------------------------------- helpers
    def _jobs(self) -> int:
        jobs = _env("MAX_JOBS")
        if jobs and jobs.isdigit():
            return max(1, int(jobs))
        return max(1, os.cpu_count() or 1)

    def _compile(self, source, flags, macros=(), include_dirs=()):
        objects = self.compiler.compile(
            [source], output_dir=self.build_temp, macros=list(macros),
            include_dirs=[INCLUDE_DIR, *include_dirs], extra_postargs=list(flags),
            debug=self.debug)
        return objects[0]

    def _link(self, ext, objects, extra_link_args=(), libraries=(), library_dirs=()):
        """Links through setuptools (it names the file and handles the
        in-place copy): the objects go in as extra_objects, in order."""
        saved = (ext.sources, ext.extra_objects, ext.extra_link_args,
                 ext.libraries, ext.library_dirs)
        ext.sources = []
        ext.extra_objects = list(objects)
        ext.extra_link_args = list(extra_link_args)
        ext.libraries = list(libraries)
        ext.library_dirs = list(library_dirs)
        try:
            super().build_extension(ext)
        finally:
            (ext.sources, ext.extra_objects, ext.extra_link_args,
             ext.libraries, ext.library_dirs) = saved

    def _try_compile(self, code: str, flags, link_flags=()) -> bool:
        """Whether a small program compiles and links with these flags."""
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe.cpp")
            with open(source, "w", encoding="utf-8") as f:
                f.write(code)
            try:
                objects = self.compiler.compile([source], output_dir=tmp,
                                                extra_postargs=list(flags))
                self.compiler.link_shared_object(
                    objects, os.path.join(tmp, "probe.so"),
                    extra_postargs=list(link_flags), target_lang="c++")
                return True
            except Exception:  # noqa: BLE001 - any failure means "no"
                return False

    # -------------------------------------------------------- build
    def build_extensions(self):
        by_name = {ext.name: ext for ext in self.extensions}
        cpu_ext = by_name.get("ddm_fast._C")
        cuda_ext = by_name.get("ddm_fast._C_cuda")
        with concurrent.futures.ThreadPoolExecutor(self._jobs()) as pool:
            # nvcc first: it is the longest job, the CPU objects fill the rest
            cuda_plan = self._start_cuda(cuda_ext, pool) if cuda_ext else None
            if cpu_ext is not None and not self._build_cpu(cpu_ext, pool):
                self.extensions.remove(cpu_ext)  # nothing to copy or install
                self._skipped.append(cpu_ext.name)
            if cuda_plan is not None:
                self._finish_cuda(cuda_ext, cuda_plan)
            elif cuda_ext is not None:
                self.extensions.remove(cuda_ext)
                self._skipped.append(cuda_ext.name)
        others = [ext for ext in self.extensions if ext not in (cpu_ext, cuda_ext)]
        for ext in others:
            self.build_extension(ext)

    def _build_cpu(self, ext, pool):
        info = self._config["cpu"]
        try:
            self._build_cpu_unchecked(ext, pool, info)
            info["built"] = True
            return True
        except Exception as exc:  # noqa: BLE001 - any failure: fall back
            info.update(built=False, error=f"{type(exc).__name__}: {exc}")
            if _env("DDM_FAST_REQUIRE_EXTENSIONS") == "1":
                raise
            _note(f"WARNING: the C++ extension ddm_fast._C could not be built "
                  f"({type(exc).__name__}: {exc}); ddm_fast is installed without "
                  f"it and uses its reference backend on CPU. Install a C++ "
                  f"compiler (g++ >= 9) and reinstall for the fast kernels.")
            return False

    def _build_cpu_unchecked(self, ext, pool, info):
        import pybind11

        msvc = self.compiler.compiler_type == "msvc"
        base = ["/O2", "/std:c++17", "/EHsc"] if msvc else list(BASE_FLAGS)
        openmp = ["/openmp"] if msvc else list(OPENMP_FLAGS)
        if not self._try_compile("int f() { return 1; }\n", base):
            raise RuntimeError(f"no working C++17 compiler "
                               f"({' '.join(self.compiler.compiler_cxx or ['?'])})")
        if not self._try_compile("#include <omp.h>\nint f() { return omp_get_max_threads(); }\n",
                                 base + openmp, openmp):
            _note("OpenMP is not available with this compiler: the CPU kernels "
                  "run on the calling thread only")
            openmp = []
        units = {}
        if _x86() and not msvc:
            units = {name: (source, flags) for name, (source, flags) in SIMD_UNITS.items()
                     if os.path.isfile(source)}
        includes = [pybind11.get_include(), sysconfig.get_paths()["include"]]
        base_cpp = base + openmp
        flags_text = " ".join(base_cpp)
        unit_macros = [(f"DDM_FAST_HAVE_{name.upper()}", "1") for name in units]
        build_macros = [("DDM_FAST_BUILD_FLAGS", json.dumps(flags_text))]

        simd_futures = {name: pool.submit(self._compile, source, base + flags)
                        for name, (source, flags) in units.items()}
        base_futures = {
            source: pool.submit(self._compile, source, base_cpp,
                                unit_macros + build_macros, includes)
            for source in CPU_SOURCES}
        base_objects = [base_futures[source].result() for source in CPU_SOURCES]
        compiled = ["scalar"]
        simd_objects = []
        for name, future in simd_futures.items():
            try:
                simd_objects.append(future.result())
                compiled.append(name)
            except Exception as exc:  # noqa: BLE001 - an optional engine
                _note(f"the {name} engine does not compile with this compiler "
                      f"({exc}); building without it")
        if len(compiled) != len(units) + 1:
            # the driver was told about every engine: recompile it for those built
            driver = os.path.join("csrc", "cpu", "kernels_cpu.cpp")
            macros = [(f"DDM_FAST_HAVE_{name.upper()}", "1") for name in compiled[1:]]
            index = CPU_SOURCES.index(driver)
            base_objects[index] = self._compile(driver, base_cpp, macros + build_macros,
                                                includes)
        # The baseline objects come first: an inline function both kinds of
        # unit emit (std::min, the helpers of elementwise.h) is kept from the
        # first object that has it, so the portable path never runs AVX code.
        self._link(ext, base_objects + simd_objects, extra_link_args=openmp)
        info.update(
            compiler=(self.compiler.compiler_cxx or ["unknown"])[0],
            compiler_version=_tool_version([(self.compiler.compiler_cxx or ["c++"])[0],
                                            "--version"]),
            flags={"base": base_cpp,
                   **{name: base + units[name][1] for name in compiled[1:]},
                   "link": openmp},
            simd_units=compiled, openmp=bool(openmp), error=None)

    # -------------------------------------------------------- CUDA
    def _start_cuda(self, ext, pool):
        info = self._config["cuda"]
        mode = _env("DDM_FAST_CUDA")
        info.update(cuda_version=None, archs=None)
        if mode == "0":
            info["reason"] = "disabled by DDM_FAST_CUDA=0"
            return None
        nvcc = _find_nvcc()
        if nvcc is None:
            if mode == "1":
                raise RuntimeError("DDM_FAST_CUDA=1 but nvcc was not found "
                                   "(set CUDA_HOME or put nvcc on PATH)")
            info["reason"] = "nvcc not found"
            _note("nvcc not found: building without the CUDA extension ddm_fast._C_cuda")
            return None
        missing = [path for path in (CUDA_KERNELS, CUDA_BINDING) if not os.path.isfile(path)]
        if missing:
            if mode == "1":
                raise RuntimeError(f"DDM_FAST_CUDA=1 but the CUDA sources are missing: "
                                   f"{', '.join(missing)}")
            info["reason"] = f"sources missing: {', '.join(missing)}"
            _note(f"the CUDA sources {', '.join(missing)} are missing: building "
                  f"without ddm_fast._C_cuda")
            return None
        import pybind11

        home = _cuda_home(nvcc)
        version_text = subprocess.run([nvcc, "--version"], capture_output=True,
                                      text=True).stdout
        match = re.search(r"release (\d+\.\d+)", version_text)
        version = next((line.strip() for line in version_text.splitlines()
                        if "release" in line), "unknown")
        gencode, archs = _cuda_archs(_env("DDM_FAST_CUDA_ARCHS") or DEFAULT_CUDA_ARCHS)
        nvcc_flags = NVCC_FLAGS + gencode
        host = _env("CUDAHOSTCXX")
        if host:
            nvcc_flags += ["-ccbin", host]
        os.makedirs(os.path.join(self.build_temp, "csrc", "cuda"), exist_ok=True)
        kernels_obj = os.path.join(self.build_temp, "csrc", "cuda", "kernels.o")
        command = ([nvcc, "-c", CUDA_KERNELS, "-o", kernels_obj, "-I", INCLUDE_DIR]
                   + nvcc_flags)

        def run_nvcc():
            _note(" ".join(command))
            result = subprocess.run(command)
            if result.returncode != 0:
                raise RuntimeError(f"nvcc failed (exit {result.returncode}) on "
                                   f"{CUDA_KERNELS}; set DDM_FAST_CUDA=0 to build "
                                   f"without the CUDA extension")
            return kernels_obj

        flags = list(BASE_FLAGS)
        macros = [("DDM_FAST_BUILD_FLAGS", json.dumps(" ".join(nvcc_flags))),
                  ("DDM_FAST_CUDA_ARCHS", json.dumps(";".join(archs)))]
        includes = [pybind11.get_include(), sysconfig.get_paths()["include"],
                    os.path.join(home, "include")]
        info.update(nvcc=nvcc, nvcc_version=version, cuda_home=home,
                    cuda_version=match.group(1) if match else None, archs=archs,
                    flags={"nvcc": nvcc_flags, "binding": flags,
                           "link": ["-lcudart_static", "-ldl", "-lrt", "-lpthread"]})
        return {
            "kernels": pool.submit(run_nvcc),
            "binding": pool.submit(self._compile, CUDA_BINDING, flags, macros, includes),
            "lib_dir": _cuda_lib_dir(home),
        }

    def _finish_cuda(self, ext, plan):
        objects = [plan["kernels"].result(), plan["binding"].result()]
        self._link(ext, objects, libraries=["cudart_static", "dl", "rt", "pthread"],
                   library_dirs=[plan["lib_dir"]])
        self._config["cuda"]["built"] = True
        self._config["cuda"].pop("reason", None)

    # -------------------------------------------------------- record
    def _write_config(self):
        text = json.dumps(self._config, indent=2, sort_keys=True) + "\n"
        targets = [os.path.join(self.build_lib, "ddm_fast")]
        if self.inplace or getattr(self, "editable_mode", False):
            build_py = self.get_finalized_command("build_py")
            targets.append(os.path.abspath(build_py.get_package_dir("ddm_fast")))
        for directory in targets:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, "_build_config.json"), "w",
                      encoding="utf-8") as f:
                f.write(text)


setup(
    name="ddm_fast",
    version="0.1.0",
    description="Fused kernels for denoising diffusion models on geophysical grids",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ (the Triton kernels) installs as the subpackage ddm_fast.kernels;
    # benchmarks/ installs too, so `python -m benchmarks` runs from any directory
    packages=find_packages(include=["ddm_fast", "ddm_fast.*", "benchmarks"])
    + ["ddm_fast.kernels"],
    package_dir={"ddm_fast.kernels": "kernels"},
    ext_modules=[
        Extension("ddm_fast._C", sources=CPU_SOURCES, depends=CPU_DEPENDS,
                  language="c++"),
        Extension("ddm_fast._C_cuda", sources=[CUDA_BINDING], depends=CUDA_DEPENDS,
                  language="c++"),
    ],
    cmdclass={"build_ext": BuildExt},
    install_requires=[
        "torch>=2.6",
        "numpy",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "triton": ["triton>=3.5"],
        "lightning": ["lightning>=2.2"],
        "ensemble": ["xarray>=2024.1", "netCDF4", "zarr>=2.16"],
        "bench": ["diffusers", "k-diffusion"],
        "test": ["pytest", "pytest-benchmark", "scipy", "triton>=3.5",
                 "lightning>=2.2", "xarray>=2024.1", "netCDF4", "zarr>=2.16"],
    },
)
