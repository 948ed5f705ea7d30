#include "ops/jacobian/jacobian.h"

#include "common/cpu_loops.h"
#include "ops/jacobian/jacobian_body.h"

namespace svfnet {

void jacobian_det_cpu(const float* u, float* out, const Batch& shape, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads, JacobianDetBody{u, out, shape.grid});
}

void lie_bracket_cpu(const float* v, const float* w, float* out, const Batch& shape, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads, LieBracketBody{v, w, out, shape.grid});
}

void jacobian_solve_cpu(const float* e, const float* r, float* out, const Batch& shape, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads, JacobianSolveBody{e, r, out, shape.grid});
}

}  // namespace svfnet
