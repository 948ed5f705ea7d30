// Sampling a volume at a real-valued position (voxel units, voxel centres at integers).
//
// Two border rules, as in README.md's Conventions:
//  - fields clamp: the position is clamped to [0, n-1] on every axis (SciPy mode "nearest",
//    torch padding "border");
//  - images read a fill value for every stencil corner outside the grid (SciPy mode
//    "grid-constant", torch padding "zeros" when fill is 0), so values fade continuously
//    into the fill across the last half voxel instead of jumping.
//
// The bodies are branch-free (selects, clamped indices, unconditional loads that stay in the
// grid) so that the CPU compiler can vectorise them along k; on the GPU that costs nothing.
#pragma once

#include <cmath>

#include "svfcore/macros.h"

namespace svfcore {

SVF_HOST_DEVICE float lerp(float a, float b, float t) { return a + t * (b - a); }

// Where voxel (i, j, k) lands under a planar 3-component displacement u: (i, j, k) + u(i, j, k).
struct Position {
  float x, y, z;
};

SVF_HOST_DEVICE Position displaced(const float* u, const Grid& g, int i, int j, int k) {
  const int n = static_cast<int>(g.size()), v = g.index(i, j, k);
  return Position{static_cast<float>(i) + u[v], static_cast<float>(j) + u[n + v],
                  static_cast<float>(k) + u[2 * n + v]};
}

// ---------------------------------------------------------------- clamped sampling (fields)

// Trilinear stencil of a clamped position: the lower corner and the strides to the upper
// corners (0 along an axis of extent 1, where both corners are voxel 0).
struct ClampedStencil {
  int base, di, dj, dk;
  float ti, tj, tk;
};

// Lower corner and weight along one axis of extent n >= 1. For n >= 2 the lower corner is at
// most n-2, so the upper corner always exists and the weight reaches 1 exactly at the last voxel.
SVF_HOST_DEVICE void clamped_axis(float x, int n, int& lower, float& t) {
  const float top = static_cast<float>(n > 1 ? n - 1 : 0);
  const float xc = clamp_to(x, 0.f, top);
  const int x0 = static_cast<int>(xc);  // xc >= 0, so truncation is floor
  lower = x0 < n - 2 ? x0 : (n > 1 ? n - 2 : 0);
  t = xc - static_cast<float>(lower);
}

SVF_HOST_DEVICE ClampedStencil clamped_stencil(const Grid& g, float x, float y, float z) {
  ClampedStencil s;
  int i0, j0, k0;
  clamped_axis(x, g.ni, i0, s.ti);
  clamped_axis(y, g.nj, j0, s.tj);
  clamped_axis(z, g.nk, k0, s.tk);
  s.base = g.index(i0, j0, k0);
  s.di = g.ni > 1 ? g.nj * g.nk : 0;
  s.dj = g.nj > 1 ? g.nk : 0;
  s.dk = g.nk > 1 ? 1 : 0;
  return s;
}

// Value of one channel `f` (a whole grid) at the stencil's position. Whole 32-bit indices into one
// base pointer: the form the CPU compiler turns into gathers.
SVF_HOST_DEVICE float interpolate(const float* f, const ClampedStencil& s) {
  const int b = s.base, i = s.di, j = s.dj, k = s.dk;
  const float c00 = lerp(f[b], f[b + k], s.tk);
  const float c01 = lerp(f[b + j], f[b + j + k], s.tk);
  const float c10 = lerp(f[b + i], f[b + i + k], s.tk);
  const float c11 = lerp(f[b + i + j], f[b + i + j + k], s.tk);
  return lerp(lerp(c00, c01, s.tj), lerp(c10, c11, s.tj), s.ti);
}

// Derivative of `interpolate(f, s)` with respect to the position, one value per axis. Along an
// axis of extent 1 both corners are the same voxel, so the derivative is 0 there by itself; a
// caller whose position was clamped along an axis must zero that axis (the clamp's derivative).
struct PositionGradient {
  float i, j, k;
};

SVF_HOST_DEVICE PositionGradient interpolate_gradient(const float* f, const ClampedStencil& s) {
  const int b = s.base, i = s.di, j = s.dj, k = s.dk;
  const float c00 = lerp(f[b], f[b + k], s.tk), c01 = lerp(f[b + j], f[b + j + k], s.tk);
  const float c10 = lerp(f[b + i], f[b + i + k], s.tk), c11 = lerp(f[b + i + j], f[b + i + j + k], s.tk);
  const float dk0 = lerp(f[b + k] - f[b], f[b + j + k] - f[b + j], s.tj);
  const float dk1 = lerp(f[b + i + k] - f[b + i], f[b + i + j + k] - f[b + i + j], s.tj);
  return PositionGradient{lerp(c10, c11, s.tj) - lerp(c00, c01, s.tj), lerp(c01 - c00, c11 - c10, s.ti),
                          lerp(dk0, dk1, s.ti)};
}

// 1 where a position along an axis of extent n is not clamped by clamped_axis, 0 where it is.
SVF_HOST_DEVICE float unclamped(float x, int n) {
  return x >= 0.f && x <= static_cast<float>(n > 1 ? n - 1 : 0) ? 1.f : 0.f;
}

// Adds `value` times each corner's trilinear weight to a planar channel `acc` (the transpose of
// `interpolate`). `add(address, amount)` is the caller's addition, atomic where threads share `acc`.
template <class AtomicAdd>
SVF_HOST_DEVICE void scatter(double* acc, const ClampedStencil& s, double value, const AtomicAdd& add) {
  const int b = s.base, i = s.di, j = s.dj, k = s.dk;
  const double ti = s.ti, tj = s.tj, tk = s.tk;
  const double w0 = value * (1.0 - ti), w1 = value * ti;
  const double w00 = w0 * (1.0 - tj), w01 = w0 * tj, w10 = w1 * (1.0 - tj), w11 = w1 * tj;
  add(acc + b, w00 * (1.0 - tk));
  add(acc + b + k, w00 * tk);
  add(acc + b + j, w01 * (1.0 - tk));
  add(acc + b + j + k, w01 * tk);
  add(acc + b + i, w10 * (1.0 - tk));
  add(acc + b + i + k, w10 * tk);
  add(acc + b + i + j, w11 * (1.0 - tk));
  add(acc + b + i + j + k, w11 * tk);
}

// ---------------------------------------------------------------- sampling with a fill (images)

// One axis of a stencil whose corners may lie outside the grid: the two corners clamped into
// the grid (safe to read) and their weights, zero for a corner outside the grid. Plain ints and
// floats, no bools: that is what lets the CPU compiler keep a stencil in vector registers.
struct FillAxis {
  int lower, upper;
  float lower_weight, upper_weight;
  float t;                           // the geometric weight of the upper corner, inside the grid or not
  float lower_inside, upper_inside;  // 1 where that corner lies in the grid: the weights' derivatives in x
};

SVF_HOST_DEVICE float inside_mask(int x, int n) { return (x >= 0) & (x < n) ? 1.f : 0.f; }

SVF_HOST_DEVICE FillAxis fill_axis(float x, int n) {
  // Positions further out than one voxel read only the fill; limiting them keeps the integer
  // conversion defined for any finite displacement.
  const float limited = clamp_to(x, -2.f, static_cast<float>(n + 1));
  // floor by truncation and correction: floorf is a library call without SSE4.1, which would
  // stop the CPU loop from vectorising
  int x0 = static_cast<int>(limited);
  x0 -= limited < static_cast<float>(x0) ? 1 : 0;
  const float t = limited - static_cast<float>(x0);
  FillAxis a;
  a.lower = clamp_to(x0, 0, n - 1);
  a.upper = clamp_to(x0 + 1, 0, n - 1);
  a.lower_inside = inside_mask(x0, n);
  a.upper_inside = inside_mask(x0 + 1, n);
  a.lower_weight = (1.f - t) * a.lower_inside;
  a.upper_weight = t * a.upper_inside;
  a.t = t;
  return a;
}

struct FillStencil {
  FillAxis i, j, k;
};

SVF_HOST_DEVICE FillStencil fill_stencil(const Grid& g, float x, float y, float z) {
  return FillStencil{fill_axis(x, g.ni), fill_axis(y, g.nj), fill_axis(z, g.nk)};
}

// Value of one channel `f` at the stencil's position, corners outside the grid reading `fill`:
//   value = Σ_corners w·f + fill · (1 − Σ_corners w),
// with unconditional loads at clamped indices: no branch, and independent products rather than
// a chain of dependent lerps.
SVF_HOST_DEVICE float interpolate_fill(const float* f, const Grid& g, const FillStencil& s, float fill) {
  const float wi0 = s.i.lower_weight, wi1 = s.i.upper_weight;
  const float wj0 = s.j.lower_weight, wj1 = s.j.upper_weight;
  const float wk0 = s.k.lower_weight, wk1 = s.k.upper_weight;
  // whole 32-bit indices into one base pointer: the form the CPU compiler turns into gathers
  const int row00 = (s.i.lower * g.nj + s.j.lower) * g.nk, row01 = (s.i.lower * g.nj + s.j.upper) * g.nk;
  const int row10 = (s.i.upper * g.nj + s.j.lower) * g.nk, row11 = (s.i.upper * g.nj + s.j.upper) * g.nk;
  const int k0 = s.k.lower, k1 = s.k.upper;
  const float r00 = wk0 * f[row00 + k0] + wk1 * f[row00 + k1],
              r01 = wk0 * f[row01 + k0] + wk1 * f[row01 + k1];
  const float r10 = wk0 * f[row10 + k0] + wk1 * f[row10 + k1],
              r11 = wk0 * f[row11 + k0] + wk1 * f[row11 + k1];
  const float sum = wi0 * (wj0 * r00 + wj1 * r01) + wi1 * (wj0 * r10 + wj1 * r11);
  const float covered = (wi0 + wi1) * (wj0 + wj1) * (wk0 + wk1);
  return sum + fill * (1.f - covered);
}

// Derivative of `interpolate_fill(f, g, s, fill)` with respect to the position, one value per axis:
// the adjoint a loss needs to move a displacement (warp's gradient in `disp`). Writing the value
// as fill + Σ_corners w·(f − fill), only the weights depend on the position, and along each axis
// d(lower weight)/dx = −(lower corner inside), d(upper weight)/dx = +(upper corner inside). So the
// fill enters as f − fill, corners outside the grid contribute nothing, and positions beyond the
// last half voxel (all corners outside, or limited by fill_axis) have a zero gradient. At an
// integer position the derivative is the one of the cell above (t = 0), as torch's grid_sample.
SVF_HOST_DEVICE PositionGradient interpolate_fill_gradient(const float* f, const Grid& g,
                                                           const FillStencil& s, float fill) {
  const float wi0 = s.i.lower_weight, wi1 = s.i.upper_weight, di0 = -s.i.lower_inside, di1 = s.i.upper_inside;
  const float wj0 = s.j.lower_weight, wj1 = s.j.upper_weight, dj0 = -s.j.lower_inside, dj1 = s.j.upper_inside;
  const float wk0 = s.k.lower_weight, wk1 = s.k.upper_weight, dk0 = -s.k.lower_inside, dk1 = s.k.upper_inside;
  const int row00 = (s.i.lower * g.nj + s.j.lower) * g.nk, row01 = (s.i.lower * g.nj + s.j.upper) * g.nk;
  const int row10 = (s.i.upper * g.nj + s.j.lower) * g.nk, row11 = (s.i.upper * g.nj + s.j.upper) * g.nk;
  const int k0 = s.k.lower, k1 = s.k.upper;
  const float a00 = f[row00 + k0] - fill, b00 = f[row00 + k1] - fill, a01 = f[row01 + k0] - fill,
              b01 = f[row01 + k1] - fill;
  const float a10 = f[row10 + k0] - fill, b10 = f[row10 + k1] - fill, a11 = f[row11 + k0] - fill,
              b11 = f[row11 + k1] - fill;
  // each row's value along k, and its derivative along k
  const float r00 = wk0 * a00 + wk1 * b00, r01 = wk0 * a01 + wk1 * b01;
  const float r10 = wk0 * a10 + wk1 * b10, r11 = wk0 * a11 + wk1 * b11;
  const float q00 = dk0 * a00 + dk1 * b00, q01 = dk0 * a01 + dk1 * b01;
  const float q10 = dk0 * a10 + dk1 * b10, q11 = dk0 * a11 + dk1 * b11;
  return PositionGradient{di0 * (wj0 * r00 + wj1 * r01) + di1 * (wj0 * r10 + wj1 * r11),
                          wi0 * (dj0 * r00 + dj1 * r01) + wi1 * (dj0 * r10 + dj1 * r11),
                          wi0 * (wj0 * q00 + wj1 * q01) + wi1 * (wj0 * q10 + wj1 * q11)};
}

// Nearest voxel of a position (halves round up), clamped into the grid; `inside` is 1 when the
// unclamped voxel lies in the grid, 0 otherwise.
SVF_HOST_DEVICE int nearest_index(const Grid& g, float x, float y, float z, float& inside) {
  const FillAxis a = fill_axis(x + 0.5f, g.ni), b = fill_axis(y + 0.5f, g.nj), c = fill_axis(z + 0.5f, g.nk);
  // the lower corner of x + 0.5 is the nearest voxel; its weight is > 0 exactly when it is inside
  // (or the position sits exactly half way, which then rounds up into the grid or out of it)
  // the lower corner of x + 0.5 is the nearest voxel, and its weight 1 - t is never 0: it is
  // positive exactly when that voxel lies in the grid
  inside = (a.lower_weight > 0.f) & (b.lower_weight > 0.f) & (c.lower_weight > 0.f) ? 1.f : 0.f;
  return g.index(a.lower, b.lower, c.lower);
}

// Label of the largest interpolated indicator at the stencil's position (one-hot trilinear
// interpolation followed by argmax, computed from the eight corners at once). Corners outside
// the grid count as `fill_label`; ties go to the smallest label, as argmax over sorted labels.
SVF_HOST_DEVICE int32_t vote_label(const int32_t* labels, const Grid& g, const FillStencil& s,
                                   int32_t fill_label) {
  int32_t seen[8];
  float weight[8];
  int count = 0;
  for (int corner = 0; corner < 8; ++corner) {
    const FillAxis* axes[3] = {&s.i, &s.j, &s.k};
    int index[3];
    float w = 1.f;
    bool inside = true;
    for (int axis = 0; axis < 3; ++axis) {
      const bool upper = (corner >> (2 - axis)) & 1;
      const FillAxis& a = *axes[axis];
      index[axis] = upper ? a.upper : a.lower;
      w *= upper ? a.t : 1.f - a.t;
      // a lower corner's masked weight is positive exactly when it lies in the grid; an upper
      // corner with t = 0 has no weight, so it does not matter whether it does
      inside = inside && (upper ? a.upper_weight > 0.f || a.t == 0.f : a.lower_weight > 0.f);
    }
    const int32_t label = inside ? labels[g.index(index[0], index[1], index[2])] : fill_label;
    int slot = 0;
    while (slot < count && seen[slot] != label) ++slot;
    if (slot == count) {
      seen[count] = label;
      weight[count] = 0.f;
      ++count;
    }
    weight[slot] += w;
  }
  int32_t best = seen[0];
  float best_weight = weight[0];
  for (int slot = 1; slot < count; ++slot) {
    if (weight[slot] > best_weight || (weight[slot] == best_weight && seen[slot] < best)) {
      best = seen[slot];
      best_weight = weight[slot];
    }
  }
  return best;
}

}  // namespace svfcore
