// The per-voxel body of ebs_grid, shared by the CPU and CUDA launchers. Walked volume b is the
// b-th group of up to kEbsFitsPerPass fits.
#pragma once

#include "ops/ebs/ebs.h"
#include "svfcore/ebs.h"

namespace svfnet {

struct EbsGridBody {
  EbsFits fits;
  EbsGrid where;
  float* out;

  SVF_HOST_DEVICE void operator()(int64_t b, int i, int j, int k) const {
    constexpr int per_pass = svfcore::kEbsFitsPerPass;
    const int first = static_cast<int>(b) * per_pass;
    const int fits_here = fits.fits - first < per_pass ? fits.fits - first : per_pass;
    double u[per_pass][3];
    svfcore::ebs_displacement(where.origin[0] + i * where.step[0], where.origin[1] + j * where.step[1],
                              where.origin[2] + k * where.step[2], fits.landmarks, fits.count,
                              fits.coefficients + int64_t(first) * fits.count * 3, fits.affine + 12 * first,
                              fits_here, fits.alpha, u);
    const int64_t n = where.grid.size();
    const int v = where.grid.index(i, j, k);
    for (int f = 0; f < fits_here; ++f)
      for (int c = 0; c < 3; ++c)
        out[(first + f) * 3 * n + c * n + v] = static_cast<float>(u[f][c] * where.out_scale[c]);
  }
};

}  // namespace svfnet
