#include "ops/jacobian/jacobian.h"

#include "common/cpu_loops.h"
#include "ops/jacobian/jacobian_body.h"

namespace svfnet {

namespace {
// Voxel-operations a voxel of each loop (cpu_loops.h: about a nanosecond of one core each).
constexpr int64_t kDetCost = 10, kBracketCost = 75, kSolveCost = 26;
}  // namespace

void jacobian_det_cpu(const float* u, float* out, const Batch& shape, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads, kDetCost, JacobianDetBody{u, out, shape.grid});
}

void lie_bracket_cpu(const float* v, const float* w, float* out, const Batch& shape, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads, kBracketCost, LieBracketBody{v, w, out, shape.grid});
}

void jacobian_solve_cpu(const float* e, const float* r, float* out, const Batch& shape, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads, kSolveCost, JacobianSolveBody{e, r, out, shape.grid});
}

}  // namespace svfnet
