// FastDiv: division by a run-time constant through a multiply-high, for the
// CUDA kernels' row and mask index arithmetic. Header-only; compiles as
// CUDA (nvcc) and as plain C++ (g++, for the host check).
#pragma once

#include <cstdint>
#include <type_traits>

#include "ddm_fast/elementwise.h"  // DDM_HD

namespace ddm_fast {
namespace cuda {

// n / d for 0 <= n, 1 <= d < 2^bits(I), by a multiply-high (Granlund and
// Montgomery 1994, fig. 4.1): l = ceil(log2 d), m = floor(2^N (2^l - d) / d)
// + 1, t = mulhi(m, n), q = (t + ((n - t) >> min(l, 1))) >> max(l - 1, 0).
// The int64 path would otherwise call the (register-hungry) 64-bit division
// routine once per chunk. Built on the host; div() runs on both sides
// (csrc/cuda/tests/host_check.cpp checks it against `/`).
template <typename I>
struct FastDiv {
  using U = typename std::conditional<sizeof(I) == 8, uint64_t, uint32_t>::type;
  U d = 1;
  U m = 1;
  int s1 = 0;
  int s2 = 0;

  FastDiv() = default;
  explicit FastDiv(int64_t divisor) {
    d = static_cast<U>(divisor);
    int l = 0;
    while (l < static_cast<int>(8 * sizeof(U)) && (U{1} << l) < d) ++l;
    // 2^N (2^l - d) / d < 2^N: m fits in U
    using W = typename std::conditional<sizeof(I) == 8, unsigned __int128, uint64_t>::type;
    const W two_l = W{1} << l;
    m = static_cast<U>(((W{1} << (8 * sizeof(U))) * (two_l - d)) / d + 1);
    s1 = l < 1 ? l : 1;
    s2 = l > 1 ? l - 1 : 0;
  }

  DDM_HD static U mulhi(U a, U b) {
#if defined(__CUDA_ARCH__)
    if constexpr (sizeof(U) == 8) {
      return __umul64hi(a, b);
    } else {
      return __umulhi(a, b);
    }
#else
    if constexpr (sizeof(U) == 8) {
      return static_cast<U>((static_cast<unsigned __int128>(a) * b) >> 64);
    } else {
      return static_cast<U>((static_cast<uint64_t>(a) * b) >> 32);
    }
#endif
  }

  DDM_HD I div(I n) const {
    const U un = static_cast<U>(n);
    const U t = mulhi(m, un);
    return static_cast<I>((t + ((un - t) >> s1)) >> s2);
  }
};

}  // namespace cuda
}  // namespace ddm_fast
