#include "ops/compose/compose.h"

#include <algorithm>

#include "common/cpu_loops.h"
#include "ops/compose/compose_body.h"

namespace svfnet {

namespace {
// Voxel-operations a voxel of each loop (cpu_loops.h: about a nanosecond of one core each).
constexpr int64_t kComposeCost = 13;  // a trilinear sample of three components
constexpr int64_t kAdjointCost = 25;  // the adjoint of one composition (squaring)
constexpr int64_t kToFloatCost = 2;   // three float64 values rounded to float32
}  // namespace

void compose_cpu(const float* u, const float* w, float* out, const Batch& shape, int threads) {
  for_each_voxel(shape.batch, shape.grid, threads, kComposeCost, ComposeBody{u, w, out, shape.grid, 1.f});
}

namespace {
// The passes of a squaring plan (SquaringPlan or LevelPlan), one walk over the voxels each.
template <class Plan>
void run_squarings(const Plan& plan, const Batch& shape, int threads) {
  for (int pass = 0; pass < plan.steps; ++pass) {
    const float* source = plan.source(pass);
    for_each_voxel(shape.batch, shape.grid, threads, kComposeCost,
                   ComposeBody{source, source, plan.target(pass), shape.grid, plan.scale(pass)});
  }
}
}  // namespace

void exp_cpu(const float* v, float* out, float* scratch, const Batch& shape, int steps, int threads) {
  if (steps == 0) {
    std::copy(v, v + shape.batch * 3 * shape.grid.size(), out);
    return;
  }
  run_squarings(SquaringPlan{v, out, scratch, steps}, shape, threads);
}

void exp_levels_cpu(const float* v, float* levels, const Batch& shape, int steps, int threads) {
  run_squarings(LevelPlan{v, levels, shape.batch * 3 * shape.grid.size(), steps}, shape, threads);
}

namespace {
struct PlainAdd {
  void operator()(double* target, double amount) const { *target += amount; }
};

// The scatter runs on one thread, without atomics: on this project's 2-core reference machine
// `omp atomic` on doubles made the whole gradient 4x slower than a serial scatter (48 ms against
// 12 ms a call at 64x64x16, six squarings), and a serial sum is reproducible run to run.
template <class Body>
void for_each_voxel_serial(int64_t batch, const svfcore::Grid& g, const Body& body) {
  for (int64_t b = 0; b < batch; ++b)
    for (int i = 0; i < g.ni; ++i)
      for (int j = 0; j < g.nj; ++j)
        for (int k = 0; k < g.nk; ++k) body(b, i, j, k);
}
}  // namespace

void exp_vjp_cpu(const float* v, const float* levels, const float* grad_out, float* grad_v,
                 double* accumulator, const Batch& shape, int steps, int threads) {
  const int64_t floats = shape.batch * 3 * shape.grid.size();
  std::copy(grad_out, grad_out + floats, grad_v);
  const LevelPlan plan{v, const_cast<float*>(levels), floats, steps};
  for (int pass = steps - 1; pass >= 0; --pass) {  // grad_v holds ∂L/∂(result of this pass)
    const float* source = plan.source(pass);
    const float scale = plan.scale(pass);
    for_each_voxel(shape.batch, shape.grid, threads, kAdjointCost,
                   SquaringAdjointBody{source, grad_v, accumulator, shape.grid, scale});
    for_each_voxel_serial(
        shape.batch, shape.grid,
        SquaringScatterBody<PlainAdd>{source, grad_v, accumulator, shape.grid, scale, PlainAdd{}});
    for_each_voxel(shape.batch, shape.grid, threads, kToFloatCost,
                   AccumulatorToFloatBody{accumulator, grad_v, shape.grid});
  }
}

}  // namespace svfnet
