// CUDA launcher of the Gaussian kernel sums: one thread per target; the block's threads load a
// tile of sources into shared memory together, then each thread runs over the tile (KeOps'
// tiled reduction). The per-pair math is svfcore::gauss_pair, as on the CPU. Accumulation: in the
// compute type within a tile, in float64 across tiles (as the CPU launcher).
//
// Source values w are taken kMaxColumns columns per launch (registers hold the accumulators);
// wider w is processed in column chunks, the offsets r only with the first chunk.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/cuda_loops.cuh"
#include "ops/gauss/gauss.h"
#include "svfcore/gauss.h"

namespace svfnet {

namespace {

using svfcore::GaussFormula;
using svfcore::GaussTerms;

constexpr int kThreads = 256;
constexpr int kMaxColumns = 16;       // w columns per launch (register accumulators)
constexpr int kRegisterWeights = 16;  // a_i columns kept in registers; more are read from memory
constexpr size_t kSharedBytes = 48 * 1024;

template <GaussFormula F, typename T>
__global__ void __launch_bounds__(kThreads)
    gauss_kernel(GaussArgs<T> args, int64_t column0, int columns, bool with_r, int tile) {
  using Terms = GaussTerms<F>;
  extern __shared__ unsigned char shared_raw[];
  T* shared = reinterpret_cast<T*>(shared_raw);
  const int64_t da = args.da, dw = args.dw;
  T* sy = shared;                                 // (3, tile)
  T* se = sy + 3 * tile;                          // (3, tile) when t is used
  T* sb = se + (Terms::needs_t ? 3 * tile : 0);   // (DA, tile) when m is used
  T* sw = sb + (Terms::needs_m ? da * tile : 0);  // (columns, tile)

  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const bool active = i < args.n;
  T xi0 = T(0), xi1 = T(0), xi2 = T(0), ci0 = T(0), ci1 = T(0), ci2 = T(0);
  T ai[kRegisterWeights];
#pragma unroll
  for (int d = 0; d < kRegisterWeights; ++d) ai[d] = T(0);
  if (active) {
    xi0 = args.x[3 * i], xi1 = args.x[3 * i + 1], xi2 = args.x[3 * i + 2];
    if (Terms::needs_t) ci0 = args.c[3 * i], ci1 = args.c[3 * i + 1], ci2 = args.c[3 * i + 2];
    if (Terms::needs_m) {
#pragma unroll
      for (int d = 0; d < kRegisterWeights; ++d)
        if (d < da) ai[d] = args.a[i * da + d];
    }
  }

  double sum_w[kMaxColumns];
#pragma unroll
  for (int d = 0; d < kMaxColumns; ++d) sum_w[d] = 0.0;
  double sum_r0 = 0.0, sum_r1 = 0.0, sum_r2 = 0.0;

  for (int64_t j0 = 0; j0 < args.m; j0 += tile) {
    const int len = static_cast<int>(min(int64_t(tile), args.m - j0));
    __syncthreads();  // the previous tile has been read by every thread
    for (int jj = threadIdx.x; jj < len; jj += blockDim.x) {
      const int64_t j = j0 + jj;
      for (int d = 0; d < 3; ++d) sy[d * tile + jj] = args.y[3 * j + d];
      if (Terms::needs_t)
        for (int d = 0; d < 3; ++d) se[d * tile + jj] = args.e[3 * j + d];
      if (Terms::needs_m)
        for (int64_t d = 0; d < da; ++d) sb[d * tile + jj] = args.b[j * da + d];
      for (int d = 0; d < columns; ++d) sw[d * tile + jj] = args.w[j * dw + column0 + d];
    }
    __syncthreads();
    if (!active) continue;

    T tile_w[kMaxColumns];
#pragma unroll
    for (int d = 0; d < kMaxColumns; ++d) tile_w[d] = T(0);
    T tile_r0 = T(0), tile_r1 = T(0), tile_r2 = T(0);
    for (int jj = 0; jj < len; ++jj) {
      T m_ij = T(1);
      if (Terms::needs_m) {
        m_ij = T(0);
#pragma unroll
        for (int d = 0; d < kRegisterWeights; ++d)
          if (d < da) m_ij += ai[d] * sb[d * tile + jj];
        for (int64_t d = kRegisterWeights; d < da; ++d) m_ij += args.a[i * da + d] * sb[d * tile + jj];
      }
      const T r0 = xi0 - sy[jj], r1 = xi1 - sy[tile + jj], r2 = xi2 - sy[2 * tile + jj];
      T e0 = T(0), e1 = T(0), e2 = T(0);
      if (Terms::needs_t) e0 = se[jj], e1 = se[tile + jj], e2 = se[2 * tile + jj];
      T kw, kr;
      svfcore::gauss_pair<F>(r0, r1, r2, m_ij, ci0, ci1, ci2, e0, e1, e2, args.inv_sigma2, kw, kr);
#pragma unroll
      for (int d = 0; d < kMaxColumns; ++d)
        if (d < columns) tile_w[d] += kw * sw[d * tile + jj];
      if (Terms::has_r) {
        tile_r0 += kr * r0;
        tile_r1 += kr * r1;
        tile_r2 += kr * r2;
      }
    }
#pragma unroll
    for (int d = 0; d < kMaxColumns; ++d) sum_w[d] += static_cast<double>(tile_w[d]);
    sum_r0 += static_cast<double>(tile_r0);
    sum_r1 += static_cast<double>(tile_r1);
    sum_r2 += static_cast<double>(tile_r2);
  }

  if (!active) return;
#pragma unroll
  for (int d = 0; d < kMaxColumns; ++d)
    if (d < columns) args.out_w[i * dw + column0 + d] = static_cast<T>(sum_w[d]);
  if (Terms::has_r && with_r) {
    args.out_r[3 * i] = static_cast<T>(sum_r0);
    args.out_r[3 * i + 1] = static_cast<T>(sum_r1);
    args.out_r[3 * i + 2] = static_cast<T>(sum_r2);
  }
}

template <GaussFormula F, typename T>
void run(const GaussArgs<T>& args, std::uintptr_t stream) {
  using Terms = GaussTerms<F>;
  if (args.n == 0) return;
  cudaStream_t s = as_stream(stream);
  if (args.m == 0) {  // empty sums
    if (args.dw > 0) check_cuda(cudaMemsetAsync(args.out_w, 0, sizeof(T) * args.n * args.dw, s), "gauss");
    if (Terms::has_r) check_cuda(cudaMemsetAsync(args.out_r, 0, sizeof(T) * args.n * 3, s), "gauss");
    return;
  }
  const int64_t blocks = (args.n + kThreads - 1) / kThreads;
  for (int64_t column0 = 0; column0 == 0 || column0 < args.dw; column0 += kMaxColumns) {
    const int columns = static_cast<int>(std::min<int64_t>(kMaxColumns, args.dw - column0));
    const bool with_r = column0 == 0;
    if (!with_r && columns <= 0) break;
    const int64_t per_source =
        3 + (Terms::needs_t ? 3 : 0) + (Terms::needs_m ? args.da : 0) + std::max(columns, 0);
    const int64_t fit = static_cast<int64_t>(kSharedBytes / (sizeof(T) * per_source));
    if (fit < 1)
      throw std::invalid_argument("gauss_cuda: the weights have too many columns (" +
                                  std::to_string(args.da) + ") for a tile of sources in shared memory");
    const int tile = static_cast<int>(std::min<int64_t>(kThreads, fit));
    const size_t shared = sizeof(T) * per_source * tile;
    gauss_kernel<F, T><<<static_cast<unsigned int>(blocks), kThreads, shared, s>>>(
        args, column0, std::max(columns, 0), with_r, tile);
    check_cuda(cudaGetLastError(), "gauss");
  }
}

template <typename T>
void dispatch(int formula, const GaussArgs<T>& args, std::uintptr_t stream) {
  switch (static_cast<GaussFormula>(formula)) {
    case GaussFormula::Sum:
      return run<GaussFormula::Sum, T>(args, stream);
    case GaussFormula::SumGrad:
      return run<GaussFormula::SumGrad, T>(args, stream);
    case GaussFormula::TSum:
      return run<GaussFormula::TSum, T>(args, stream);
    case GaussFormula::MSumTGrad:
      return run<GaussFormula::MSumTGrad, T>(args, stream);
  }
  throw std::invalid_argument("gauss: unknown formula " + std::to_string(formula));
}

}  // namespace

void gauss_cuda(int formula, const GaussArgs<float>& args, std::uintptr_t stream) {
  dispatch(formula, args, stream);
}
void gauss_cuda(int formula, const GaussArgs<double>& args, std::uintptr_t stream) {
  dispatch(formula, args, stream);
}

}  // namespace svfnet
