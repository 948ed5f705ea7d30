// compose and exp: composition of displacement fields and its repetition, scaling and squaring.
//
// Arguments (all C-contiguous (N, 3, I, J, K) float32 in voxels, one grid):
//   compose: out = w + u ∘ (id + w), the displacement of φ_u ∘ φ_w (u clamped at the border)
//   exp:     out = exp(v) by `steps` squarings of v / 2^steps; `scratch` is a second buffer of
//            the same shape (the squarings alternate between the two, ending in out)
#pragma once

#include <cstdint>

#include "common/batch.h"

namespace svfnet {

void compose_cpu(const float* u, const float* w, float* out, const Batch& shape, int threads);
void exp_cpu(const float* v, float* out, float* scratch, const Batch& shape, int steps, int threads);

#ifdef SVFNET_WITH_CUDA
void compose_cuda(const float* u, const float* w, float* out, const Batch& shape, std::uintptr_t stream);
void exp_cuda(const float* v, float* out, float* scratch, const Batch& shape, int steps, std::uintptr_t stream);
#endif

}  // namespace svfnet
