// compose and exp: composition of displacement fields and its repetition, scaling and squaring.
//
// Arguments (all C-contiguous (N, 3, I, J, K) float32 in voxels, one grid):
//   compose: out = w + u ∘ (id + w), the displacement of φ_u ∘ φ_w (u clamped at the border)
//   exp:     out = exp(v) by `steps` squarings of v / 2^steps; `scratch` is a second buffer of
//            the same shape (the squarings alternate between the two, ending in out)
//   exp_levels: every squaring's result, levels (steps·N, 3, I, J, K): level p (N fields from
//            p·N) is the result of squaring p + 1, the last one exp(v); steps >= 1
//   exp_vjp: the gradient of a scalar L through exp: grad_out = ∂L/∂exp(v) gives grad_v = ∂L/∂v,
//            from the levels of exp_levels; `accumulator` is a float64 (N, 3, I, J, K) buffer
#pragma once

#include <cstdint>

#include "common/batch.h"

namespace svfnet {

void compose_cpu(const float* u, const float* w, float* out, const Batch& shape, int threads);
void exp_cpu(const float* v, float* out, float* scratch, const Batch& shape, int steps, int threads);
void exp_levels_cpu(const float* v, float* levels, const Batch& shape, int steps, int threads);
void exp_vjp_cpu(const float* v, const float* levels, const float* grad_out, float* grad_v,
                 double* accumulator, const Batch& shape, int steps, int threads);

#ifdef SVFNET_WITH_CUDA
void compose_cuda(const float* u, const float* w, float* out, const Batch& shape, std::uintptr_t stream);
void exp_cuda(const float* v, float* out, float* scratch, const Batch& shape, int steps,
              std::uintptr_t stream);
void exp_levels_cuda(const float* v, float* levels, const Batch& shape, int steps, std::uintptr_t stream);
void exp_vjp_cuda(const float* v, const float* levels, const float* grad_out, float* grad_v,
                  double* accumulator, const Batch& shape, int steps, std::uintptr_t stream);
#endif

}  // namespace svfnet
