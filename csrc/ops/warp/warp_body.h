// The per-voxel bodies of warp, shared by warp_cpu.cpp and warp_cuda.cu.
#pragma once

#include "common/batch.h"
#include "svfcore/trilinear.h"

namespace svfnet {

// One image channel per walked volume: volume b is channel b % channels of pair b / channels, so
// the innermost loop runs over voxels only (what the CPU compiler vectorises) and the stencil is
// recomputed per channel, which is cheaper than the loads it feeds.
struct WarpLinearBody {
  const float* image;
  const float* disp;
  float* out;
  int64_t channels;
  svfcore::Grid grid;
  float fill;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    const int64_t n = grid.size();
    const svfcore::Position p = svfcore::displaced(disp + (b / channels) * 3 * n, grid, i, j, k);
    const svfcore::FillStencil s = svfcore::fill_stencil(grid, p.x, p.y, p.z);
    out[b * n + grid.index(i, j, k)] = svfcore::interpolate_fill(image + b * n, grid, s, fill);
  }
};

// The adjoint of WarpLinearBody in the displacement (a gather, no scatter: voxel x's displacement
// moves only out(x)): grad_disp(x) = Σ_c grad_out_c(x) · ∇image_c(x + disp(x)), walked per pair.
struct WarpDispGradientBody {
  const float* image;
  const float* disp;
  const float* grad_out;
  float* grad_disp;
  int64_t channels;
  svfcore::Grid grid;
  float fill;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    const int64_t n = grid.size();
    const int v = grid.index(i, j, k);
    const svfcore::Position p = svfcore::displaced(disp + b * 3 * n, grid, i, j, k);
    const svfcore::FillStencil s = svfcore::fill_stencil(grid, p.x, p.y, p.z);
    float gi = 0.f, gj = 0.f, gk = 0.f;
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t volume = b * channels + c;
      const float weight = grad_out[volume * n + v];
      const svfcore::PositionGradient d =
          svfcore::interpolate_fill_gradient(image + volume * n, grid, s, fill);
      gi += weight * d.i;
      gj += weight * d.j;
      gk += weight * d.k;
    }
    float* out = grad_disp + b * 3 * n + v;
    out[0] = gi;
    out[n] = gj;
    out[2 * n] = gk;
  }
};

struct WarpNearestBody {
  const float* image;
  const float* disp;
  float* out;
  int64_t channels;
  svfcore::Grid grid;
  float fill;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    const int64_t n = grid.size();
    const svfcore::Position p = svfcore::displaced(disp + (b / channels) * 3 * n, grid, i, j, k);
    float inside;
    const int nearest = svfcore::nearest_index(grid, p.x, p.y, p.z, inside);
    const float value = image[b * n + nearest];
    out[b * n + grid.index(i, j, k)] = inside > 0.f ? value : fill;
  }
};

struct WarpLabelsBody {
  const int32_t* labels;
  const float* disp;
  int32_t* out;
  svfcore::Grid grid;
  bool onehot;
  int32_t fill_label;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    const int64_t n = grid.size();
    const int v = grid.index(i, j, k);
    const svfcore::Position p = svfcore::displaced(disp + b * 3 * n, grid, i, j, k);
    const int32_t* src = labels + b * n;
    if (onehot) {
      out[b * n + v] = svfcore::vote_label(src, grid, svfcore::fill_stencil(grid, p.x, p.y, p.z), fill_label);
    } else {
      float inside;
      const int nearest = svfcore::nearest_index(grid, p.x, p.y, p.z, inside);
      out[b * n + v] = inside > 0.f ? src[nearest] : fill_label;
    }
  }
};

}  // namespace svfnet
