#include <cmath>
#include <cstring>

#include "common/cuda_loops.cuh"
#include "ops/reduce/reduce.h"
#include "ops/reduce/reduce_body.h"
#include "svfcore/compose.h"

namespace svfnet {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

int blocks_for(int64_t total) {
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  return static_cast<int>(wanted < kMaxBlocks ? (wanted > 0 ? wanted : 1) : kMaxBlocks);
}

// Each thread accumulates its share, then one atomic per thread. Norms are non-negative, so
// their float bits order like unsigned integers and atomicMax on the bits is a float max.
__global__ void norm_stats_kernel(const float* field, int64_t voxels, int64_t total, unsigned int* max_bits,
                                  double* sum) {
  float local_max = 0.f;
  double local_sum = 0.0;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(blockDim.x) * gridDim.x) {
    const float norm = svfcore::norm_at(field + (t / voxels) * 3 * voxels, voxels, t % voxels);
    local_max = fmaxf(local_max, norm);
    local_sum += norm;
  }
  atomicMax(max_bits, __float_as_uint(local_max));
  atomicAdd(sum, local_sum);
}

__global__ void norm_stats_within_kernel(const float* field, const float* u, svfcore::Grid g, int64_t total,
                                         unsigned int* max_bits, double* sum, unsigned long long* count) {
  const int64_t voxels = g.size();
  float local_max = 0.f;
  double local_sum = 0.0;
  unsigned long long local_count = 0;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = t / voxels, v = t % voxels;
    const int i = static_cast<int>(v / (int64_t(g.nj) * g.nk)), j = static_cast<int>((v / g.nk) % g.nj),
              k = static_cast<int>(v % g.nk);
    if (!svfcore::lands_inside(u + b * 3 * voxels, g, i, j, k)) continue;
    const float norm = svfcore::norm_at(field + b * 3 * voxels, voxels, v);
    local_max = fmaxf(local_max, norm);
    local_sum += norm;
    ++local_count;
  }
  atomicMax(max_bits, __float_as_uint(local_max));
  atomicAdd(sum, local_sum);
  if (local_count) atomicAdd(count, local_count);
}

__global__ void count_nonfinite_kernel(const float* data, int64_t count, unsigned long long* bad) {
  unsigned long long local = 0;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < count;
       t += int64_t(blockDim.x) * gridDim.x)
    local += isfinite(data[t]) ? 0 : 1;
  if (local) atomicAdd(bad, local);
}

// A small device buffer for a reduction's result, freed on scope exit.
struct DeviceScratch {
  void* ptr = nullptr;
  cudaStream_t stream;
  DeviceScratch(size_t bytes, cudaStream_t s) : stream(s) {
    check_cuda(cudaMallocAsync(&ptr, bytes, stream), "reduction buffer");
    check_cuda(cudaMemsetAsync(ptr, 0, bytes, stream), "reduction buffer");
  }
  ~DeviceScratch() { cudaFreeAsync(ptr, stream); }
};

}  // namespace

std::pair<float, double> norm_stats_cuda(const float* field, const Batch& shape, std::uintptr_t stream) {
  const int64_t voxels = shape.grid.size(), total = shape.batch * voxels;
  if (total == 0) return {0.f, 0.0};
  cudaStream_t s = as_stream(stream);
  DeviceScratch scratch(sizeof(double) * 2, s);
  double* sum = static_cast<double*>(scratch.ptr);
  unsigned int* max_bits = reinterpret_cast<unsigned int*>(sum + 1);
  norm_stats_kernel<<<blocks_for(total), kThreads, 0, s>>>(field, voxels, total, max_bits, sum);
  check_cuda(cudaGetLastError(), "norm_stats");
  double host[2];
  check_cuda(cudaMemcpyAsync(host, scratch.ptr, sizeof(host), cudaMemcpyDeviceToHost, s), "norm_stats");
  check_cuda(cudaStreamSynchronize(s), "norm_stats");
  unsigned int bits;
  std::memcpy(&bits, &host[1], sizeof(bits));
  float max_norm;
  std::memcpy(&max_norm, &bits, sizeof(max_norm));
  return {max_norm, host[0] / static_cast<double>(total)};
}

std::tuple<float, double, int64_t> norm_stats_within_cuda(const float* field, const float* u,
                                                          const Batch& shape, std::uintptr_t stream) {
  const int64_t total = shape.batch * shape.grid.size();
  if (total == 0) return {0.f, 0.0, 0};
  cudaStream_t s = as_stream(stream);
  // [sum (double), count (u64), max bits (u32)]
  DeviceScratch scratch(sizeof(double) * 3, s);
  double* sum = static_cast<double*>(scratch.ptr);
  auto* count = reinterpret_cast<unsigned long long*>(sum + 1);
  unsigned int* max_bits = reinterpret_cast<unsigned int*>(sum + 2);
  norm_stats_within_kernel<<<blocks_for(total), kThreads, 0, s>>>(field, u, shape.grid, total, max_bits, sum,
                                                                  count);
  check_cuda(cudaGetLastError(), "norm_stats_within");
  double host[3];
  check_cuda(cudaMemcpyAsync(host, scratch.ptr, sizeof(host), cudaMemcpyDeviceToHost, s),
             "norm_stats_within");
  check_cuda(cudaStreamSynchronize(s), "norm_stats_within");
  unsigned long long inside;
  unsigned int bits;
  float max_norm;
  std::memcpy(&inside, &host[1], sizeof(inside));
  std::memcpy(&bits, &host[2], sizeof(bits));
  std::memcpy(&max_norm, &bits, sizeof(max_norm));
  return {max_norm, inside ? host[0] / static_cast<double>(inside) : 0.0, static_cast<int64_t>(inside)};
}

void norm_within_cuda(const float* field, const float* u, float* out, const Batch& shape,
                      std::uintptr_t stream) {
  launch_voxels(shape.batch, shape.grid, stream, NormWithinBody{field, u, out, shape.grid}, "norm_within");
}

int64_t count_nonfinite_cuda(const float* data, int64_t count, std::uintptr_t stream) {
  if (count == 0) return 0;
  cudaStream_t s = as_stream(stream);
  DeviceScratch scratch(sizeof(unsigned long long), s);
  auto* bad = static_cast<unsigned long long*>(scratch.ptr);
  count_nonfinite_kernel<<<blocks_for(count), kThreads, 0, s>>>(data, count, bad);
  check_cuda(cudaGetLastError(), "count_nonfinite");
  unsigned long long host = 0;
  check_cuda(cudaMemcpyAsync(&host, bad, sizeof(host), cudaMemcpyDeviceToHost, s), "count_nonfinite");
  check_cuda(cudaStreamSynchronize(s), "count_nonfinite");
  return static_cast<int64_t>(host);
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error; no device is a normal answer
    return 0;
  }
  return count;
}

}  // namespace svfnet
