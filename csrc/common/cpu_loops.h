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

// ---- Small work runs on the calling thread.
// A parallel region costs a few microseconds on a quiet machine, but when another process keeps a
// core busy it waits at its barrier for a thread the scheduler has not run yet: milliseconds,
// whatever the work (norm_stats on 64x64x16 went from 0.04 to 6.7 ms, a smoothing from 0.2 to 30 ms).
// So every parallel region of a CPU launcher counts its work and, below min_parallel_work(), runs on
// the calling thread: `#pragma omp parallel ... if (parallel_worth(work))`.
//
// Work is counted in voxel-operations, scaled so that one is about a nanosecond of one core (the
// per-element costs of each launcher, kCost* next to its loops, were measured on the 2-core
// reference machine, docs/performance.md): the threshold reads as the single-thread time below
// which a second thread is not worth its wait.
//
// The default, kDefaultMinParallelWork, was chosen by measurement with the second core loaded
// (benchmarks/small_work.py, docs/performance.md). The environment variable SVFNET_MIN_PARALLEL_WORK
// (a non-negative integer, read once when svfnet._core is imported) overrides it; 0 makes every
// region parallel, as before the threshold existed. svfnet.build_info()["min_parallel_work"] reports
// the value in force; _core.set_min_parallel_work() changes it (tests and benchmarks).
constexpr int64_t kDefaultMinParallelWork = 2500000;

// The threshold in force (first call: SVFNET_MIN_PARALLEL_WORK or the default; throws
// std::invalid_argument naming the variable when it is set to anything but a non-negative integer).
int64_t min_parallel_work();
// Sets the threshold (>= 0) and returns the previous one.
int64_t set_min_parallel_work(int64_t work);

// Whether a region of `work` voxel-operations runs on the team (else on the calling thread).
inline bool parallel_worth(int64_t work) { return work >= min_parallel_work(); }

// body(b, i, j, k) for every k of one row.
template <class Body>
SVFNET_CPU_CLONES void walk_row(const Body& body, int64_t b, int i, int j, int nk) {
  const Body row_body = body;  // a local copy, so the compiler keeps its fields in registers
#pragma omp simd
  for (int k = 0; k < nk; ++k) row_body(b, i, j, k);
}

// Calls body(b, i, j, k) for every voxel of `batch` grids, in a parallel region of its own (on the
// calling thread when batch × voxels × cost, the voxel-operations, is below min_parallel_work()).
template <class Body>
void for_each_voxel(int64_t batch, const svfcore::Grid& g, int threads, int64_t cost, const Body& body) {
  const int64_t rows = batch * g.ni * g.nj;  // (b, i, j) rows
#pragma omp parallel for schedule(static) \
    num_threads(omp_threads(threads)) if (parallel_worth(rows * g.nk * cost))
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t b = row / (int64_t(g.ni) * g.nj);
    walk_row(body, b, static_cast<int>((row / g.nj) % g.ni), static_cast<int>(row % g.nj), g.nk);
  }
}

}  // namespace svfnet
