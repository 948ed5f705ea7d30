// The extent of the work one launcher call does: N volumes of C channels on one grid.
#pragma once

#include <cstdint>
#include <stdexcept>

#include "svfcore/macros.h"

namespace svfnet {

struct Batch {
  int64_t batch, channels;
  svfcore::Grid grid;

  int64_t elements() const { return batch * channels * grid.size(); }
};

// Dimensions (N, C, I, J, K) of a call, checked.
// Refuses volumes of 2^31 voxels or more: indices within a volume are 32-bit (see svfcore::Grid).
inline Batch batch_from_dims(int64_t n, int64_t c, int64_t ni, int64_t nj, int64_t nk) {
  if (n < 0 || c < 0 || ni < 0 || nj < 0 || nk < 0)
    throw std::invalid_argument("dimensions must be non-negative");
  if (ni * nj * nk >= (int64_t(1) << 31))
    throw std::invalid_argument("a volume must have fewer than 2^31 voxels");
  return Batch{n, c, svfcore::Grid{static_cast<int>(ni), static_cast<int>(nj), static_cast<int>(nk)}};
}

}  // namespace svfnet
