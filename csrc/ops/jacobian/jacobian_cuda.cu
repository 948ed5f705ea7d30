#include "common/cuda_loops.cuh"
#include "ops/jacobian/jacobian.h"
#include "ops/jacobian/jacobian_body.h"

namespace svfnet {

void jacobian_det_cuda(const float* u, float* out, const Batch& shape, std::uintptr_t stream) {
  launch_voxels(shape.batch, shape.grid, stream, JacobianDetBody{u, out, shape.grid}, "jacobian_det");
}

void lie_bracket_cuda(const float* v, const float* w, float* out, const Batch& shape, std::uintptr_t stream) {
  launch_voxels(shape.batch, shape.grid, stream, LieBracketBody{v, w, out, shape.grid}, "lie_bracket");
}

void jacobian_solve_cuda(const float* e, const float* r, float* out, const Batch& shape,
                         std::uintptr_t stream) {
  launch_voxels(shape.batch, shape.grid, stream, JacobianSolveBody{e, r, out, shape.grid}, "jacobian_solve");
}

}  // namespace svfnet
