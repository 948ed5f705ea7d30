// The per-voxel body of compose and of each squaring of exp, shared by the CPU and CUDA launchers.
#pragma once

#include <cmath>

#include "common/batch.h"
#include "svfcore/compose.h"

namespace svfnet {

struct ComposeBody {
  const float* u;
  const float* w;
  float* out;
  svfcore::Grid grid;
  float scale;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    const int64_t offset = b * 3 * grid.size();
    svfcore::compose_at(u + offset, w + offset, out + offset, grid, scale, i, j, k);
  }
};

// The passes of scaling and squaring: pass p reads the previous pass's result (v for the first,
// with the scale 2^-steps folded in) and writes out or scratch, so that the last pass writes out.
struct SquaringPlan {
  const float* v;
  float* out;
  float* scratch;
  int steps;

  const float* source(int pass) const { return pass == 0 ? v : target(pass - 1); }
  float* target(int pass) const { return (steps - 1 - pass) % 2 == 0 ? out : scratch; }
  float scale(int pass) const { return pass == 0 ? std::ldexp(1.f, -steps) : 1.f; }
};

}  // namespace svfnet
