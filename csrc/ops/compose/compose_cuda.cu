#include "common/cuda_loops.cuh"
#include "ops/compose/compose.h"
#include "ops/compose/compose_body.h"

namespace svfnet {

void compose_cuda(const float* u, const float* w, float* out, const Batch& shape, std::uintptr_t stream) {
  launch_voxels(shape.batch, shape.grid, stream, ComposeBody{u, w, out, shape.grid, 1.f}, "compose");
}

namespace {
// The passes of a squaring plan (SquaringPlan or LevelPlan), one launch each, in stream order.
template <class Plan>
void run_squarings(const Plan& plan, const Batch& shape, std::uintptr_t stream, const char* what) {
  for (int pass = 0; pass < plan.steps; ++pass) {
    const float* source = plan.source(pass);
    launch_voxels(shape.batch, shape.grid, stream,
                  ComposeBody{source, source, plan.target(pass), shape.grid, plan.scale(pass)}, what);
  }
}
}  // namespace

void exp_cuda(const float* v, float* out, float* scratch, const Batch& shape, int steps,
              std::uintptr_t stream) {
  if (steps == 0) {
    check_cuda(cudaMemcpyAsync(out, v, sizeof(float) * shape.batch * 3 * shape.grid.size(),
                               cudaMemcpyDeviceToDevice, as_stream(stream)),
               "exp");
    return;
  }
  run_squarings(SquaringPlan{v, out, scratch, steps}, shape, stream, "exp");
}

void exp_levels_cuda(const float* v, float* levels, const Batch& shape, int steps, std::uintptr_t stream) {
  run_squarings(LevelPlan{v, levels, shape.batch * 3 * shape.grid.size(), steps}, shape, stream,
                "exp_levels");
}

namespace {
struct CudaAtomicAdd {
  __host__ __device__ void operator()(double* target, double amount) const {
#ifdef __CUDA_ARCH__
    atomicAdd(target, amount);
#else
    *target += amount;  // never called on the host; present so that the body stays host-device
#endif
  }
};
}  // namespace

void exp_vjp_cuda(const float* v, const float* levels, const float* grad_out, float* grad_v,
                  double* accumulator, const Batch& shape, int steps, std::uintptr_t stream) {
  const int64_t floats = shape.batch * 3 * shape.grid.size();
  check_cuda(
      cudaMemcpyAsync(grad_v, grad_out, sizeof(float) * floats, cudaMemcpyDeviceToDevice, as_stream(stream)),
      "exp_vjp");
  const LevelPlan plan{v, const_cast<float*>(levels), floats, steps};
  for (int pass = steps - 1; pass >= 0; --pass) {
    const float* source = plan.source(pass);
    const float scale = plan.scale(pass);
    launch_voxels(shape.batch, shape.grid, stream,
                  SquaringAdjointBody{source, grad_v, accumulator, shape.grid, scale}, "exp_vjp");
    launch_voxels(
        shape.batch, shape.grid, stream,
        SquaringScatterBody<CudaAtomicAdd>{source, grad_v, accumulator, shape.grid, scale, CudaAtomicAdd{}},
        "exp_vjp");
    launch_voxels(shape.batch, shape.grid, stream, AccumulatorToFloatBody{accumulator, grad_v, shape.grid},
                  "exp_vjp");
  }
}

}  // namespace svfnet
