// Separable Gaussian smoothing, as scipy.ndimage.gaussian_filter with mode="nearest": one 1D
// convolution per axis, the border replicated, and the local moments of two images that the local
// correlation coefficient (LCC) needs.
//
// The kernel of one axis is SciPy's: radius r = int(truncate σ + 0.5) voxels, weights
// exp(-t² / 2σ²) for t = -r..r divided by their sum (in double). It is symmetric, so a pass keeps
// the r + 1 half taps w[0..r]:
//
//   out(x) = w[0] f(x) + Σ_{t=1..r} w[t] (f(clamp(x - t)) + f(clamp(x + t)))
//
// with clamp to [0, n - 1] (the "nearest" border: the line's ends replicated however wide the
// kernel). Every offset t ≥ n − 1 reads f(n − 1) (or f(0)) from every x, so the taps beyond n − 1
// are folded into w[n − 1]: the result is the same and the pass never costs more than the line.
#pragma once

#include <cmath>

#include "svfcore/macros.h"

// The runs' loops read inputs and write accumulators that never overlap (see scaled_copy).
#define SVF_RESTRICT __restrict__

namespace svfcore {

// SciPy's radius of a Gaussian of `sigma` voxels cut at `truncate` standard deviations.
SVF_HOST_DEVICE int gaussian_radius(double sigma, double truncate) {
  return static_cast<int>(truncate * sigma + 0.5);
}

// The number of half taps of an axis of `extent` voxels: min(radius, extent − 1) + 1.
SVF_HOST_DEVICE int folded_tap_count(int radius, int extent) {
  const int last = extent - 1;
  return (radius < last ? radius : last) + 1;
}

// Writes the folded half taps w[0..folded_tap_count(radius, extent) − 1] of a Gaussian of `sigma`
// (> 0) voxels with `radius`, normalised over the full kernel −radius..radius (as SciPy, in double).
// A single tap (radius 0, or an axis of one voxel) is exactly 1: no pass.
inline void gaussian_half_taps(double sigma, int radius, int extent, double* taps) {
  if (folded_tap_count(radius, extent) == 1) {
    taps[0] = 1.0;
    return;
  }
  const double c = -0.5 / (sigma * sigma);
  double sum = 0.0;
  for (int t = -radius; t <= radius; ++t) sum += std::exp(c * t * t);
  const int count = folded_tap_count(radius, extent);
  for (int t = 0; t < count; ++t) taps[t] = std::exp(c * t * t) / sum;
  for (int t = count; t <= radius; ++t) taps[count - 1] += std::exp(c * t * t) / sum;
}

SVF_HOST_DEVICE int clamp_index(int x, int n) { return clamp_to(x, 0, n - 1); }

// The five windowed sums behind the local moments of images a and b: G*a, G*b, G*a², G*b², G*ab.
enum MomentChannel : int { kSumA = 0, kSumB = 1, kSumAA = 2, kSumBB = 3, kSumAB = 4, kMomentSums = 5 };
// The local moments as stored: mean_a, mean_b, var_a, var_b, cov, and Λ.
enum LocalMomentChannel : int {
  kMeanA = 0,
  kMeanB = 1,
  kVarA = 2,
  kVarB = 3,
  kCov = 4,
  kLcc = 5,
  kLocalMoments = 6
};

// The 1D convolution at position `pos` of a line of `n` values `line[0], line[stride], ...` with
// the half taps w[0..radius] (radius ≤ n − 1), accumulated in Acc.
template <typename Acc, typename Tap>
SVF_HOST_DEVICE Acc smooth_line_at(const float* line, int stride, int n, int pos, const Tap* w, int radius) {
  Acc sum = Acc(w[0]) * Acc(line[pos * stride]);
  for (int t = 1; t <= radius; ++t)
    sum += Acc(w[t]) *
           (Acc(line[clamp_index(pos - t, n) * stride]) + Acc(line[clamp_index(pos + t, n) * stride]));
  return sum;
}

// The line of a grid through (i, j, k) along `axis`: its first voxel's offset, stride, length and
// the position of (i, j, k) on it.
struct GridLine {
  int start, stride, n, pos;
};

template <int Axis>
SVF_HOST_DEVICE GridLine grid_line(const Grid& g, int i, int j, int k) {
  if (Axis == 0) return GridLine{g.index(0, j, k), g.nj * g.nk, g.ni, i};
  if (Axis == 1) return GridLine{g.index(i, 0, k), g.nk, g.nj, j};
  return GridLine{g.index(i, j, 0), 1, g.nk, k};
}

// ---- One voxel at a time (the CUDA launchers: one thread per voxel)

// One pass of the separable smoothing at (i, j, k): f convolved along Axis.
template <int Axis, typename Acc, typename Tap>
SVF_HOST_DEVICE float smooth_axis_at(const float* f, const Grid& g, const Tap* w, int radius, int i, int j,
                                     int k) {
  const GridLine l = grid_line<Axis>(g, i, j, k);
  return static_cast<float>(smooth_line_at<Acc>(f + l.start, l.stride, l.n, l.pos, w, radius));
}

// ---- Runs of rows (the CPU launchers): the same sums in the same order, organised so that the
// inner loops run over long contiguous memory and vectorise. A pass across rows (axis 0 with rows of
// nj nk values, axis 1 with rows of nk) sees a block of n rows of `length` values; the rows whose
// partners p ∓ t are inside the block are one contiguous run per tap, the few near the ends are
// done one by one with clamped partners. A pass along k pads each row (pad_row) so that every
// shift is in bounds, and runs over many padded rows at once.
//
// A kernel holds the data and the accumulators (acc[x] for x = 0..count − 1 of the run):
//   centre(src, dst, count):         acc[dst + x] = w[0] f[src + x]
//   pair(t, lo, hi, dst, count):     acc[dst + x] += w[t] (f[lo + x] + f[hi + x])
// offsets relative to the block's first value; SmoothKernel (one image) and ProductsKernel (the
// five products of two images) below.

// The taps of rows p0 .. p1 − 1 of a block of n rows of `length` values, into acc[(p − p0) length + x].
template <class Kernel>
SVF_HOST_DEVICE void block_taps(const Kernel& kernel, int n, int64_t length, int p0, int p1, int radius) {
  kernel.centre(p0 * length, 0, (p1 - p0) * length);
  for (int t = 1; t <= radius; ++t) {
    const int i0 = p0 > t ? p0 : t, i1 = p1 < n - t ? p1 : n - t;  // rows with both partners inside
    if (i0 < i1) kernel.pair(t, (i0 - t) * length, (i0 + t) * length, (i0 - p0) * length, (i1 - i0) * length);
    for (int p = p0; p < p1; ++p)
      if (p < i0 || p >= i1)
        kernel.pair(t, clamp_index(p - t, n) * length, clamp_index(p + t, n) * length, (p - p0) * length,
                    length);
  }
}

// The taps along `count` padded values (every shift ∓t in bounds), into acc[x].
template <class Kernel>
SVF_HOST_DEVICE void padded_taps(const Kernel& kernel, int64_t count, int radius) {
  kernel.centre(0, 0, count);
  for (int t = 1; t <= radius; ++t) kernel.pair(t, -t, t, 0, count);
}

// `row` with its end values replicated `radius` times on each side, into padded[0 .. nk + 2 radius);
// the row itself starts at padded + radius.
SVF_HOST_DEVICE void pad_row(const float* row, int nk, int radius, float* padded) {
  for (int t = 0; t < radius; ++t) padded[t] = row[0], padded[radius + nk + t] = row[nk - 1];
  for (int k = 0; k < nk; ++k) padded[radius + k] = row[k];
}

// The loops of the kernels, their streams restrict parameters: compilers honour that through
// inlining and vectorise with no run-time alias checks (read-only streams may overlap).
template <typename Acc>
SVF_HOST_DEVICE void scaled_copy(const float* SVF_RESTRICT in, Acc w0, Acc* SVF_RESTRICT out, int64_t count) {
  for (int64_t x = 0; x < count; ++x) out[x] = w0 * Acc(in[x]);
}

template <typename Acc>
SVF_HOST_DEVICE void add_pair(const float* SVF_RESTRICT below, const float* SVF_RESTRICT above, Acc wt,
                              Acc* SVF_RESTRICT out, int64_t count) {
  for (int64_t x = 0; x < count; ++x) out[x] += wt * (Acc(below[x]) + Acc(above[x]));
}

template <typename Acc, typename Tap>
struct SmoothKernel {
  const float* f;
  const Tap* w;
  Acc* acc;

  SVF_HOST_DEVICE void centre(int64_t src, int64_t dst, int64_t count) const {
    scaled_copy(f + src, Acc(w[0]), acc + dst, count);
  }
  SVF_HOST_DEVICE void pair(int t, int64_t lo, int64_t hi, int64_t dst, int64_t count) const {
    add_pair(f + lo, f + hi, Acc(w[t]), acc + dst, count);
  }
};

// The loops of ProductsKernel (a and b may be one image).
template <typename Acc>
SVF_HOST_DEVICE void products_centre(const float* SVF_RESTRICT pa, const float* SVF_RESTRICT pb, Acc w0,
                                     Acc* SVF_RESTRICT sa, Acc* SVF_RESTRICT sb, Acc* SVF_RESTRICT saa,
                                     Acc* SVF_RESTRICT sbb, Acc* SVF_RESTRICT sab, int64_t count) {
  for (int64_t x = 0; x < count; ++x) {
    const Acc va = pa[x], vb = pb[x];
    sa[x] = w0 * va, sb[x] = w0 * vb, saa[x] = w0 * (va * va), sbb[x] = w0 * (vb * vb),
    sab[x] = w0 * (va * vb);
  }
}

template <typename Acc>
SVF_HOST_DEVICE void products_pair(const float* SVF_RESTRICT a0s, const float* SVF_RESTRICT a1s,
                                   const float* SVF_RESTRICT b0s, const float* SVF_RESTRICT b1s, Acc wt,
                                   Acc* SVF_RESTRICT sa, Acc* SVF_RESTRICT sb, Acc* SVF_RESTRICT saa,
                                   Acc* SVF_RESTRICT sbb, Acc* SVF_RESTRICT sab, int64_t count) {
  for (int64_t x = 0; x < count; ++x) {
    const Acc a0 = a0s[x], a1 = a1s[x], b0 = b0s[x], b1 = b1s[x];
    sa[x] += wt * (a0 + a1);
    sb[x] += wt * (b0 + b1);
    saa[x] += wt * (a0 * a0 + a1 * a1);
    sbb[x] += wt * (b0 * b0 + b1 * b1);
    sab[x] += wt * (a0 * b0 + a1 * b1);
  }
}

// The first pass of the local moments: the five products of a and b, read at the same offsets,
// into acc[c * channel + x] for the five sums c.
template <typename Acc, typename Tap>
struct ProductsKernel {
  const float* a;
  const float* b;
  const Tap* w;
  Acc* acc;
  int64_t channel;

  SVF_HOST_DEVICE Acc* sums(int c, int64_t dst) const { return acc + c * channel + dst; }
  SVF_HOST_DEVICE void centre(int64_t src, int64_t dst, int64_t count) const {
    products_centre(a + src, b + src, Acc(w[0]), sums(kSumA, dst), sums(kSumB, dst), sums(kSumAA, dst),
                    sums(kSumBB, dst), sums(kSumAB, dst), count);
  }
  SVF_HOST_DEVICE void pair(int t, int64_t lo, int64_t hi, int64_t dst, int64_t count) const {
    products_pair(a + lo, a + hi, b + lo, b + hi, Acc(w[t]), sums(kSumA, dst), sums(kSumB, dst),
                  sums(kSumAA, dst), sums(kSumBB, dst), sums(kSumAB, dst), count);
  }
};

// The first pass of the local moments at (i, j, k): the five products of a and b convolved along
// `axis` (radius 0 with w[0] = 1: the products themselves), rounded to float32 as a pass's output.
template <int Axis, typename Acc, typename Tap>
SVF_HOST_DEVICE void moment_products_axis_at(const float* a, const float* b, const Grid& g, const Tap* w,
                                             int radius, int i, int j, int k, float sums[kMomentSums]) {
  const GridLine l = grid_line<Axis>(g, i, j, k);
  const float* la = a + l.start;
  const float* lb = b + l.start;
  Acc s[kMomentSums];
  {
    const Acc va = la[l.pos * l.stride], vb = lb[l.pos * l.stride], w0 = w[0];
    s[kSumA] = w0 * va, s[kSumB] = w0 * vb;
    s[kSumAA] = w0 * (va * va), s[kSumBB] = w0 * (vb * vb), s[kSumAB] = w0 * (va * vb);
  }
  for (int t = 1; t <= radius; ++t) {
    const int lo = clamp_index(l.pos - t, l.n) * l.stride, hi = clamp_index(l.pos + t, l.n) * l.stride;
    const Acc a0 = la[lo], a1 = la[hi], b0 = lb[lo], b1 = lb[hi], wt = w[t];
    s[kSumA] += wt * (a0 + a1);
    s[kSumB] += wt * (b0 + b1);
    s[kSumAA] += wt * (a0 * a0 + a1 * a1);
    s[kSumBB] += wt * (b0 * b0 + b1 * b1);
    s[kSumAB] += wt * (a0 * b0 + a1 * b1);
  }
  for (int c = 0; c < kMomentSums; ++c) sums[c] = static_cast<float>(s[c]);
}

// A later pass at (i, j, k): each of the five sums (channels `channel_stride` apart) convolved
// along `axis`.
template <int Axis, typename Acc, typename Tap>
SVF_HOST_DEVICE void moment_sums_axis_at(const float* in, int64_t channel_stride, const Grid& g, const Tap* w,
                                         int radius, int i, int j, int k, float sums[kMomentSums]) {
  for (int c = 0; c < kMomentSums; ++c)
    sums[c] = smooth_axis_at<Axis, Acc>(in + c * channel_stride, g, w, radius, i, j, k);
}

SVF_HOST_DEVICE void store_moment_sums(float* out, int64_t channel_stride, int x,
                                       const float sums[kMomentSums]) {
  for (int c = 0; c < kMomentSums; ++c) out[c * channel_stride + x] = sums[c];
}

// The local moments from the five windowed sums, float32 throughout as NumPy would:
// var_a = max(G*a² − mean_a², 0) + floor_a (the rounding negatives clamped before the floor; likewise
// b), cov = G*ab − mean_a mean_b, Λ = cov / sqrt(var_a var_b) clipped to [−1, 1] (NaN stays NaN, as
// np.clip).
struct LocalMoments {
  float mean_a, mean_b, var_a, var_b, cov, lcc;
};

SVF_HOST_DEVICE LocalMoments local_moments_of(float sum_a, float sum_b, float sum_aa, float sum_bb,
                                              float sum_ab, float floor_a, float floor_b) {
  const float spread_a = sum_aa - sum_a * sum_a, spread_b = sum_bb - sum_b * sum_b;
  const float var_a = (spread_a > 0.f ? spread_a : 0.f) + floor_a;
  const float var_b = (spread_b > 0.f ? spread_b : 0.f) + floor_b;
  const float cov = sum_ab - sum_a * sum_b;
  const float lcc = cov / sqrtf(var_a * var_b);
  return LocalMoments{sum_a, sum_b, var_a, var_b, cov, lcc < -1.f ? -1.f : (lcc > 1.f ? 1.f : lcc)};
}

// The moments at voxel x, channels `channel_stride` apart (kMeanA .. kLcc).
SVF_HOST_DEVICE void store_local_moments(float* out, int64_t channel_stride, int x,
                                         const float sums[kMomentSums], float floor_a, float floor_b) {
  const LocalMoments m =
      local_moments_of(sums[kSumA], sums[kSumB], sums[kSumAA], sums[kSumBB], sums[kSumAB], floor_a, floor_b);
  out[kMeanA * channel_stride + x] = m.mean_a;
  out[kMeanB * channel_stride + x] = m.mean_b;
  out[kVarA * channel_stride + x] = m.var_a;
  out[kVarB * channel_stride + x] = m.var_b;
  out[kCov * channel_stride + x] = m.cov;
  out[kLcc * channel_stride + x] = m.lcc;
}

}  // namespace svfcore
