// smooth and local_moments: separable Gaussian smoothing as scipy.ndimage.gaussian_filter with
// mode="nearest" (svfcore/smooth.h), and the local moments of two images under that window.
//
// Arguments (C-contiguous float32 on one grid):
//   taps: the folded half taps of axes 0, 1 and 2 one after the other, radii[a] + 1 float64 values
//         each (svfcore::gaussian_half_taps; radius 0 with the single tap 1 is no pass on that axis).
//   smooth:        in (N, C, I, J, K) -> out (N, C, I, J, K); scratch (N, C, I, J, K) holds the
//                  intermediate passes, which alternate between out and scratch so the last writes out.
//   local_moments: a, b (N, 1, I, J, K) -> out (N, 6, I, J, K) = mean_a, mean_b, var_a, var_b, cov, Λ
//                  (svfcore::store_local_moments, variance floors floor_a and floor_b);
//                  scratch (N, 5, I, J, K). The first pass reads a and b and convolves their five
//                  products at once; the last one writes the moments.
// One pass per axis whose radius is > 0, axes in order 0, 1, 2 (as SciPy), each rounded to float32.
#pragma once

#include <array>
#include <cstdint>

#include "common/batch.h"

namespace svfnet {

using SmoothRadii = std::array<int, 3>;

// The axes with a pass, in order, and where each tap array starts in `taps`.
struct SmoothPasses {
  int axes[3];
  int count;
  int64_t tap_offset[3];  // per axis 0, 1, 2

  explicit SmoothPasses(const SmoothRadii& radii) : axes{0, 0, 0}, count(0), tap_offset{0, 0, 0} {
    int64_t offset = 0;
    for (int a = 0; a < 3; ++a) {
      tap_offset[a] = offset;
      offset += radii[a] + 1;
      if (radii[a] > 0) axes[count++] = a;
    }
  }
  // Pass q writes `out` when an even number of passes follow it, else the scratch buffer.
  bool writes_out(int q) const { return (count - 1 - q) % 2 == 0; }
};

void smooth_cpu(const float* in, float* out, float* scratch, const Batch& shape, const double* taps,
                const SmoothRadii& radii, int threads);
void local_moments_cpu(const float* a, const float* b, float* out, float* scratch, const Batch& shape,
                       const double* taps, const SmoothRadii& radii, float floor_a, float floor_b,
                       int threads);

#ifdef SVFNET_WITH_CUDA
// taps: a device address.
void smooth_cuda(const float* in, float* out, float* scratch, const Batch& shape, const double* taps,
                 const SmoothRadii& radii, std::uintptr_t stream);
void local_moments_cuda(const float* a, const float* b, float* out, float* scratch, const Batch& shape,
                        const double* taps, const SmoothRadii& radii, float floor_a, float floor_b,
                        std::uintptr_t stream);
#endif

}  // namespace svfnet
