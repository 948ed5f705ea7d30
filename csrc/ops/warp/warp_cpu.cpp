#include "ops/warp/warp.h"

#include "common/cpu_loops.h"
#include "ops/warp/warp_body.h"

namespace svfnet {

void warp_cpu(const float* image, const float* disp, float* out, const Batch& shape, int order, float fill,
              int threads) {
  const int64_t volumes = shape.batch * shape.channels;
  if (order == 0)
    for_each_voxel(volumes, shape.grid, threads, WarpNearestBody{image, disp, out, shape.channels, shape.grid, fill});
  else
    for_each_voxel(volumes, shape.grid, threads, WarpLinearBody{image, disp, out, shape.channels, shape.grid, fill});
}

void warp_labels_cpu(const int32_t* labels, const float* disp, int32_t* out, const Batch& shape, bool onehot,
                     int32_t fill_label, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads, WarpLabelsBody{labels, disp, out, shape.grid, onehot, fill_label});
}

void warp_disp_vjp_cpu(const float* image, const float* disp, const float* grad_out, float* grad_disp,
                       const Batch& shape, float fill, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads,
                 WarpDispGradientBody{image, disp, grad_out, grad_disp, shape.channels, shape.grid, fill});
}

}  // namespace svfnet
