#include "ops/warp/warp.h"

#include "common/cpu_loops.h"
#include "ops/warp/warp_body.h"

namespace svfnet {

namespace {
// Voxel-operations a voxel of each loop (cpu_loops.h: about a nanosecond of one core each).
constexpr int64_t kLinearCost = 7;     // a trilinear sample of one channel
constexpr int64_t kNearestCost = 10;   // a nearest-neighbour sample of one channel
constexpr int64_t kLabelsCost = 13;    // a label, nearest (one-hot votes cost more, rarely used)
constexpr int64_t kGradientCost = 30;  // the gradient of a trilinear sample, a channel
constexpr int64_t kVoteCost = 40;      // a one-hot vote of the eight corners
}  // namespace

void warp_cpu(const float* image, const float* disp, float* out, const Batch& shape, int order, float fill,
              int threads) {
  const int64_t volumes = shape.batch * shape.channels;
  if (order == 0)
    for_each_voxel(volumes, shape.grid, threads, kNearestCost,
                   WarpNearestBody{image, disp, out, shape.channels, shape.grid, fill});
  else
    for_each_voxel(volumes, shape.grid, threads, kLinearCost,
                   WarpLinearBody{image, disp, out, shape.channels, shape.grid, fill});
}

void warp_labels_cpu(const int32_t* labels, const float* disp, int32_t* out, const Batch& shape, bool onehot,
                     int32_t fill_label, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads, kLabelsCost,
                 WarpLabelsBody{labels, disp, out, shape.grid, onehot, fill_label});
}

void warp_disp_vjp_cpu(const float* image, const float* disp, const float* grad_out, float* grad_disp,
                       const Batch& shape, float fill, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads, kGradientCost * shape.channels,
                 WarpDispGradientBody{image, disp, grad_out, grad_disp, shape.channels, shape.grid, fill});
}

void sample_labels_cpu(const int32_t* labels, const svfcore::Grid& grid, const float* positions, int32_t* out,
                       const svfcore::Grid& out_grid, bool clamp, int32_t fill_label, int threads) {
  for_each_voxel(1, out_grid, threads, kVoteCost,
                 SampleLabelsBody{labels, positions, out, grid, out_grid, clamp, fill_label});
}

}  // namespace svfnet
