// Gaussian kernel sums: the per-pair math of every reduction svfnet's shapes need.
//
// A reduction walks targets x_i (N, 3) and sources y_j (M, 3), with k_ij = exp(-|r_ij|² / σ²)
// and r_ij = x_i - y_j, and accumulates, per target i,
//
//   out_w_i = Σ_j k_ij · f_w(i, j) · w_j      (the source values w_j, DW columns)
//   out_r_i = Σ_j k_ij · f_r(i, j) · r_ij     (3 columns)
//
// where the pair factors f are products of at most two scalars:
//   m_ij = a_i · b_j            (target and source weights, DA columns)
//   t_ij = (c_i - e_j) · r_ij   (target and source directions, 3 columns)
//
// Four formulas cover the forward pass, the gradients and the second derivatives:
//   Sum        out_w = Σ k w                                   (gaussian_sum, ∂b)
//   SumGrad    out_w = Σ k w,      out_r = Σ k m r             (∂x, ∂y; q̇ and ṗ of a Hamiltonian)
//   TSum       out_w = Σ k t w                                 (second derivatives in a, b)
//   MSumTGrad  out_w = Σ k m w,    out_r = Σ k m t r           (second derivatives in x, y)
// since ∇_{x_i} Σ_j k_ij (a_i·b_j) = -2/σ² Σ_j k_ij m_ij r_ij: the gradient of a kernel sum is a
// kernel sum (KeOps' observation), and so is the gradient of that.
//
// The launchers (csrc/ops/gauss) only walk the index space: the CPU one vectorises over sources
// of a tile, the CUDA one runs one thread per target over source tiles in shared memory; both
// call gauss_pair below. Accumulation precision is the launchers' (float within a tile of
// sources, double across tiles).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "svfcore/macros.h"

namespace svfcore {

enum class GaussFormula : int { Sum = 0, SumGrad = 1, TSum = 2, MSumTGrad = 3 };

// Which factors each output takes, per formula (compile-time: the inner loops stay branch-free).
template <GaussFormula F>
struct GaussTerms {
  static constexpr bool w_uses_m = F == GaussFormula::MSumTGrad;
  static constexpr bool w_uses_t = F == GaussFormula::TSum;
  static constexpr bool has_r = F == GaussFormula::SumGrad || F == GaussFormula::MSumTGrad;
  static constexpr bool r_uses_m = has_r;
  static constexpr bool r_uses_t = F == GaussFormula::MSumTGrad;
  static constexpr bool needs_m = w_uses_m || r_uses_m;
  static constexpr bool needs_t = w_uses_t || r_uses_t;
};

SVF_HOST_DEVICE float float_from_bits(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

// exp(x) for x <= 0 in float32, branch-free so that compilers vectorise loops calling it:
// Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial, exponent by bits),
// relative error below 2e-7 on [-87, 0]; exactly 0 below -87 (where exp underflows float32's
// normal range). The same code runs on the CPU and the GPU, so both give the same numbers.
SVF_HOST_DEVICE float gauss_exp(float x) {
  const float clamped = x < -87.0f ? -87.0f : x;
  // round(x / ln 2) by the 1.5·2^23 trick: exact for |n| < 2^22, no rounding-mode dependence
  // other than the default round-to-nearest, and no call that would stop vectorisation.
  const float shifted = clamped * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  const float r = (clamped - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float poly = p * r * r + r + 1.0f;
  const float scale = float_from_bits((static_cast<int32_t>(n) + 127) << 23);
  // computed before the select, not in one of its arms: a compiler may not evaluate a floating
  // point arm speculatively (it could trap), and without that it cannot vectorise the select
  const float value = poly * scale;
  return x < -87.0f ? 0.0f : value;
}

// The float64 path (reference precision, gradient checks) uses the library exp.
SVF_HOST_DEVICE double gauss_exp(double x) { return exp(x); }

// k(x, y) = exp(-|r|² / σ²) for r = x - y, given 1/σ².
template <typename T>
SVF_HOST_DEVICE T gauss_kernel(T r0, T r1, T r2, T inv_sigma2) {
  return gauss_exp(-(r0 * r0 + r1 * r1 + r2 * r2) * inv_sigma2);
}

// One pair's weights: kw multiplies the source values w_j, kr the offset r_ij. `m` is a_i·b_j
// (ignored by formulas that do not use it), (c0, c1, c2) - (e0, e1, e2) the direction of t.
template <GaussFormula F, typename T>
SVF_HOST_DEVICE void gauss_pair(T r0, T r1, T r2, T m, T c0, T c1, T c2, T e0, T e1, T e2, T inv_sigma2,
                                T& kw, T& kr) {
  using Terms = GaussTerms<F>;
  const T k = gauss_kernel(r0, r1, r2, inv_sigma2);
  T t = T(1);
  if (Terms::needs_t) t = (c0 - e0) * r0 + (c1 - e1) * r1 + (c2 - e2) * r2;
  T w_factor = k, r_factor = k;
  if (Terms::w_uses_m) w_factor *= m;
  if (Terms::w_uses_t) w_factor *= t;
  if (Terms::r_uses_m) r_factor *= m;
  if (Terms::r_uses_t) r_factor *= t;
  kw = w_factor;
  kr = Terms::has_r ? r_factor : T(0);
}

}  // namespace svfcore
