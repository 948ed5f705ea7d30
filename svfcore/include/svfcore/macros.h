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
// Indices within one volume are 32-bit (the launchers refuse volumes of 2^31 voxels or more):
// 32-bit index arithmetic is what lets the CPU compiler vectorise the sampling loops.
struct Grid {
  int ni, nj, nk;

  SVF_HOST_DEVICE int64_t size() const { return int64_t(ni) * nj * nk; }
  SVF_HOST_DEVICE int index(int i, int j, int k) const { return (i * nj + j) * nk + k; }
};

// Two plain selects rather than a nested one: compilers turn each into a min/max instruction
// (no branch), which keeps the CPU sampling loops vectorisable.
// Written so that a NaN maps to `lo` (every comparison with NaN is false): a NaN position then
// reads a voxel of the grid instead of converting to an out-of-range index.
template <typename T>
SVF_HOST_DEVICE T clamp_to(T x, T lo, T hi) {
  const T above = x >= lo ? x : lo;
  return above <= hi ? above : hi;
}

}  // namespace svfcore
