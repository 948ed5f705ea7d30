// The per-voxel bodies of warp, shared by warp_cpu.cpp and warp_cuda.cu.
#pragma once

#include "common/batch.h"
#include "svfcore/trilinear.h"

namespace svfnet {

struct WarpBody {
  const float* image;
  const float* disp;
  float* out;
  int64_t channels;
  svfcore::Grid grid;
  int order;
  float fill;

  SVF_HOST_DEVICE void operator()(int64_t b, int64_t i, int64_t j, int64_t k) const {
    const int64_t n = grid.size(), v = grid.index(i, j, k);
    const float* d = disp + b * 3 * n;
    const float x = static_cast<float>(i) + d[v], y = static_cast<float>(j) + d[n + v],
                z = static_cast<float>(k) + d[2 * n + v];
    const float* src = image + b * channels * n;
    float* dst = out + b * channels * n;
    if (order == 0) {
      const int64_t nearest = svfcore::nearest_index(grid, x, y, z);
      for (int64_t c = 0; c < channels; ++c) dst[c * n + v] = nearest < 0 ? fill : src[c * n + nearest];
    } else {
      const svfcore::FillStencil s = svfcore::fill_stencil(grid, x, y, z);
      for (int64_t c = 0; c < channels; ++c) dst[c * n + v] = svfcore::interpolate_fill(src + c * n, grid, s, fill);
    }
  }
};

struct WarpLabelsBody {
  const int32_t* labels;
  const float* disp;
  int32_t* out;
  svfcore::Grid grid;
  bool onehot;
  int32_t fill_label;

  SVF_HOST_DEVICE void operator()(int64_t b, int64_t i, int64_t j, int64_t k) const {
    const int64_t n = grid.size(), v = grid.index(i, j, k);
    const float* d = disp + b * 3 * n;
    const float x = static_cast<float>(i) + d[v], y = static_cast<float>(j) + d[n + v],
                z = static_cast<float>(k) + d[2 * n + v];
    const int32_t* src = labels + b * n;
    if (onehot) {
      out[b * n + v] = svfcore::vote_label(src, grid, svfcore::fill_stencil(grid, x, y, z), fill_label);
    } else {
      const int64_t nearest = svfcore::nearest_index(grid, x, y, z);
      out[b * n + v] = nearest < 0 ? fill_label : src[nearest];
    }
  }
};

}  // namespace svfnet
