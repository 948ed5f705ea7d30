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

// The adjoint of one squaring, in two walks over the voxels (see svfcore::squaring_adjoint_at):
// SquaringAdjointBody stores each voxel's own part, then SquaringScatterBody adds the scattered
// part with `Add`, the launcher's addition (atomic on the GPU, a serial walk on the CPU);
// AccumulatorToFloatBody rounds the result.
struct SquaringAdjointBody {
  const float* f;
  const float* g_out;
  double* acc;
  svfcore::Grid grid;
  float scale;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    const int64_t offset = b * 3 * grid.size();
    svfcore::squaring_adjoint_at(f + offset, g_out + offset, acc + offset, grid, scale, i, j, k);
  }
};

template <class Add>
struct SquaringScatterBody {
  const float* f;
  const float* g_out;
  double* acc;
  svfcore::Grid grid;
  float scale;
  Add add;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    const int64_t offset = b * 3 * grid.size();
    svfcore::squaring_scatter_at(f + offset, g_out + offset, acc + offset, grid, scale, i, j, k, add);
  }
};

struct AccumulatorToFloatBody {
  const double* acc;
  float* out;
  svfcore::Grid grid;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    const int64_t n = grid.size(), v = b * 3 * n + grid.index(i, j, k);
    for (int c = 0; c < 3; ++c) out[v + c * n] = static_cast<float>(acc[v + c * n]);
  }
};

// The scale of squaring pass `pass` of `steps`: 2^-steps folded into the first, 1 for the others.
inline float squaring_scale(int pass, int steps) { return pass == 0 ? std::ldexp(1.f, -steps) : 1.f; }

// The passes of scaling and squaring: pass p reads the previous pass's result (v for the first,
// with the scale 2^-steps folded in) and writes out or scratch, so that the last pass writes out.
struct SquaringPlan {
  const float* v;
  float* out;
  float* scratch;
  int steps;

  const float* source(int pass) const { return pass == 0 ? v : target(pass - 1); }
  float* target(int pass) const { return (steps - 1 - pass) % 2 == 0 ? out : scratch; }
  float scale(int pass) const { return squaring_scale(pass, steps); }
};

// The same passes writing every result into `levels` (steps·N fields): pass p reads level p − 1
// (v for the first) and writes level p. The gradient walks them back from the last pass.
struct LevelPlan {
  const float* v;
  float* levels;
  int64_t field_floats;  // N·3·I·J·K, one level
  int steps;

  const float* source(int pass) const { return pass == 0 ? v : target(pass - 1); }
  float* target(int pass) const { return levels + pass * field_floats; }
  float scale(int pass) const { return squaring_scale(pass, steps); }
};

}  // namespace svfnet
