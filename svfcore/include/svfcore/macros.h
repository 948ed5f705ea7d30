// Qualifiers shared by every svfcore body.
//
// The math of svfnet is written once, as inline functions marked SVF_HOST_DEVICE:
// g++ compiles them into the OpenMP launchers, nvcc into the CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define SVF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SVF_HOST_DEVICE inline
#endif

#include <cstdint>

namespace svfcore {

// Extent of one 3D grid, C order: k is the fastest axis, as nibabel returns volumes.
struct Grid {
  int64_t ni, nj, nk;

  SVF_HOST_DEVICE int64_t size() const { return ni * nj * nk; }
  SVF_HOST_DEVICE int64_t index(int64_t i, int64_t j, int64_t k) const { return (i * nj + j) * nk + k; }
};

template <typename T>
SVF_HOST_DEVICE T clamp_to(T x, T lo, T hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

}  // namespace svfcore
