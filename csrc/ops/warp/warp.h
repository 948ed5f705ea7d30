// warp: resample images (trilinear or nearest) and label maps (nearest or one-hot vote) through a
// displacement field: out(x) = image(x + disp(x)).
//
// Arguments (all C-contiguous, one grid):
//   image  (N, C, I, J, K) float32      labels (N, 1, I, J, K) int32
//   disp   (N, 3, I, J, K) float32, in voxels, component order (i, j, k)
//   out    like image / labels, allocated by the caller
//   order  1 trilinear, 0 nearest;  fill: the value read outside the grid
//   onehot false: nearest label; true: argmax of the trilinearly interpolated indicators
//   fill_label: the label outside the grid
//
// warp_disp_vjp: the gradient of a trilinear warp in its displacement,
//   grad_disp(x) = Σ_c grad_out_c(x) · ∇image_c(x + disp(x)),
//   grad_out like image, grad_disp like disp (both allocated by the caller).
//
// sample_labels: labels (I, J, K) int32 read by the one-hot vote at positions (3, I', J', K') float32
//   (voxels of the labels' grid), out (I', J', K') int32; clamp: outside positions read the border,
//   else fill_label.
#pragma once

#include <cstdint>

#include "common/batch.h"

namespace svfnet {

void warp_cpu(const float* image, const float* disp, float* out, const Batch& shape, int order, float fill,
              int threads);
void warp_labels_cpu(const int32_t* labels, const float* disp, int32_t* out, const Batch& shape, bool onehot,
                     int32_t fill_label, int threads);
void warp_disp_vjp_cpu(const float* image, const float* disp, const float* grad_out, float* grad_disp,
                       const Batch& shape, float fill, int threads);
void sample_labels_cpu(const int32_t* labels, const svfcore::Grid& grid, const float* positions, int32_t* out,
                       const svfcore::Grid& out_grid, bool clamp, int32_t fill_label, int threads);

#ifdef SVFNET_WITH_CUDA
void warp_cuda(const float* image, const float* disp, float* out, const Batch& shape, int order, float fill,
               std::uintptr_t stream);
void warp_labels_cuda(const int32_t* labels, const float* disp, int32_t* out, const Batch& shape, bool onehot,
                      int32_t fill_label, std::uintptr_t stream);
void warp_disp_vjp_cuda(const float* image, const float* disp, const float* grad_out, float* grad_disp,
                        const Batch& shape, float fill, std::uintptr_t stream);
void sample_labels_cuda(const int32_t* labels, const svfcore::Grid& grid, const float* positions,
                        int32_t* out, const svfcore::Grid& out_grid, bool clamp, int32_t fill_label,
                        std::uintptr_t stream);
#endif

}  // namespace svfnet
