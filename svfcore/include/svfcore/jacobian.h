// Spatial derivatives of fields by finite differences: Jacobian determinants and Lie brackets.
#pragma once

#include "svfcore/macros.h"

namespace svfcore {

// ∂f/∂x_axis at (i, j, k) for one channel `f`, in voxels: central differences inside,
// one-sided at the border (as numpy.gradient with edge_order=1), 0 along an axis of extent 1.
SVF_HOST_DEVICE float partial(const float* f, const Grid& g, int i, int j, int k, int axis) {
  const int n = axis == 0 ? g.ni : (axis == 1 ? g.nj : g.nk);
  const int pos = axis == 0 ? i : (axis == 1 ? j : k);
  const int stride = axis == 0 ? g.nj * g.nk : (axis == 1 ? g.nk : 1);
  if (n < 2) return 0.f;
  const float* p = f + g.index(i, j, k);
  if (pos == 0) return p[stride] - p[0];
  if (pos == n - 1) return p[0] - p[-stride];
  return 0.5f * (p[stride] - p[-stride]);
}

// grad[c][a] = ∂f_c/∂x_a at (i, j, k) for a planar 3-component field.
SVF_HOST_DEVICE void field_gradient(const float* f, const Grid& g, int i, int j, int k, float grad[3][3]) {
  const int64_t n = g.size();
  for (int c = 0; c < 3; ++c)
    for (int a = 0; a < 3; ++a) grad[c][a] = partial(f + c * n, g, i, j, k, a);
}

// m = I + ∇u at (i, j, k), in double: near folds the determinant is a small difference of
// products of order one.
SVF_HOST_DEVICE void identity_plus_gradient(const float* u, const Grid& g, int i, int j, int k,
                                            double m[3][3]) {
  float grad[3][3];
  field_gradient(u, g, i, j, k, grad);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) m[r][c] = (r == c ? 1.0 : 0.0) + grad[r][c];
}

SVF_HOST_DEVICE double det3(const double m[3][3]) {
  return m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
         m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
         m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
}

// det(I + ∇u) at (i, j, k).
SVF_HOST_DEVICE float jacobian_det_at(const float* u, const Grid& g, int i, int j, int k) {
  double m[3][3];
  identity_plus_gradient(u, g, i, j, k, m);
  return static_cast<float>(det3(m));
}

// out = (I + ∇e)⁻¹ r at (i, j, k). With e = exp(v) and r = u − e, this is the d for which
// exp(v) ∘ exp(d) ≈ id + u to first order (e(x + d) ≈ e(x) + ∇e d), computed without reading
// any field outside the grid. Where I + ∇e is near singular (a fold) it falls back to d = r.
SVF_HOST_DEVICE void jacobian_solve_at(const float* e, const float* r, float* out, const Grid& g, int i,
                                       int j, int k) {
  double m[3][3];
  identity_plus_gradient(e, g, i, j, k, m);
  const double det = det3(m);
  const int64_t n = g.size(), x = g.index(i, j, k);
  const double b[3] = {r[x], r[n + x], r[2 * n + x]};
  if (det < 1e-3 && det > -1e-3) {
    for (int c = 0; c < 3; ++c) out[c * n + x] = static_cast<float>(b[c]);
    return;
  }
  // Cramer's rule: d_c = det(m with column c replaced by b) / det(m)
  for (int c = 0; c < 3; ++c) {
    double mc[3][3];
    for (int row = 0; row < 3; ++row)
      for (int col = 0; col < 3; ++col) mc[row][col] = col == c ? b[row] : m[row][col];
    out[c * n + x] = static_cast<float>(det3(mc) / det);
  }
}

// Lie bracket [v, w] = (∇v) w − (∇w) v at (i, j, k): the second-order term of
// exp(v) ∘ exp(w) = exp(v + w + ½[v, w] + ...), used by the BCH-corrected logarithm.
SVF_HOST_DEVICE void lie_bracket_at(const float* v, const float* w, float* out, const Grid& g, int i, int j,
                                    int k) {
  float gv[3][3], gw[3][3];
  field_gradient(v, g, i, j, k, gv);
  field_gradient(w, g, i, j, k, gw);
  const int64_t n = g.size(), x = g.index(i, j, k);
  const float vx[3] = {v[x], v[n + x], v[2 * n + x]};
  const float wx[3] = {w[x], w[n + x], w[2 * n + x]};
  for (int c = 0; c < 3; ++c) {
    float sum = 0.f;
    for (int a = 0; a < 3; ++a) sum += gv[c][a] * wx[a] - gw[c][a] * vx[a];
    out[c * n + x] = sum;
  }
}

}  // namespace svfcore
