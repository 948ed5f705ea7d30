// The per-voxel bodies of jacobian_det and lie_bracket, shared by the CPU and CUDA launchers.
#pragma once

#include "common/batch.h"
#include "svfcore/jacobian.h"

namespace svfnet {

struct JacobianDetBody {
  const float* u;
  float* out;
  svfcore::Grid grid;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    const int64_t n = grid.size();
    out[b * n + grid.index(i, j, k)] = svfcore::jacobian_det_at(u + b * 3 * n, grid, i, j, k);
  }
};

struct LieBracketBody {
  const float* v;
  const float* w;
  float* out;
  svfcore::Grid grid;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    const int64_t offset = b * 3 * grid.size();
    svfcore::lie_bracket_at(v + offset, w + offset, out + offset, grid, i, j, k);
  }
};

struct JacobianSolveBody {
  const float* e;
  const float* r;
  float* out;
  svfcore::Grid grid;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    const int64_t offset = b * 3 * grid.size();
    svfcore::jacobian_solve_at(e + offset, r + offset, out + offset, grid, i, j, k);
  }
};

}  // namespace svfnet
