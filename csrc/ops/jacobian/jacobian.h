// jacobian_det and lie_bracket: finite-difference derivatives of displacement fields.
//
// Arguments (C-contiguous float32 on one grid, in voxels):
//   jacobian_det: u (N, 3, I, J, K) -> out (N, 1, I, J, K) = det(I + ∇u)
//   lie_bracket:  v, w (N, 3, I, J, K) -> out (N, 3, I, J, K) = (∇v) w − (∇w) v
//   jacobian_solve: e, r (N, 3, I, J, K) -> out (N, 3, I, J, K) = (I + ∇e)⁻¹ r (the logarithm's step)
#pragma once

#include <cstdint>

#include "common/batch.h"

namespace svfnet {

void jacobian_det_cpu(const float* u, float* out, const Batch& shape, int threads);
void lie_bracket_cpu(const float* v, const float* w, float* out, const Batch& shape, int threads);
void jacobian_solve_cpu(const float* e, const float* r, float* out, const Batch& shape, int threads);

#ifdef SVFNET_WITH_CUDA
void jacobian_det_cuda(const float* u, float* out, const Batch& shape, std::uintptr_t stream);
void lie_bracket_cuda(const float* v, const float* w, float* out, const Batch& shape, std::uintptr_t stream);
void jacobian_solve_cuda(const float* e, const float* r, float* out, const Batch& shape,
                         std::uintptr_t stream);
#endif

}  // namespace svfnet
