// The portable engine: baseline flags (no -march), the noise from the scalar
// functions of elementwise.h (the platform's logf / sinf / cosf). Always
// built; the reference the SIMD engines are tested against.
#define DDM_ENGINE_NS scalar

#include <cstring>

#include "internal.h"

namespace ddm_fast {
namespace cpu {
namespace detail {
namespace scalar {
namespace {

// Engine::noise, one counter at a time; counters whose four elements are
// all masked are skipped (written as 0).
void generate_noise(uint64_t seed, uint64_t c0, int64_t n, float* out, const uint8_t* keep) {
  for (int64_t c = 0; c < n; ++c) {
    if (keep != nullptr) {
      uint32_t live;
      std::memcpy(&live, keep + 4 * c, sizeof live);
      if (live == 0) {
        out[4 * c] = out[4 * c + 1] = out[4 * c + 2] = out[4 * c + 3] = 0.0f;
        continue;
      }
    }
    normals4(c0 + static_cast<uint64_t>(c), seed, out + 4 * c);
  }
}

}  // namespace
}  // namespace scalar
}  // namespace detail
}  // namespace cpu
}  // namespace ddm_fast

#include "engine.h"

namespace ddm_fast {
namespace cpu {
namespace detail {

extern const Engine kEngineScalar = {"scalar", &scalar::generate_noise, &scalar::randn_tile,
                                     &scalar::affine_tile, &scalar::reduce_tile};

}  // namespace detail
}  // namespace cpu
}  // namespace ddm_fast
