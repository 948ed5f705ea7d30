// The per-voxel body of norm_within, shared by the CPU and CUDA launchers.
#pragma once

#include "common/batch.h"
#include "svfcore/compose.h"

namespace svfnet {

struct NormWithinBody {
  const float* field;
  const float* u;
  float* out;
  svfcore::Grid grid;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    const int64_t n = grid.size();
    out[b * n + grid.index(i, j, k)] =
        svfcore::norm_within_at(field + b * 3 * n, u + b * 3 * n, grid, i, j, k);
  }
};

}  // namespace svfnet
