// Entry points of smooth and local_moments for csrc/bindings.cpp: NumPy arrays on the CPU, device
// addresses on the GPU. The Python layer (svfnet/smoothing.py) checks, builds the taps (smooth_taps)
// and allocates; the checks here only guard the extension against misuse and raise ValueError
// naming the argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/arrays.h"
#include "ops/smooth/smooth.h"
#include "svfcore/smooth.h"

namespace svfnet {

// The folded half taps of one axis: a Gaussian of `sigma` voxels (0: no pass) cut at `truncate`
// standard deviations, on an axis of `extent` voxels (svfcore::gaussian_half_taps).
inline py::array_t<double> smooth_taps(double sigma, double truncate, int64_t extent) {
  if (!std::isfinite(sigma) || sigma < 0)
    throw std::invalid_argument("smooth_taps: 'sigma' must be finite and >= 0");
  if (!std::isfinite(truncate) || truncate <= 0)
    throw std::invalid_argument("smooth_taps: 'truncate' must be finite and > 0");
  if (extent < 1 || extent >= (int64_t(1) << 31))
    throw std::invalid_argument("smooth_taps: 'extent' must be >= 1");
  if (truncate * sigma >= double(1 << 30)) throw std::invalid_argument("smooth_taps: 'sigma' is too large");
  const int radius = sigma > 0 ? svfcore::gaussian_radius(sigma, truncate) : 0;
  py::array_t<double> taps(svfcore::folded_tap_count(radius, static_cast<int>(extent)));
  svfcore::gaussian_half_taps(sigma, radius, static_cast<int>(extent), taps.mutable_data());
  return taps;
}

// radii[a] >= 0 and taps holding radii[a] + 1 values per axis, a single tap being 1.
inline void check_smooth_taps(const DoubleArray& taps, const SmoothRadii& radii) {
  int64_t count = 0;
  for (int a = 0; a < 3; ++a) {
    if (radii[a] < 0) throw std::invalid_argument("'radii' must be >= 0");
    if (radii[a] == 0 && taps.size() > count && taps.data()[count] != 1.0)
      throw std::invalid_argument("'taps': an axis of radius 0 must have the single tap 1");
    count += radii[a] + 1;
  }
  if (taps.ndim() != 1 || taps.size() != count)
    throw std::invalid_argument("'taps' must hold radii[a] + 1 values for each axis a, " +
                                std::to_string(count) + " in all");
}

inline void smooth_cpu_entry(const FloatArray& in, FloatArray& out, FloatArray& scratch,
                             const DoubleArray& taps, const SmoothRadii& radii, int threads) {
  const Batch s = batch_of(in, "in");
  require_same_shape(s, "in", batch_of(out, "out"), "out");
  require_same_shape(s, "in", batch_of(scratch, "scratch"), "scratch");
  check_smooth_taps(taps, radii);
  py::gil_scoped_release release;
  smooth_cpu(in.data(), out.mutable_data(), scratch.mutable_data(), s, taps.data(), radii, threads);
}

inline void local_moments_cpu_entry(const FloatArray& a, const FloatArray& b, FloatArray& out,
                                    FloatArray& scratch, const DoubleArray& taps, const SmoothRadii& radii,
                                    float floor_a, float floor_b, int threads) {
  const Batch s = batch_of(a, "a"), o = batch_of(out, "out"), r = batch_of(scratch, "scratch");
  require_channels(s, "a", 1);
  require_same_shape(s, "a", batch_of(b, "b"), "b");
  require_channels(o, "out", svfcore::kLocalMoments);
  require_same_grid(s, "a", o, "out");
  require_channels(r, "scratch", svfcore::kMomentSums);
  require_same_grid(s, "a", r, "scratch");
  check_smooth_taps(taps, radii);
  py::gil_scoped_release release;
  local_moments_cpu(a.data(), b.data(), out.mutable_data(), scratch.mutable_data(), s, taps.data(), radii,
                    floor_a, floor_b, threads);
}

#ifdef SVFNET_WITH_CUDA
using Shape5 = std::array<int64_t, 5>;

// Device addresses, then `shape` (N, C, I, J, K) of `in` (of `a` for local_moments, C = 1) as
// Backend.launch passes them; `taps` a float64 device array laid out as on the CPU (the caller
// built it with smooth_taps).
inline void smooth_cuda_entry(std::uintptr_t in, std::uintptr_t out, std::uintptr_t scratch,
                              std::uintptr_t taps, const Shape5& shape, const SmoothRadii& radii,
                              std::uintptr_t stream) {
  for (int a = 0; a < 3; ++a)
    if (radii[a] < 0) throw std::invalid_argument("'radii' must be >= 0");
  smooth_cuda(reinterpret_cast<const float*>(in), reinterpret_cast<float*>(out),
              reinterpret_cast<float*>(scratch),
              batch_from_dims(shape[0], shape[1], shape[2], shape[3], shape[4]),
              reinterpret_cast<const double*>(taps), radii, stream);
}

inline void local_moments_cuda_entry(std::uintptr_t a, std::uintptr_t b, std::uintptr_t out,
                                     std::uintptr_t scratch, std::uintptr_t taps, const Shape5& shape,
                                     const SmoothRadii& radii, float floor_a, float floor_b,
                                     std::uintptr_t stream) {
  for (int axis = 0; axis < 3; ++axis)
    if (radii[axis] < 0) throw std::invalid_argument("'radii' must be >= 0");
  if (shape[1] != 1) throw std::invalid_argument("'a' must have 1 channel");
  local_moments_cuda(reinterpret_cast<const float*>(a), reinterpret_cast<const float*>(b),
                     reinterpret_cast<float*>(out), reinterpret_cast<float*>(scratch),
                     batch_from_dims(shape[0], shape[1], shape[2], shape[3], shape[4]),
                     reinterpret_cast<const double*>(taps), radii, floor_a, floor_b, stream);
}
#endif

}  // namespace svfnet
