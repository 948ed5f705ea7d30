// Views of the buffers the Python layer hands over. The Python layer has already checked and
// converted its inputs (svfnet/_backend.py); these checks only guard the extension against
// misuse, and raise ValueError (std::invalid_argument) naming the argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/batch.h"

namespace svfnet {

namespace py = pybind11;

// C-contiguous float32 / int32 (and float64) arrays; bound with .noconvert() so that an output is never a
// copy.
using FloatArray = py::array_t<float, py::array::c_style>;
using IntArray = py::array_t<int32_t, py::array::c_style>;
using DoubleArray = py::array_t<double, py::array::c_style>;  // accumulators only

template <class Array>
Batch batch_of(const Array& a, const char* name) {
  if (a.ndim() != 5)
    throw std::invalid_argument(std::string("'") + name + "' must be 5-dimensional (N, C, I, J, K), got " +
                                std::to_string(a.ndim()) + " dimensions");
  return batch_from_dims(a.shape(0), a.shape(1), a.shape(2), a.shape(3), a.shape(4));
}

inline void require_same_grid(const Batch& a, const char* a_name, const Batch& b, const char* b_name) {
  if (a.batch != b.batch || a.grid.ni != b.grid.ni || a.grid.nj != b.grid.nj || a.grid.nk != b.grid.nk)
    throw std::invalid_argument(std::string("'") + a_name + "' and '" + b_name +
                                "' must share batch size and grid");
}

inline void require_channels(const Batch& a, const char* name, int64_t channels) {
  if (a.channels != channels)
    throw std::invalid_argument(std::string("'") + name + "' must have " + std::to_string(channels) +
                                " channels, got " + std::to_string(a.channels));
}

inline void require_same_shape(const Batch& a, const char* a_name, const Batch& b, const char* b_name) {
  require_same_grid(a, a_name, b, b_name);
  if (a.channels != b.channels)
    throw std::invalid_argument(std::string("'") + a_name + "' and '" + b_name +
                                "' must have the same shape");
}

}  // namespace svfnet
