// gauss: tiled Gaussian kernel sums over targets x_i and sources y_j (see svfcore/gauss.h for the
// formulas). One call computes, for every target i,
//
//   out_w_i = Σ_j k_ij · f_w(i, j) · w_j  and (formulas SumGrad, MSumTGrad)  out_r_i = Σ_j k_ij · f_r(i, j) ·
//   r_ij
//
// Arguments (C-contiguous, row-major, all of one dtype: float32, or float64 for reference work):
//   x (N, 3) targets, y (M, 3) sources, in any length unit; inv_sigma2 = 1/σ² in that unit
//   a (N, DA), b (M, DA): pair weight m_ij = a_i·b_j   (formulas SumGrad, MSumTGrad; else unused)
//   c (N, 3), e (M, 3):   pair projection t_ij = (c_i - e_j)·r_ij (TSum, MSumTGrad; else unused)
//   w (M, DW):            source values; DW may be 0 (then out_w is not written)
//   out_w (N, DW), out_r (N, 3): outputs, allocated by the caller, overwritten
// Unused arguments may be null. Accumulation: in the compute type within a tile of sources, in
// float64 across tiles. M = 0 gives zeros.
#pragma once

#include <cstdint>

namespace svfnet {

template <typename T>
struct GaussArgs {
  const T* x;
  const T* y;
  int64_t n, m;
  const T* a;
  const T* b;
  int64_t da;
  const T* c;
  const T* e;
  const T* w;
  int64_t dw;
  T* out_w;
  T* out_r;
  T inv_sigma2;
};

// `formula` is a svfcore::GaussFormula value (0 Sum, 1 SumGrad, 2 TSum, 3 MSumTGrad).
void gauss_cpu(int formula, const GaussArgs<float>& args, int threads);
void gauss_cpu(int formula, const GaussArgs<double>& args, int threads);

// Which instruction set the CPU launcher picked on this machine ("avx512", "avx2" or "baseline").
const char* gauss_cpu_isa();

#ifdef SVFNET_WITH_CUDA
void gauss_cuda(int formula, const GaussArgs<float>& args, std::uintptr_t stream);
void gauss_cuda(int formula, const GaussArgs<double>& args, std::uintptr_t stream);
#endif

}  // namespace svfnet
