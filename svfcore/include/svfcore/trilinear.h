// Sampling a volume at a real-valued position (voxel units, voxel centres at integers).
//
// Two border rules, as in DESIGN.md:
//  - fields clamp: the position is clamped to [0, n-1] on every axis (SciPy mode "nearest",
//    torch padding "border");
//  - images read a fill value for every stencil corner outside the grid (SciPy mode
//    "grid-constant", torch padding "zeros" when fill is 0), so values fade continuously
//    into the fill across the last half voxel instead of jumping.
#pragma once

#include <cmath>

#include "svfcore/macros.h"

namespace svfcore {

// Trilinear stencil of a clamped position: the lower corner and the strides to the upper
// corners (0 along an axis of extent 1, where both corners are voxel 0).
struct ClampedStencil {
  int64_t base, di, dj, dk;
  float ti, tj, tk;
};

// Lower corner and weight along one axis. For n >= 2 the lower corner is at most n-2, so the
// upper corner always exists and the weight reaches 1 exactly at the last voxel.
SVF_HOST_DEVICE void clamped_axis(float x, int64_t n, int64_t& lower, float& t, bool& flat) {
  if (n < 2) {
    lower = 0;
    t = 0.f;
    flat = true;
    return;
  }
  const float xc = clamp_to(x, 0.f, static_cast<float>(n - 1));
  int64_t x0 = static_cast<int64_t>(xc);  // xc >= 0, so truncation is floor
  if (x0 > n - 2) x0 = n - 2;
  lower = x0;
  t = xc - static_cast<float>(x0);
  flat = false;
}

SVF_HOST_DEVICE ClampedStencil clamped_stencil(const Grid& g, float x, float y, float z) {
  ClampedStencil s;
  int64_t i0, j0, k0;
  bool fi, fj, fk;
  clamped_axis(x, g.ni, i0, s.ti, fi);
  clamped_axis(y, g.nj, j0, s.tj, fj);
  clamped_axis(z, g.nk, k0, s.tk, fk);
  s.base = g.index(i0, j0, k0);
  s.di = fi ? 0 : g.nj * g.nk;
  s.dj = fj ? 0 : g.nk;
  s.dk = fk ? 0 : 1;
  return s;
}

SVF_HOST_DEVICE float lerp(float a, float b, float t) { return a + t * (b - a); }

// Value of one channel `f` (a whole grid) at the stencil's position.
SVF_HOST_DEVICE float interpolate(const float* f, const ClampedStencil& s) {
  const float* p = f + s.base;
  const float c00 = lerp(p[0], p[s.dk], s.tk);
  const float c01 = lerp(p[s.dj], p[s.dj + s.dk], s.tk);
  const float c10 = lerp(p[s.di], p[s.di + s.dk], s.tk);
  const float c11 = lerp(p[s.di + s.dj], p[s.di + s.dj + s.dk], s.tk);
  return lerp(lerp(c00, c01, s.tj), lerp(c10, c11, s.tj), s.ti);
}

// Trilinear stencil of a position whose corners may lie outside the grid.
struct FillStencil {
  int64_t i0, j0, k0;
  float ti, tj, tk;
  bool inside;  // all eight corners lie in the grid
};

SVF_HOST_DEVICE float floor_limited(float x, int64_t n) {
  // Positions further out than one voxel read only the fill; limiting them keeps the integer
  // conversion defined for any finite displacement.
  return floorf(clamp_to(x, -2.f, static_cast<float>(n + 1)));
}

SVF_HOST_DEVICE FillStencil fill_stencil(const Grid& g, float x, float y, float z) {
  FillStencil s;
  const float fx = floor_limited(x, g.ni), fy = floor_limited(y, g.nj), fz = floor_limited(z, g.nk);
  s.i0 = static_cast<int64_t>(fx);
  s.j0 = static_cast<int64_t>(fy);
  s.k0 = static_cast<int64_t>(fz);
  s.ti = clamp_to(x - fx, 0.f, 1.f);
  s.tj = clamp_to(y - fy, 0.f, 1.f);
  s.tk = clamp_to(z - fz, 0.f, 1.f);
  s.inside = s.i0 >= 0 && s.j0 >= 0 && s.k0 >= 0 && s.i0 + 1 < g.ni && s.j0 + 1 < g.nj && s.k0 + 1 < g.nk;
  return s;
}

SVF_HOST_DEVICE bool in_grid(const Grid& g, int64_t i, int64_t j, int64_t k) {
  return i >= 0 && j >= 0 && k >= 0 && i < g.ni && j < g.nj && k < g.nk;
}

SVF_HOST_DEVICE float value_or_fill(const float* f, const Grid& g, int64_t i, int64_t j, int64_t k, float fill) {
  return in_grid(g, i, j, k) ? f[g.index(i, j, k)] : fill;
}

// Value of one channel `f` at the stencil's position, corners outside the grid reading `fill`.
SVF_HOST_DEVICE float interpolate_fill(const float* f, const Grid& g, const FillStencil& s, float fill) {
  float c[2][2][2];
  if (s.inside) {
    const int64_t di = g.nj * g.nk, dj = g.nk;
    const float* p = f + g.index(s.i0, s.j0, s.k0);
    c[0][0][0] = p[0];
    c[0][0][1] = p[1];
    c[0][1][0] = p[dj];
    c[0][1][1] = p[dj + 1];
    c[1][0][0] = p[di];
    c[1][0][1] = p[di + 1];
    c[1][1][0] = p[di + dj];
    c[1][1][1] = p[di + dj + 1];
  } else {
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b)
        for (int e = 0; e < 2; ++e) c[a][b][e] = value_or_fill(f, g, s.i0 + a, s.j0 + b, s.k0 + e, fill);
  }
  const float c00 = lerp(c[0][0][0], c[0][0][1], s.tk);
  const float c01 = lerp(c[0][1][0], c[0][1][1], s.tk);
  const float c10 = lerp(c[1][0][0], c[1][0][1], s.tk);
  const float c11 = lerp(c[1][1][0], c[1][1][1], s.tk);
  return lerp(lerp(c00, c01, s.tj), lerp(c10, c11, s.tj), s.ti);
}

// Nearest voxel of a position (halves round up), or -1 when it lies outside the grid.
SVF_HOST_DEVICE int64_t nearest_index(const Grid& g, float x, float y, float z) {
  const int64_t i = static_cast<int64_t>(floor_limited(x + 0.5f, g.ni));
  const int64_t j = static_cast<int64_t>(floor_limited(y + 0.5f, g.nj));
  const int64_t k = static_cast<int64_t>(floor_limited(z + 0.5f, g.nk));
  return in_grid(g, i, j, k) ? g.index(i, j, k) : -1;
}

// Label of the largest interpolated indicator at the stencil's position (one-hot trilinear
// interpolation followed by argmax, computed from the eight corners at once). Corners outside
// the grid count as `fill_label`; ties go to the smallest label, as argmax over sorted labels.
SVF_HOST_DEVICE int32_t vote_label(const int32_t* labels, const Grid& g, const FillStencil& s, int32_t fill_label) {
  int32_t seen[8];
  float weight[8];
  int count = 0;
  for (int a = 0; a < 2; ++a) {
    const float wa = a ? s.ti : 1.f - s.ti;
    for (int b = 0; b < 2; ++b) {
      const float wb = wa * (b ? s.tj : 1.f - s.tj);
      for (int e = 0; e < 2; ++e) {
        const float w = wb * (e ? s.tk : 1.f - s.tk);
        const int64_t i = s.i0 + a, j = s.j0 + b, k = s.k0 + e;
        const int32_t label = in_grid(g, i, j, k) ? labels[g.index(i, j, k)] : fill_label;
        int slot = 0;
        while (slot < count && seen[slot] != label) ++slot;
        if (slot == count) {
          seen[count] = label;
          weight[count] = 0.f;
          ++count;
        }
        weight[slot] += w;
      }
    }
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
