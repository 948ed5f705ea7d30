// How CUDA launchers walk the index space: a grid-stride loop, one thread per voxel, calling the
// same svfcore bodies as the CPU launchers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "svfcore/macros.h"

namespace svfnet {

inline cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

template <typename T>
T* device_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

template <class Body>
__global__ void voxel_kernel(int64_t batch, svfcore::Grid g, Body body) {
  const int64_t voxels = g.size();
  const int64_t total = batch * voxels;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = t / voxels;
    const int v = static_cast<int>(t % voxels);
    const int k = v % g.nk;
    const int j = (v / g.nk) % g.nj;
    const int i = v / (g.nk * g.nj);
    body(b, i, j, k);
  }
}

// Launches body(b, i, j, k) over every voxel of `batch` grids on `stream`.
template <class Body>
void launch_voxels(int64_t batch, const svfcore::Grid& g, std::uintptr_t stream, Body body,
                   const char* what) {
  const int64_t total = batch * g.size();
  if (total == 0) return;
  constexpr int threads = 256;
  const int64_t wanted = (total + threads - 1) / threads;
  const int blocks = static_cast<int>(wanted < 65535 * 8 ? wanted : 65535 * 8);
  voxel_kernel<<<blocks, threads, 0, as_stream(stream)>>>(batch, g, body);
  check_cuda(cudaGetLastError(), what);
}

}  // namespace svfnet
