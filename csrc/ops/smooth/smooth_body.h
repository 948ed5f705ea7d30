// The per-voxel bodies of smooth and local_moments, shared by the CPU and CUDA launchers.
// Acc: the accumulator type; Tap: the type the taps are read as (the CPU converts them to Acc once).
#pragma once

#include <type_traits>

#include "common/batch.h"
#include "svfcore/smooth.h"

namespace svfnet {

// Calls f(std::integral_constant<int, axis>{}): the bodies take the axis at compile time, so that
// the CPU compiler sees which index is the line's and vectorises along k.
template <class F>
void with_axis(int axis, F&& f) {
  if (axis == 0)
    f(std::integral_constant<int, 0>{});
  else if (axis == 1)
    f(std::integral_constant<int, 1>{});
  else
    f(std::integral_constant<int, 2>{});
}

// One pass of smooth over N·C volumes: out = in convolved along Axis.
template <int Axis, typename Acc, typename Tap>
struct SmoothPassBody {
  const float* in;
  float* out;
  svfcore::Grid grid;
  int radius;
  const Tap* taps;

  SVF_HOST_DEVICE void operator()(int64_t v, int i, int j, int k) const {
    const int64_t n = grid.size();
    out[v * n + grid.index(i, j, k)] =
        svfcore::smooth_axis_at<Axis, Acc>(in + v * n, grid, taps, radius, i, j, k);
  }
};

// The first pass of local_moments (per batch element): the five products of a and b convolved
// along `axis`, stored as the five sums (out_channels per element) or, when it is the only pass,
// as the moments.
template <int Axis, typename Acc, typename Tap>
struct MomentProductsBody {
  const float* a;
  const float* b;
  float* out;
  int64_t out_channels;
  svfcore::Grid grid;
  int radius;
  const Tap* taps;
  bool finish;
  float floor_a, floor_b;

  SVF_HOST_DEVICE void operator()(int64_t e, int i, int j, int k) const {
    const int64_t n = grid.size();
    float sums[svfcore::kMomentSums];
    svfcore::moment_products_axis_at<Axis, Acc>(a + e * n, b + e * n, grid, taps, radius, i, j, k, sums);
    const int x = grid.index(i, j, k);
    if (finish)
      svfcore::store_local_moments(out + e * out_channels * n, n, x, sums, floor_a, floor_b);
    else
      svfcore::store_moment_sums(out + e * out_channels * n, n, x, sums);
  }
};

// A later pass of local_moments: the five sums (in_channels per element) convolved along `axis`.
template <int Axis, typename Acc, typename Tap>
struct MomentSumsBody {
  const float* in;
  int64_t in_channels;
  float* out;
  int64_t out_channels;
  svfcore::Grid grid;
  int radius;
  const Tap* taps;
  bool finish;
  float floor_a, floor_b;

  SVF_HOST_DEVICE void operator()(int64_t e, int i, int j, int k) const {
    const int64_t n = grid.size();
    float sums[svfcore::kMomentSums];
    svfcore::moment_sums_axis_at<Axis, Acc>(in + e * in_channels * n, n, grid, taps, radius, i, j, k, sums);
    const int x = grid.index(i, j, k);
    if (finish)
      svfcore::store_local_moments(out + e * out_channels * n, n, x, sums, floor_a, floor_b);
    else
      svfcore::store_moment_sums(out + e * out_channels * n, n, x, sums);
  }
};

}  // namespace svfnet
