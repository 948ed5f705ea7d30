// How CPU launchers walk the index space: OpenMP over rows (batch, i, j), k innermost so that
// neighbouring iterations read neighbouring memory. `threads` <= 0 lets OpenMP choose; the Python
// layer passes the thread count torch uses.
#pragma once

#include <cstdint>

#include "svfcore/macros.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace svfnet {

inline int omp_threads(int threads) {
#ifdef _OPENMP
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

// Calls body(b, i, j, k) for every voxel of `batch` grids, in a parallel region of its own.
template <class Body>
void for_each_voxel(int64_t batch, const svfcore::Grid& g, int threads, Body body) {
  const int64_t rows = batch * g.ni * g.nj;
#pragma omp parallel for schedule(static) num_threads(omp_threads(threads))
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t b = row / (g.ni * g.nj);
    const int64_t i = (row / g.nj) % g.ni;
    const int64_t j = row % g.nj;
    for (int64_t k = 0; k < g.nk; ++k) body(b, i, j, k);
  }
}

// The same walk for use inside an open parallel region (work shared, barrier at the end).
template <class Body>
void for_each_voxel_shared(int64_t batch, const svfcore::Grid& g, Body body) {
  const int64_t rows = batch * g.ni * g.nj;
#pragma omp for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t b = row / (g.ni * g.nj);
    const int64_t i = (row / g.nj) % g.ni;
    const int64_t j = row % g.nj;
    for (int64_t k = 0; k < g.nk; ++k) body(b, i, j, k);
  }
}

}  // namespace svfnet
