// ebs_grid and ebs_points: evaluate elastic body spline fits (svfcore/ebs.h) on every voxel of a
// grid, or at a list of points. All geometry in the fit's normalised frame (see svfnet/ebs.py).
//
// Arguments (C-contiguous float64 unless said):
//   landmarks (K, 3); coefficients (M, K, 3); affine (M, 4, 3)  — M fits sharing K landmarks
//   grid: voxel (i, j, k) sits at origin + (i, j, k) * step (per axis) in the normalised frame
//   out_grid (M, 3, I, J, K) float32 = displacement * out_scale (per axis: normalised -> voxels)
//   points (P, 3) -> out_points (M, P, 3) float64, in the normalised frame
#pragma once

#include <cstdint>

#include "svfcore/macros.h"

namespace svfnet {

struct EbsFits {
  const double* landmarks;
  int count;  // K
  const double* coefficients;
  const double* affine;
  int fits;  // M
  double alpha;
};

struct EbsGrid {
  svfcore::Grid grid;
  double origin[3], step[3];
  double out_scale[3];
};

void ebs_grid_cpu(const EbsFits& fits, const EbsGrid& grid, float* out, int threads);
void ebs_points_cpu(const EbsFits& fits, const double* points, int64_t count, double* out, int threads);

#ifdef SVFNET_WITH_CUDA
void ebs_grid_cuda(const EbsFits& fits, const EbsGrid& grid, float* out, std::uintptr_t stream);
#endif

}  // namespace svfnet
