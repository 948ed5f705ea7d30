// Composition of displacement fields, the step of scaling and squaring.
//
// Fields are planar (3, I, J, K) arrays in voxels: component c of voxel v is f[c * size + v].
#pragma once

#include "svfcore/trilinear.h"

namespace svfcore {

// Displacement of φ_u ∘ φ_w at voxel (i, j, k), both fields first scaled by `scale`:
//   out(x) = s·w(x) + s·u(x + s·w(x)),  u read clamped at the border.
// scale = 1 is plain composition; scale = 2^-steps turns the first squaring of exp into one pass.
SVF_HOST_DEVICE void compose_at(const float* u, const float* w, float* out, const Grid& g, float scale, int i,
                                int j, int k) {
  const int n = static_cast<int>(g.size());  // 32-bit, as every index within a volume
  const int v = g.index(i, j, k);
  const float wi = scale * w[v], wj = scale * w[n + v], wk = scale * w[2 * n + v];
  const ClampedStencil s = clamped_stencil(g, static_cast<float>(i) + wi, static_cast<float>(j) + wj,
                                           static_cast<float>(k) + wk);
  out[v] = wi + scale * interpolate(u, s);
  out[n + v] = wj + scale * interpolate(u + n, s);
  out[2 * n + v] = wk + scale * interpolate(u + 2 * n, s);
}

// Length |f(x)| of a planar 3-component field at flat voxel index v, in voxels.
SVF_HOST_DEVICE float norm_at(const float* f, int64_t voxels, int64_t v) {
  const float a = f[v], b = f[voxels + v], c = f[2 * voxels + v];
  return sqrtf(a * a + b * b + c * c);
}

// Whether voxel (i, j, k) is mapped into the grid by x ↦ x + u(x): its target lies in the box
// [0, n-1] on every axis, where a warp reads the image itself rather than its fill or its
// clamped border. An axis of one voxel (a single slice) does not count: along it every position
// reads that slice. The logarithm measures its residual on these voxels (see fields.log).
SVF_HOST_DEVICE bool within_axis(float x, int n) { return n == 1 || (x >= 0.f && x <= static_cast<float>(n - 1)); }

SVF_HOST_DEVICE bool lands_inside(const float* u, const Grid& g, int i, int j, int k) {
  const int64_t n = g.size();
  const int v = g.index(i, j, k);
  return within_axis(static_cast<float>(i) + u[v], g.ni) && within_axis(static_cast<float>(j) + u[n + v], g.nj) &&
         within_axis(static_cast<float>(k) + u[2 * n + v], g.nk);
}

}  // namespace svfcore
