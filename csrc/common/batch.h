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

// Dimensions (N, C, I, J, K) as the CUDA entry points receive them beside raw device pointers.
inline Batch batch_from_dims(int64_t n, int64_t c, int64_t ni, int64_t nj, int64_t nk) {
  if (n < 0 || c < 0 || ni < 0 || nj < 0 || nk < 0) throw std::invalid_argument("dimensions must be non-negative");
  return Batch{n, c, svfcore::Grid{ni, nj, nk}};
}

}  // namespace svfnet
