#include <cmath>

#include "common/cpu_loops.h"
#include "ops/reduce/reduce.h"
#include "svfcore/compose.h"

namespace svfnet {

std::pair<float, double> norm_stats_cpu(const float* field, const Batch& shape, int threads) {
  const int64_t voxels = shape.grid.size(), total = shape.batch * voxels;
  float max_norm = 0.f;
  double sum = 0.0;
#pragma omp parallel for schedule(static) reduction(max : max_norm) reduction(+ : sum) num_threads(omp_threads(threads))
  for (int64_t t = 0; t < total; ++t) {
    const float norm = svfcore::norm_at(field + (t / voxels) * 3 * voxels, voxels, t % voxels);
    max_norm = norm > max_norm ? norm : max_norm;
    sum += norm;
  }
  return {max_norm, total > 0 ? sum / static_cast<double>(total) : 0.0};
}

int64_t count_nonfinite_cpu(const float* data, int64_t count, int threads) {
  int64_t bad = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : bad) num_threads(omp_threads(threads))
  for (int64_t t = 0; t < count; ++t) bad += std::isfinite(data[t]) ? 0 : 1;
  return bad;
}

}  // namespace svfnet
