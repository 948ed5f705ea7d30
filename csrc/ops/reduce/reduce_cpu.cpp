#include <cmath>
#include <cstdint>

#include "common/cpu_loops.h"
#include "ops/reduce/reduce.h"
#include "ops/reduce/reduce_body.h"
#include "svfcore/compose.h"

namespace svfnet {

namespace {
// Voxel-operations a voxel of each loop (cpu_loops.h: about a nanosecond of one core each); the
// finiteness check costs a quarter of one a value.
constexpr int64_t kNormCost = 1, kNormWithinCost = 6, kNormWithinFieldCost = 2, kValuesPerCheck = 4;
}  // namespace

std::pair<float, double> norm_stats_cpu(const float* field, const Batch& shape, int threads) {
  const int64_t voxels = shape.grid.size(), rows = shape.batch * shape.grid.ni * shape.grid.nj;
  const int nk = shape.grid.nk;
  float max_norm = 0.f;
  double sum = 0.0;
  // rows in parallel; within a row a float sum that vectorises, rows added up in double
#pragma omp parallel for schedule(static) reduction(max : max_norm) reduction(+ : sum) \
    num_threads(omp_threads(threads)) if (parallel_worth(voxels * shape.batch * kNormCost))
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t b = row / (int64_t(shape.grid.ni) * shape.grid.nj),
                  first = (row % (int64_t(shape.grid.ni) * shape.grid.nj)) * nk;
    const float* f = field + b * 3 * voxels;
    float row_max = 0.f, row_sum = 0.f;
#pragma omp simd reduction(max : row_max) reduction(+ : row_sum)
    for (int k = 0; k < nk; ++k) {
      const float norm = svfcore::norm_at(f, voxels, first + k);
      row_max = norm > row_max ? norm : row_max;
      row_sum += norm;
    }
    max_norm = row_max > max_norm ? row_max : max_norm;
    sum += row_sum;
  }
  return {max_norm, voxels * shape.batch > 0 ? sum / static_cast<double>(voxels * shape.batch) : 0.0};
}

std::tuple<float, double, int64_t> norm_stats_within_cpu(const float* field, const float* u,
                                                         const Batch& shape, int threads) {
  const svfcore::Grid& g = shape.grid;
  const int64_t voxels = g.size(), rows = shape.batch * g.ni * g.nj;
  float max_norm = 0.f;
  double sum = 0.0;
  int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(max : max_norm) reduction(+ : sum, count) \
    num_threads(omp_threads(threads)) if (parallel_worth(voxels * shape.batch * kNormWithinCost))
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t b = row / (int64_t(g.ni) * g.nj), in_volume = row % (int64_t(g.ni) * g.nj);
    const int i = static_cast<int>(in_volume / g.nj), j = static_cast<int>(in_volume % g.nj);
    const float* f = field + b * 3 * voxels;
    const float* d = u + b * 3 * voxels;
    float row_max = 0.f, row_sum = 0.f;
    int row_count = 0;
    for (int k = 0; k < g.nk; ++k) {
      const bool inside = svfcore::lands_inside(d, g, i, j, k);
      const float norm = inside ? svfcore::norm_at(f, voxels, g.index(i, j, k)) : 0.f;
      row_max = norm > row_max ? norm : row_max;
      row_sum += norm;
      row_count += inside ? 1 : 0;
    }
    max_norm = row_max > max_norm ? row_max : max_norm;
    sum += row_sum;
    count += row_count;
  }
  return {max_norm, count > 0 ? sum / static_cast<double>(count) : 0.0, count};
}

void norm_within_cpu(const float* field, const float* u, float* out, const Batch& shape, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads, kNormWithinFieldCost,
                 NormWithinBody{field, u, out, shape.grid});
}

int64_t count_nonfinite_cpu(const float* data, int64_t count, int threads) {
  // A value is NaN or infinite when its exponent bits are all ones: an integer test on the bits, which
  // the compiler vectorises (std::isfinite in this loop did not: 0.63 ns a value on one core, now
  // about a fifth of that), counted in 32 bits within a chunk and in 64 bits over the chunks.
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (count + kChunk - 1) / kChunk;
  const auto* bits = reinterpret_cast<const uint32_t*>(data);
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) \
    num_threads(omp_threads(threads)) if (parallel_worth(count / kValuesPerCheck))
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t first = chunk * kChunk, last = first + kChunk < count ? first + kChunk : count;
    int32_t in_chunk = 0;
#pragma omp simd reduction(+ : in_chunk)
    for (int64_t t = first; t < last; ++t) in_chunk += (bits[t] & 0x7f800000u) == 0x7f800000u ? 1 : 0;
    bad += in_chunk;
  }
  return bad;
}

}  // namespace svfnet
