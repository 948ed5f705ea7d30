// Python entry points of the EBS evaluation (called from svfnet/ebs.py), registered by bindings.cpp.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>

#include "common/batch.h"
#include "ops/ebs/ebs.h"

namespace svfnet {

namespace py = pybind11;
using DoubleArray = py::array_t<double, py::array::c_style>;

inline EbsFits ebs_fits_of(const DoubleArray& landmarks, const DoubleArray& coefficients,
                           const DoubleArray& affine, double alpha) {
  if (landmarks.ndim() != 2 || landmarks.shape(1) != 3)
    throw std::invalid_argument("'landmarks' must be (K, 3)");
  const int64_t count = landmarks.shape(0);
  if (coefficients.ndim() != 3 || coefficients.shape(1) != count || coefficients.shape(2) != 3)
    throw std::invalid_argument("'coefficients' must be (M, K, 3) with the landmarks' K");
  const int64_t fits = coefficients.shape(0);
  if (affine.ndim() != 3 || affine.shape(0) != fits || affine.shape(1) != 4 || affine.shape(2) != 3)
    throw std::invalid_argument("'affine' must be (M, 4, 3) with the coefficients' M");
  if (count >= (int64_t(1) << 31) || fits >= (int64_t(1) << 31))
    throw std::invalid_argument("too many landmarks or fits");
  return EbsFits{landmarks.data(), static_cast<int>(count), coefficients.data(),
                 affine.data(),    static_cast<int>(fits),  alpha};
}

inline EbsGrid ebs_grid_of(const std::array<int64_t, 3>& shape, const std::array<double, 3>& origin,
                           const std::array<double, 3>& step, const std::array<double, 3>& out_scale) {
  const Batch b = batch_from_dims(1, 1, shape[0], shape[1], shape[2]);
  return EbsGrid{b.grid,
                 {origin[0], origin[1], origin[2]},
                 {step[0], step[1], step[2]},
                 {out_scale[0], out_scale[1], out_scale[2]}};
}

inline void bind_ebs(py::module_& m) {
  m.def(
      "ebs_grid_cpu",
      [](const DoubleArray& landmarks, const DoubleArray& coefficients, const DoubleArray& affine,
         double alpha, const std::array<double, 3>& origin, const std::array<double, 3>& step,
         const std::array<double, 3>& out_scale, py::array_t<float, py::array::c_style>& out, int threads) {
        const EbsFits fits = ebs_fits_of(landmarks, coefficients, affine, alpha);
        if (out.ndim() != 5 || out.shape(0) != fits.fits || out.shape(1) != 3)
          throw std::invalid_argument("'out' must be (M, 3, I, J, K) with the coefficients' M");
        const EbsGrid grid = ebs_grid_of({out.shape(2), out.shape(3), out.shape(4)}, origin, step, out_scale);
        float* target = out.mutable_data();
        py::gil_scoped_release release;
        ebs_grid_cpu(fits, grid, target, threads);
      },
      py::arg("landmarks").noconvert(), py::arg("coefficients").noconvert(), py::arg("affine").noconvert(),
      py::arg("alpha"), py::arg("origin"), py::arg("step"), py::arg("out_scale"), py::arg("out").noconvert(),
      py::arg("threads"));
  m.def(
      "ebs_points_cpu",
      [](const DoubleArray& landmarks, const DoubleArray& coefficients, const DoubleArray& affine,
         double alpha, const DoubleArray& points, DoubleArray& out, int threads) {
        const EbsFits fits = ebs_fits_of(landmarks, coefficients, affine, alpha);
        if (points.ndim() != 2 || points.shape(1) != 3)
          throw std::invalid_argument("'points' must be (P, 3)");
        if (out.ndim() != 3 || out.shape(0) != fits.fits || out.shape(1) != points.shape(0) ||
            out.shape(2) != 3)
          throw std::invalid_argument("'out' must be (M, P, 3)");
        const double* where = points.data();
        const int64_t count = points.shape(0);
        double* target = out.mutable_data();
        py::gil_scoped_release release;
        ebs_points_cpu(fits, where, count, target, threads);
      },
      py::arg("landmarks").noconvert(), py::arg("coefficients").noconvert(), py::arg("affine").noconvert(),
      py::arg("alpha"), py::arg("points").noconvert(), py::arg("out").noconvert(), py::arg("threads"));
#ifdef SVFNET_WITH_CUDA
  // landmarks, coefficients, affine and out are device addresses; counts and grid given alongside
  m.def("ebs_grid_cuda", [](std::uintptr_t landmarks, int64_t count, std::uintptr_t coefficients,
                            std::uintptr_t affine, int64_t fits, double alpha,
                            const std::array<int64_t, 3>& shape, const std::array<double, 3>& origin,
                            const std::array<double, 3>& step, const std::array<double, 3>& out_scale,
                            std::uintptr_t out, std::uintptr_t stream) {
    const EbsFits f{reinterpret_cast<const double*>(landmarks),
                    static_cast<int>(count),
                    reinterpret_cast<const double*>(coefficients),
                    reinterpret_cast<const double*>(affine),
                    static_cast<int>(fits),
                    alpha};
    ebs_grid_cuda(f, ebs_grid_of(shape, origin, step, out_scale), reinterpret_cast<float*>(out), stream);
  });
#endif
}

}  // namespace svfnet
