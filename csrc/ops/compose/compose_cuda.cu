#include "common/cuda_loops.cuh"
#include "ops/compose/compose.h"
#include "ops/compose/compose_body.h"

namespace svfnet {

void compose_cuda(const float* u, const float* w, float* out, const Batch& shape, std::uintptr_t stream) {
  launch_voxels(shape.batch, shape.grid, stream, ComposeBody{u, w, out, shape.grid, 1.f}, "compose");
}

void exp_cuda(const float* v, float* out, float* scratch, const Batch& shape, int steps, std::uintptr_t stream) {
  if (steps == 0) {
    check_cuda(cudaMemcpyAsync(out, v, sizeof(float) * shape.batch * 3 * shape.grid.size(), cudaMemcpyDeviceToDevice,
                               as_stream(stream)),
               "exp");
    return;
  }
  const SquaringPlan plan{v, out, scratch, steps};
  for (int pass = 0; pass < steps; ++pass) {
    const float* source = plan.source(pass);
    launch_voxels(shape.batch, shape.grid, stream, ComposeBody{source, source, plan.target(pass), shape.grid, plan.scale(pass)},
                  "exp");
  }
}

}  // namespace svfnet
