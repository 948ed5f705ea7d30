#include "ops/compose/compose.h"

#include <algorithm>

#include "common/cpu_loops.h"
#include "ops/compose/compose_body.h"

namespace svfnet {

void compose_cpu(const float* u, const float* w, float* out, const Batch& shape, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads, ComposeBody{u, w, out, shape.grid, 1.f});
}

void exp_cpu(const float* v, float* out, float* scratch, const Batch& shape, int steps, int threads) {
  if (steps == 0) {
    std::copy(v, v + shape.batch * 3 * shape.grid.size(), out);
    return;
  }
  const SquaringPlan plan{v, out, scratch, steps};
  for (int pass = 0; pass < steps; ++pass) {
    const float* source = plan.source(pass);
    for_each_voxel(shape.batch, shape.grid, threads, ComposeBody{source, source, plan.target(pass), shape.grid, plan.scale(pass)});
  }
}

}  // namespace svfnet
