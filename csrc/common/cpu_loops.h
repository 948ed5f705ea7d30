// How CPU launchers walk the index space: OpenMP over rows (batch, i, j), k innermost so that
// neighbouring iterations read neighbouring memory and the compiler can vectorise along k.
// `threads` <= 0 lets OpenMP choose; the Python layer passes the thread count torch uses.
#pragma once

#include <cstdint>

#include "svfcore/macros.h"

#ifdef _OPENMP
#include <omp.h>
#endif

// On x86-64 Linux each row walk is compiled twice, for the baseline ISA and for AVX2 (whose
// gathers the sampling loops use), and the loader picks the one the processor supports; the
// build itself stays portable (no -march). CMake option SVFNET_CPU_CLONES=OFF builds the baseline
// only (CI uses it to test that path too).
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(SVFNET_NO_CPU_CLONES)
#define SVFNET_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SVFNET_CPU_CLONES
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

// body(b, i, j, k) for every k of one row.
template <class Body>
SVFNET_CPU_CLONES void walk_row(const Body& body, int64_t b, int i, int j, int nk) {
  const Body row_body = body;  // a local copy, so the compiler keeps its fields in registers
#pragma omp simd
  for (int k = 0; k < nk; ++k) row_body(b, i, j, k);
}

// Calls body(b, i, j, k) for every voxel of `batch` grids, in a parallel region of its own.
template <class Body>
void for_each_voxel(int64_t batch, const svfcore::Grid& g, int threads, const Body& body) {
  const int64_t rows = batch * g.ni * g.nj;  // (b, i, j) rows
#pragma omp parallel for schedule(static) num_threads(omp_threads(threads))
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t b = row / (int64_t(g.ni) * g.nj);
    walk_row(body, b, static_cast<int>((row / g.nj) % g.ni), static_cast<int>(row % g.nj), g.nk);
  }
}

}  // namespace svfnet
