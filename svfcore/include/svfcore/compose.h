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
  const ClampedStencil s =
      clamped_stencil(g, static_cast<float>(i) + wi, static_cast<float>(j) + wj, static_cast<float>(k) + wk);
  out[v] = wi + scale * interpolate(u, s);
  out[n + v] = wj + scale * interpolate(u + n, s);
  out[2 * n + v] = wk + scale * interpolate(u + 2 * n, s);
}

// Adjoint of one squaring (compose_at with u = w = f) for the gradient of exp: with
//   out(y) = s·f(y) + s·f(p(y)),  p(y) = y + s·f(y),
// a gradient g = ∂L/∂out gives ∂L/∂f as the sum of two parts:
//  - squaring_adjoint_at, at y itself: s·g(y) + s²·(∂f/∂p at p(y))ᵀ g(y), the derivative through
//    the first term and through the sampling position (zero along clamped axes, as the clamp);
//  - squaring_scatter_at, from every voxel y to the corners of p(y): s·g(y) times their
//    trilinear weights, the transpose of the sampling.
// Both accumulate in double (`acc`, planar like f): on the GPU the scatter's sums arrive in any order.
SVF_HOST_DEVICE void squaring_adjoint_at(const float* f, const float* g_out, double* acc, const Grid& g,
                                         float scale, int i, int j, int k) {
  const int n = static_cast<int>(g.size());
  const int v = g.index(i, j, k);
  const float x = static_cast<float>(i) + scale * f[v], y = static_cast<float>(j) + scale * f[n + v],
              z = static_cast<float>(k) + scale * f[2 * n + v];
  const ClampedStencil s = clamped_stencil(g, x, y, z);
  const float free_i = unclamped(x, g.ni), free_j = unclamped(y, g.nj), free_k = unclamped(z, g.nk);
  const float g0 = g_out[v], g1 = g_out[n + v], g2 = g_out[2 * n + v];
  const PositionGradient d0 = interpolate_gradient(f, s), d1 = interpolate_gradient(f + n, s),
                         d2 = interpolate_gradient(f + 2 * n, s);
  const double ss = double(scale) * scale;
  acc[v] = double(scale) * g0 + ss * free_i * (g0 * d0.i + g1 * d1.i + g2 * d2.i);
  acc[n + v] = double(scale) * g1 + ss * free_j * (g0 * d0.j + g1 * d1.j + g2 * d2.j);
  acc[2 * n + v] = double(scale) * g2 + ss * free_k * (g0 * d0.k + g1 * d1.k + g2 * d2.k);
}

template <class AtomicAdd>
SVF_HOST_DEVICE void squaring_scatter_at(const float* f, const float* g_out, double* acc, const Grid& g,
                                         float scale, int i, int j, int k, const AtomicAdd& add) {
  const int n = static_cast<int>(g.size());
  const int v = g.index(i, j, k);
  const ClampedStencil s =
      clamped_stencil(g, static_cast<float>(i) + scale * f[v], static_cast<float>(j) + scale * f[n + v],
                      static_cast<float>(k) + scale * f[2 * n + v]);
  for (int c = 0; c < 3; ++c) scatter(acc + c * n, s, double(scale) * g_out[c * n + v], add);
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
SVF_HOST_DEVICE bool within_axis(float x, int n) {
  return n == 1 || (x >= 0.f && x <= static_cast<float>(n - 1));
}

SVF_HOST_DEVICE bool lands_inside(const float* u, const Grid& g, int i, int j, int k) {
  const int64_t n = g.size();
  const int v = g.index(i, j, k);
  return within_axis(static_cast<float>(i) + u[v], g.ni) &&
         within_axis(static_cast<float>(j) + u[n + v], g.nj) &&
         within_axis(static_cast<float>(k) + u[2 * n + v], g.nk);
}

// |f(x)| at voxel (i, j, k) where x + u(x) lands inside the grid, 0 elsewhere.
SVF_HOST_DEVICE float norm_within_at(const float* f, const float* u, const Grid& g, int i, int j, int k) {
  return lands_inside(u, g, i, j, k) ? norm_at(f, g.size(), g.index(i, j, k)) : 0.f;
}

}  // namespace svfcore
