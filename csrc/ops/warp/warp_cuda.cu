#include "common/cuda_loops.cuh"
#include "ops/warp/warp.h"
#include "ops/warp/warp_body.h"

namespace svfnet {

void warp_cuda(const float* image, const float* disp, float* out, const Batch& shape, int order, float fill,
               std::uintptr_t stream) {
  const int64_t volumes = shape.batch * shape.channels;
  if (order == 0)
    launch_voxels(volumes, shape.grid, stream,
                  WarpNearestBody{image, disp, out, shape.channels, shape.grid, fill}, "warp");
  else
    launch_voxels(volumes, shape.grid, stream,
                  WarpLinearBody{image, disp, out, shape.channels, shape.grid, fill}, "warp");
}

void warp_labels_cuda(const int32_t* labels, const float* disp, int32_t* out, const Batch& shape, bool onehot,
                      int32_t fill_label, std::uintptr_t stream) {
  launch_voxels(shape.batch, shape.grid, stream,
                WarpLabelsBody{labels, disp, out, shape.grid, onehot, fill_label}, "warp_labels");
}

void warp_disp_vjp_cuda(const float* image, const float* disp, const float* grad_out, float* grad_disp,
                        const Batch& shape, float fill, std::uintptr_t stream) {
  launch_voxels(shape.batch, shape.grid, stream,
                WarpDispGradientBody{image, disp, grad_out, grad_disp, shape.channels, shape.grid, fill},
                "warp_disp_vjp");
}

void sample_labels_cuda(const int32_t* labels, const svfcore::Grid& grid, const float* positions,
                        int32_t* out, const svfcore::Grid& out_grid, bool clamp, int32_t fill_label,
                        std::uintptr_t stream) {
  launch_voxels(1, out_grid, stream,
                SampleLabelsBody{labels, positions, out, grid, out_grid, clamp, fill_label}, "sample_labels");
}

}  // namespace svfnet
