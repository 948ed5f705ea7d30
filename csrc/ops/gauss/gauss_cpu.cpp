// CPU launcher of the Gaussian kernel sums: OpenMP over blocks of targets; for each block, the
// sources are walked in tiles that stay in L1 while every target of the block visits them; the
// inner loops run over the sources of a tile, in structure-of-arrays layout, so that they
// vectorise (the per-pair math is svfcore::gauss_pair, branch-free).
//
// The vector width is chosen at run time: the same loops are compiled for AVX-512, AVX2 and the
// baseline instruction set (function target attributes, no -march flag), and the widest the CPU
// supports runs. Wheels stay portable; no run-time compilation.
#include <algorithm>
#include <stdexcept>
#include <vector>

#include "common/cpu_loops.h"
#include "ops/gauss/gauss.h"
#include "svfcore/gauss.h"

#if defined(__x86_64__) || defined(__SSE__)
#include <xmmintrin.h>
#define SVFNET_GAUSS_MXCSR 1
#else
#define SVFNET_GAUSS_MXCSR 0
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SVFNET_GAUSS_X86_VARIANTS 1
#define SVFNET_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SVFNET_GAUSS_X86_VARIANTS 0
#define SVFNET_ALWAYS_INLINE inline
#endif

namespace svfnet {

namespace {

using svfcore::GaussFormula;
using svfcore::GaussTerms;

constexpr int64_t kSourceTile = 256;  // sources per tile: 256 · (6 + DA + DW) values stay in L1
constexpr int64_t kTargetBlock = 32;  // targets that share one pass over the source tiles
// Voxel-operations (cpu_loops.h: about a nanosecond of one core each) a target-source pair costs.
constexpr int64_t kPairCost = 2;

// The sources transposed to structure-of-arrays (column d of w at w[d * m]), so that the loops
// over a tile read contiguous memory.
template <typename T>
struct Sources {
  std::vector<T> y, e, b, w;  // (3, M), (3, M), (DA, M), (DW, M)
};

template <typename T>
std::vector<T> transposed(const T* rows, int64_t count, int64_t columns) {
  std::vector<T> out(static_cast<size_t>(count * columns));
  for (int64_t j = 0; j < count; ++j)
    for (int64_t d = 0; d < columns; ++d) out[d * count + j] = rows[j * columns + d];
  return out;
}

// Accumulators of one target block: float64 across tiles.
struct BlockSums {
  std::vector<double> w, r;  // (kTargetBlock, DW), (kTargetBlock, 3)
};

// Targets [begin, end) (at most kTargetBlock of them) against all sources.
template <GaussFormula F, typename T>
SVFNET_ALWAYS_INLINE void block_body(const GaussArgs<T>& args, const Sources<T>& src, int64_t begin,
                                     int64_t end, BlockSums& sums) {
  using Terms = GaussTerms<F>;
  const int64_t m = args.m, da = args.da, dw = args.dw;
  std::fill(sums.w.begin(), sums.w.end(), 0.0);
  std::fill(sums.r.begin(), sums.r.end(), 0.0);
  alignas(64) T kw[kSourceTile];
  alignas(64) T kr[kSourceTile];
  alignas(64) T pair_m[kSourceTile];

  for (int64_t j0 = 0; j0 < m; j0 += kSourceTile) {
    const int64_t len = std::min(kSourceTile, m - j0);
    const T* __restrict__ y0 = src.y.data() + j0;
    const T* __restrict__ y1 = y0 + m;
    const T* __restrict__ y2 = y1 + m;
    const T* __restrict__ e0 = Terms::needs_t ? src.e.data() + j0 : nullptr;
    const T* __restrict__ e1 = Terms::needs_t ? e0 + m : nullptr;
    const T* __restrict__ e2 = Terms::needs_t ? e1 + m : nullptr;

    for (int64_t i = begin; i < end; ++i) {
      const T xi0 = args.x[3 * i], xi1 = args.x[3 * i + 1], xi2 = args.x[3 * i + 2];
      T ci0 = T(0), ci1 = T(0), ci2 = T(0);
      if (Terms::needs_t) ci0 = args.c[3 * i], ci1 = args.c[3 * i + 1], ci2 = args.c[3 * i + 2];

      // m_ij = a_i · b_j for the tile, column by column (each pass vectorises over j)
      if (Terms::needs_m) {
        std::fill(pair_m, pair_m + len, T(0));
        for (int64_t d = 0; d < da; ++d) {
          const T ad = args.a[i * da + d];
          const T* __restrict__ bd = src.b.data() + d * m + j0;
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) pair_m[j] += ad * bd[j];
        }
      }

      // per-pair weights: the Gaussian and its factors
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) {
        const T m_ij = Terms::needs_m ? pair_m[j] : T(1);
        const T ej0 = Terms::needs_t ? e0[j] : T(0), ej1 = Terms::needs_t ? e1[j] : T(0),
                ej2 = Terms::needs_t ? e2[j] : T(0);
        svfcore::gauss_pair<F>(xi0 - y0[j], xi1 - y1[j], xi2 - y2[j], m_ij, ci0, ci1, ci2, ej0, ej1, ej2,
                               args.inv_sigma2, kw[j], kr[j]);
      }

      // tile sums in T, added to the float64 block sums
      double* __restrict__ sum_w = sums.w.data() + (i - begin) * dw;
      for (int64_t d = 0; d < dw; ++d) {
        const T* __restrict__ wd = src.w.data() + d * m + j0;
        T tile = T(0);
#pragma omp simd reduction(+ : tile)
        for (int64_t j = 0; j < len; ++j) tile += kw[j] * wd[j];
        sum_w[d] += static_cast<double>(tile);
      }
      if (Terms::has_r) {
        T tile0 = T(0), tile1 = T(0), tile2 = T(0);
#pragma omp simd reduction(+ : tile0, tile1, tile2)
        for (int64_t j = 0; j < len; ++j) {
          tile0 += kr[j] * (xi0 - y0[j]);
          tile1 += kr[j] * (xi1 - y1[j]);
          tile2 += kr[j] * (xi2 - y2[j]);
        }
        double* sum_r = sums.r.data() + (i - begin) * 3;
        sum_r[0] += static_cast<double>(tile0);
        sum_r[1] += static_cast<double>(tile1);
        sum_r[2] += static_cast<double>(tile2);
      }
    }
  }

  for (int64_t i = begin; i < end; ++i) {
    for (int64_t d = 0; d < dw; ++d) args.out_w[i * dw + d] = static_cast<T>(sums.w[(i - begin) * dw + d]);
    if (Terms::has_r)
      for (int64_t d = 0; d < 3; ++d) args.out_r[i * 3 + d] = static_cast<T>(sums.r[(i - begin) * 3 + d]);
  }
}

template <GaussFormula F, typename T>
void block_baseline(const GaussArgs<T>& args, const Sources<T>& src, int64_t begin, int64_t end,
                    BlockSums& sums) {
  block_body<F, T>(args, src, begin, end, sums);
}

#if SVFNET_GAUSS_X86_VARIANTS
template <GaussFormula F, typename T>
__attribute__((target("avx2,fma"))) void block_avx2(const GaussArgs<T>& args, const Sources<T>& src,
                                                    int64_t begin, int64_t end, BlockSums& sums) {
  block_body<F, T>(args, src, begin, end, sums);
}

template <GaussFormula F, typename T>
__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512"))) void block_avx512(
    const GaussArgs<T>& args, const Sources<T>& src, int64_t begin, int64_t end, BlockSums& sums) {
  block_body<F, T>(args, src, begin, end, sums);
}
#endif

enum class Isa { Baseline, Avx2, Avx512 };

Isa detect_isa() {
#if SVFNET_GAUSS_X86_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Baseline;
}

Isa isa() {
  static const Isa detected = detect_isa();
  return detected;
}

template <GaussFormula F, typename T>
void run(const GaussArgs<T>& args, int threads) {
  using Terms = GaussTerms<F>;
  const int64_t n = args.n, m = args.m;
  if (n == 0) return;
  if (m == 0) {  // empty sums
    std::fill(args.out_w, args.out_w + n * args.dw, T(0));
    if (Terms::has_r) std::fill(args.out_r, args.out_r + n * 3, T(0));
    return;
  }
  Sources<T> src;
  src.y = transposed(args.y, m, 3);
  if (Terms::needs_t) src.e = transposed(args.e, m, 3);
  if (Terms::needs_m) src.b = transposed(args.b, m, args.da);
  src.w = transposed(args.w, m, args.dw);

  using Block = void (*)(const GaussArgs<T>&, const Sources<T>&, int64_t, int64_t, BlockSums&);
  Block block = &block_baseline<F, T>;
#if SVFNET_GAUSS_X86_VARIANTS
  if (isa() == Isa::Avx512)
    block = &block_avx512<F, T>;
  else if (isa() == Isa::Avx2)
    block = &block_avx2<F, T>;
#endif

  const int64_t blocks = (n + kTargetBlock - 1) / kTargetBlock;
  // Small sums (LDDMM's control points, template points against them, meshes of a thousand
  // triangles) run on the calling thread (cpu_loops.h): a parallel region would gain little there
  // and wait for every thread at its barrier, on a busy machine a wait for a scheduler time slice,
  // measured as a 5-8x slow-down of a whole registration.
  const int64_t team =
      parallel_worth(n * m * kPairCost) ? std::min<int64_t>(omp_threads(threads), blocks) : 1;
#pragma omp parallel num_threads(static_cast<int>(team))
  {
#if SVFNET_GAUSS_MXCSR
    // Flush subnormals to zero while this kernel runs: far pairs give weights near exp(-87) whose
    // products with small values are subnormal, and x86 cores take ~100 cycles per subnormal
    // operation (a 3-10x slow-down once LDDMM momenta are non-zero). Values below 1e-38 are lost.
    const unsigned int saved_mxcsr = _mm_getcsr();
    _mm_setcsr(saved_mxcsr | 0x8040);  // FTZ | DAZ
#endif
    BlockSums sums;  // per thread: no shared accumulator, no race
    sums.w.resize(static_cast<size_t>(kTargetBlock * args.dw));
    sums.r.resize(static_cast<size_t>(kTargetBlock * 3));
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < blocks; ++blk)
      block(args, src, blk * kTargetBlock, std::min(n, (blk + 1) * kTargetBlock), sums);
#if SVFNET_GAUSS_MXCSR
    _mm_setcsr(saved_mxcsr);
#endif
  }
}

template <typename T>
void dispatch(int formula, const GaussArgs<T>& args, int threads) {
  switch (static_cast<GaussFormula>(formula)) {
    case GaussFormula::Sum:
      return run<GaussFormula::Sum, T>(args, threads);
    case GaussFormula::SumGrad:
      return run<GaussFormula::SumGrad, T>(args, threads);
    case GaussFormula::TSum:
      return run<GaussFormula::TSum, T>(args, threads);
    case GaussFormula::MSumTGrad:
      return run<GaussFormula::MSumTGrad, T>(args, threads);
  }
  throw std::invalid_argument("gauss: unknown formula " + std::to_string(formula));
}

}  // namespace

void gauss_cpu(int formula, const GaussArgs<float>& args, int threads) { dispatch(formula, args, threads); }
void gauss_cpu(int formula, const GaussArgs<double>& args, int threads) { dispatch(formula, args, threads); }

const char* gauss_cpu_isa() {
  switch (isa()) {
    case Isa::Avx512:
      return "avx512";
    case Isa::Avx2:
      return "avx2";
    default:
      return "baseline";
  }
}

}  // namespace svfnet
