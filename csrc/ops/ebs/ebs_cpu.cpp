#include <algorithm>
#include <cmath>

#include "common/cpu_loops.h"
#include "ops/ebs/ebs.h"
#include "ops/ebs/ebs_body.h"

namespace svfnet {

namespace {

constexpr int kChunk = 16;  // voxels of one row evaluated together
constexpr int kFits = svfcore::kEbsFitsPerPass;
// Voxel-operations (cpu_loops.h: about a nanosecond of one core each) a landmark costs a voxel of
// one fit: vectorised over the voxels of a chunk on the grid, one point at a time at points.
constexpr int64_t kGridCost = 2, kPointCost = 10;

// One chunk of up to kChunk voxels along k of row (i, j), for up to kFits fits. The CPU walks the
// landmarks outside and the voxels inside, so that the innermost loop (over voxels) vectorises;
// the per-landmark term is svfcore::ebs_accumulate, as on the GPU.
SVFNET_CPU_CLONES void ebs_chunk(const EbsFits& fits, const EbsGrid& where, int first_fit, int i, int j,
                                 int k0, int width, float* out) {
  const int fits_here = std::min(kFits, fits.fits - first_fit);
  const double* coefficients = fits.coefficients + int64_t(first_fit) * fits.count * 3;
  const double x = where.origin[0] + i * where.step[0], y = where.origin[1] + j * where.step[1];
  double z[kChunk];
  for (int v = 0; v < kChunk; ++v) z[v] = where.origin[2] + (k0 + std::min(v, width - 1)) * where.step[2];
  double acc[kFits][3][kChunk];
  for (int f = 0; f < fits_here; ++f) {
    const double* a = fits.affine + 12 * (first_fit + f);
    for (int v = 0; v < kChunk; ++v) {
      acc[f][0][v] = a[0] * x + a[3] * y + a[6] * z[v] + a[9];
      acc[f][1][v] = a[1] * x + a[4] * y + a[7] * z[v] + a[10];
      acc[f][2][v] = a[2] * x + a[5] * y + a[8] * z[v] + a[11];
    }
  }
  for (int k = 0; k < fits.count; ++k) {
    const double* p = fits.landmarks + 3 * k;
    const double rx = x - p[0], ry = y - p[1];
    double rz[kChunk], r2[kChunk], r[kChunk];
#pragma omp simd
    for (int v = 0; v < kChunk; ++v) {
      rz[v] = z[v] - p[2];
      r2[v] = rx * rx + ry * ry + rz[v] * rz[v];
      r[v] = std::sqrt(r2[v]);
    }
    for (int f = 0; f < fits_here; ++f) {
      const double* c = coefficients + 3 * (int64_t(f) * fits.count + k);
#pragma omp simd
      for (int v = 0; v < kChunk; ++v)
        svfcore::ebs_accumulate(rx, ry, rz[v], r2[v], r[v], fits.alpha, c, acc[f][0][v], acc[f][1][v],
                                acc[f][2][v]);
    }
  }
  const int64_t n = where.grid.size();
  const int base = where.grid.index(i, j, k0);
  for (int f = 0; f < fits_here; ++f)
    for (int c = 0; c < 3; ++c)
      for (int v = 0; v < width; ++v)
        out[(first_fit + f) * 3 * n + c * n + base + v] =
            static_cast<float>(acc[f][c][v] * where.out_scale[c]);
}

}  // namespace

void ebs_grid_cpu(const EbsFits& fits, const EbsGrid& where, float* out, int threads) {
  const svfcore::Grid& g = where.grid;
  const int passes = (fits.fits + kFits - 1) / kFits;
  const int chunks = (g.nk + kChunk - 1) / kChunk;
  const int64_t tasks = int64_t(passes) * g.ni * g.nj * chunks;
  const int64_t work = g.size() * fits.count * fits.fits * kGridCost;
#pragma omp parallel for schedule(dynamic, 16) num_threads(omp_threads(threads)) if (parallel_worth(work))
  for (int64_t task = 0; task < tasks; ++task) {
    const int chunk = static_cast<int>(task % chunks);
    const int64_t row = task / chunks;
    const int j = static_cast<int>(row % g.nj), i = static_cast<int>((row / g.nj) % g.ni);
    const int pass = static_cast<int>(row / (int64_t(g.ni) * g.nj));
    const int k0 = chunk * kChunk;
    ebs_chunk(fits, where, pass * kFits, i, j, k0, std::min(kChunk, g.nk - k0), out);
  }
}

void ebs_points_cpu(const EbsFits& fits, const double* points, int64_t count, double* out, int threads) {
  const int64_t work = count * fits.count * fits.fits * kPointCost;
#pragma omp parallel for schedule(static) num_threads(omp_threads(threads)) if (parallel_worth(work))
  for (int64_t p = 0; p < count; ++p) {
    for (int first = 0; first < fits.fits; first += kFits) {
      const int fits_here = std::min(kFits, fits.fits - first);
      double u[kFits][3];
      svfcore::ebs_displacement(points[3 * p], points[3 * p + 1], points[3 * p + 2], fits.landmarks,
                                fits.count, fits.coefficients + int64_t(first) * fits.count * 3,
                                fits.affine + 12 * first, fits_here, fits.alpha, u);
      for (int f = 0; f < fits_here; ++f)
        for (int c = 0; c < 3; ++c) out[((first + f) * count + p) * 3 + c] = u[f][c];
    }
  }
}

}  // namespace svfnet
