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

// Labels read at given positions by the one-hot vote (sample_labels): out(x) is the vote of `labels`
// (grid `grid`) at the voxel position positions(:, x), for every voxel x of another grid (`out_grid`),
// e.g. the original image's grid and the prepared one. With `clamp` a position outside `grid` reads at
// the nearest point of its box (SciPy's mode "nearest" for order 1); without, it reads `fill_label`
// (SciPy's mode "constant": no interpolation with the outside, unlike warp's fill).
struct SampleLabelsBody {
  const int32_t* labels;
  const float* positions;
  int32_t* out;
  svfcore::Grid grid;
  svfcore::Grid out_grid;
  bool clamp;
  int32_t fill_label;

  SVF_HOST_DEVICE void operator()(int64_t, int i, int j, int k) const {
    const int64_t n = out_grid.size();
    const int v = out_grid.index(i, j, k);
    float x = positions[v], y = positions[n + v], z = positions[2 * n + v];
    const float hi = float(grid.ni - 1), hj = float(grid.nj - 1), hk = float(grid.nk - 1);
    if (clamp) {
      x = svfcore::clamp_to(x, 0.f, hi);
      y = svfcore::clamp_to(y, 0.f, hj);
      z = svfcore::clamp_to(z, 0.f, hk);
    } else if (!(x >= 0.f && x <= hi && y >= 0.f && y <= hj && z >= 0.f && z <= hk)) {
      out[v] = fill_label;  // also a NaN position
      return;
    }
    out[v] = svfcore::vote_label(labels, grid, svfcore::fill_stencil(grid, x, y, z), fill_label);
  }
};

}  // namespace svfnet
