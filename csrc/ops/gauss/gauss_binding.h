// Entry points of the Gaussian kernel sums for csrc/bindings.cpp: NumPy arrays on the CPU, device
// addresses on the GPU. The Python layer (svfnet/kernels.py) checks and allocates; the checks here
// only guard the extension against misuse and raise ValueError naming the argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops/gauss/gauss.h"

namespace svfnet {

namespace py = pybind11;

template <typename T>
using RowsArray = py::array_t<T, py::array::c_style>;

// Columns of a (rows, columns) array, checked; columns < 0 accepts any width.
template <typename T>
int64_t gauss_columns(const RowsArray<T>& a, const char* name, int64_t rows, int64_t columns) {
  if (a.ndim() != 2 || a.shape(0) != rows || (columns >= 0 && a.shape(1) != columns))
    throw std::invalid_argument(std::string("gauss: '") + name + "' must be (" + std::to_string(rows) + ", " +
                                (columns >= 0 ? std::to_string(columns) : std::string("D")) + ")");
  return a.shape(1);
}

template <typename T>
const T* gauss_data(const RowsArray<T>& a) {
  return a.size() > 0 ? a.data() : nullptr;
}

// formula: svfcore::GaussFormula; arguments the formula does not use may be any 2D array.
template <typename T>
void gauss_cpu_entry(int formula, const RowsArray<T>& x, const RowsArray<T>& y, const RowsArray<T>& a,
                     const RowsArray<T>& b, const RowsArray<T>& c, const RowsArray<T>& e,
                     const RowsArray<T>& w, RowsArray<T>& out_w, RowsArray<T>& out_r, double inv_sigma2,
                     int threads) {
  if (formula < 0 || formula > 3) throw std::invalid_argument("gauss: 'formula' must be 0..3");
  if (!std::isfinite(inv_sigma2) || inv_sigma2 <= 0)
    throw std::invalid_argument("gauss: 'inv_sigma2' must be positive and finite");
  if (x.ndim() != 2 || x.shape(1) != 3) throw std::invalid_argument("gauss: 'x' must be (N, 3)");
  if (y.ndim() != 2 || y.shape(1) != 3) throw std::invalid_argument("gauss: 'y' must be (M, 3)");
  const int64_t n = x.shape(0), m = y.shape(0);
  const bool needs_m = formula == 1 || formula == 3, needs_t = formula == 2 || formula == 3,
             has_r = formula == 1 || formula == 3;
  // unused arguments are not looked at (the Python layer passes (0, 0) arrays)
  const int64_t da = needs_m ? gauss_columns(a, "a", n, -1) : 0;
  if (needs_m) gauss_columns(b, "b", m, da);
  if (needs_t) gauss_columns(c, "c", n, 3), gauss_columns(e, "e", m, 3);
  const int64_t dw = gauss_columns(w, "w", m, -1);
  gauss_columns(out_w, "out_w", n, dw);
  if (has_r) gauss_columns(out_r, "out_r", n, 3);
  GaussArgs<T> args{x.data(),
                    y.data(),
                    n,
                    m,
                    needs_m ? gauss_data(a) : nullptr,
                    needs_m ? gauss_data(b) : nullptr,
                    da,
                    needs_t ? gauss_data(c) : nullptr,
                    needs_t ? gauss_data(e) : nullptr,
                    gauss_data(w),
                    dw,
                    out_w.size() > 0 ? out_w.mutable_data() : nullptr,
                    has_r && out_r.size() > 0 ? out_r.mutable_data() : nullptr,
                    static_cast<T>(inv_sigma2)};
  py::gil_scoped_release release;
  gauss_cpu(formula, args, threads);
}

#ifdef SVFNET_WITH_CUDA
// Addresses of C-contiguous device arrays; sizes (N, M, DA, DW); null (0) for unused arguments.
template <typename T>
void gauss_cuda_entry(int formula, std::uintptr_t x, std::uintptr_t y, std::uintptr_t a, std::uintptr_t b,
                      std::uintptr_t c, std::uintptr_t e, std::uintptr_t w, std::uintptr_t out_w,
                      std::uintptr_t out_r, int64_t n, int64_t m, int64_t da, int64_t dw, double inv_sigma2,
                      std::uintptr_t stream) {
  if (formula < 0 || formula > 3) throw std::invalid_argument("gauss: 'formula' must be 0..3");
  if (!std::isfinite(inv_sigma2) || inv_sigma2 <= 0)
    throw std::invalid_argument("gauss: 'inv_sigma2' must be positive and finite");
  if (n < 0 || m < 0 || da < 0 || dw < 0) throw std::invalid_argument("gauss: sizes must be non-negative");
  auto ptr = [](std::uintptr_t address) { return reinterpret_cast<const T*>(address); };
  GaussArgs<T> args{ptr(x),
                    ptr(y),
                    n,
                    m,
                    ptr(a),
                    ptr(b),
                    da,
                    ptr(c),
                    ptr(e),
                    ptr(w),
                    dw,
                    reinterpret_cast<T*>(out_w),
                    reinterpret_cast<T*>(out_r),
                    static_cast<T>(inv_sigma2)};
  gauss_cuda(formula, args, stream);
}
#endif

}  // namespace svfnet
