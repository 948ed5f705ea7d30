// Reductions the Python layer needs before or after the field operations:
//   norm_stats: max and mean over all voxels of |f(x)| for f (N, 3, I, J, K) float32, in voxels
//               (the exp step count, the logarithm's residual);
//   norm_stats_within: the same over the voxels that x ↦ x + u(x) maps into the grid
//               (svfcore::lands_inside), with their count: the logarithm's residual where a
//               warp reads the moving image;
//   norm_within: the per-voxel norms behind norm_stats_within, out (N, 1, I, J, K) = |f(x)| where
//               x + u(x) lands in the grid, 0 elsewhere (the logarithm's polishing weights);
//   count_nonfinite: how many of `count` floats are NaN or infinite (input checks).
#pragma once

#include <cstdint>
#include <tuple>
#include <utility>

#include "common/batch.h"

namespace svfnet {

std::pair<float, double> norm_stats_cpu(const float* field, const Batch& shape, int threads);
std::tuple<float, double, int64_t> norm_stats_within_cpu(const float* field, const float* u,
                                                         const Batch& shape, int threads);
void norm_within_cpu(const float* field, const float* u, float* out, const Batch& shape, int threads);
int64_t count_nonfinite_cpu(const float* data, int64_t count, int threads);

#ifdef SVFNET_WITH_CUDA
std::pair<float, double> norm_stats_cuda(const float* field, const Batch& shape, std::uintptr_t stream);
std::tuple<float, double, int64_t> norm_stats_within_cuda(const float* field, const float* u,
                                                          const Batch& shape, std::uintptr_t stream);
void norm_within_cuda(const float* field, const float* u, float* out, const Batch& shape,
                      std::uintptr_t stream);
int64_t count_nonfinite_cuda(const float* data, int64_t count, std::uintptr_t stream);
// Number of CUDA devices visible, 0 where the driver or a device is missing.
int cuda_device_count();
#endif

}  // namespace svfnet
