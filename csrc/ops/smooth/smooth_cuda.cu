#include "common/cuda_loops.cuh"
#include "ops/smooth/smooth.h"
#include "ops/smooth/smooth_body.h"

namespace svfnet {

namespace {
// The accumulators of the CPU launchers (smooth_cpu.cpp says why); the taps are read from the
// float64 device array.
using SmoothAcc = float;
using MomentAcc = double;
}  // namespace

void smooth_cuda(const float* in, float* out, float* scratch, const Batch& shape, const double* taps,
                 const SmoothRadii& radii, std::uintptr_t stream) {
  const SmoothPasses passes(radii);
  if (passes.count == 0) {
    check_cuda(cudaMemcpyAsync(out, in, sizeof(float) * shape.elements(), cudaMemcpyDeviceToDevice,
                               as_stream(stream)),
               "smooth");
    return;
  }
  const float* source = in;
  for (int q = 0; q < passes.count; ++q) {
    float* target = passes.writes_out(q) ? out : scratch;
    with_axis(passes.axes[q], [&](auto a) {
      launch_voxels(shape.batch * shape.channels, shape.grid, stream,
                    SmoothPassBody<a, SmoothAcc, double>{source, target, shape.grid, radii[a],
                                                         taps + passes.tap_offset[a]},
                    "smooth");
    });
    source = target;
  }
}

void local_moments_cuda(const float* a, const float* b, float* out, float* scratch, const Batch& shape,
                        const double* taps, const SmoothRadii& radii, float floor_a, float floor_b,
                        std::uintptr_t stream) {
  const SmoothPasses passes(radii);
  const auto channels_of = [&](const float* buffer) -> int64_t {
    return buffer == out ? svfcore::kLocalMoments : svfcore::kMomentSums;
  };
  // with no pass at all, the products themselves: the single tap of axis 0, which is 1
  const int first = passes.count > 0 ? passes.axes[0] : 0;
  float* target = passes.count == 0 || passes.writes_out(0) ? out : scratch;
  with_axis(first, [&](auto x) {
    launch_voxels(shape.batch, shape.grid, stream,
                  MomentProductsBody<x, MomentAcc, double>{a, b, target, channels_of(target), shape.grid,
                                                           radii[x], taps + passes.tap_offset[x],
                                                           passes.count <= 1, floor_a, floor_b},
                  "local_moments");
  });
  for (int q = 1; q < passes.count; ++q) {
    const float* source = target;
    target = passes.writes_out(q) ? out : scratch;
    with_axis(passes.axes[q], [&](auto x) {
      launch_voxels(shape.batch, shape.grid, stream,
                    MomentSumsBody<x, MomentAcc, double>{
                        source, channels_of(source), target, channels_of(target), shape.grid, radii[x],
                        taps + passes.tap_offset[x], q == passes.count - 1, floor_a, floor_b},
                    "local_moments");
    });
  }
}

}  // namespace svfnet
