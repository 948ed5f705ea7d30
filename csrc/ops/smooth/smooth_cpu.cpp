// The CPU launchers of smooth and local_moments: OpenMP over the rows of each pass, each thread a
// contiguous block of rows that it convolves in runs (svfcore::block_taps, svfcore::padded_taps):
// inner loops along contiguous memory, thousands of values long, the sums in per-thread buffers.
// Rows are (j, k) planes for a pass along axis 0, (k) rows for axes 1 and 2.
#include <algorithm>
#include <cstring>
#include <vector>

#include "common/cpu_loops.h"
#include "ops/smooth/smooth.h"
#include "svfcore/smooth.h"

namespace svfnet {

namespace {
// The accumulators (README.md, Performance: Gaussian smoothing): smooth sums in float32, 2.2-2.6x faster
// than float64 here and within 2.5e-7 of the data's range from SciPy (which sums in float64);
// local_moments in float64, so that a constant patch has a variance of exactly 0 (in float32 the
// sums of a² and a differ by ~1e-7 c², which the variance floor turns into Λ ~ 1e-3 there).
using SmoothAcc = float;
using MomentAcc = double;
// Values a run accumulates at most (its buffers stay in the L2 cache).
constexpr int64_t kRunValues = 4096;
// Values × folded taps (radius + 1) of a pass a voxel-operation stands for (cpu_loops.h: about a
// nanosecond of one core): smooth's float32 sums of one value, local_moments' float64 sums of five.
constexpr int64_t kSmoothTapsPerOperation = 6, kMomentTapsPerOperation = 2;

// A pass along `axis` over volumes of grid g: its rows, and how runs of them are cut.
struct Pass {
  int axis, radius;
  int n;             // rows of a line (across), values of a row (along)
  int64_t length;    // values of a row
  int64_t rows;      // rows of a volume
  int64_t run_rows;  // rows of a run at most
  int64_t padded;    // values of a padded row (along), 0 across

  Pass(const svfcore::Grid& g, int a, int r) : axis(a), radius(r) {
    n = a == 0 ? g.ni : (a == 1 ? g.nj : g.nk);
    length = a == 0 ? int64_t(g.nj) * g.nk : g.nk;
    rows = a == 0 ? g.ni : int64_t(g.ni) * g.nj;
    padded = a == 2 ? g.nk + 2 * r : 0;
    run_rows = std::max<int64_t>(1, kRunValues / (a == 2 ? padded : length));
  }
  bool along() const { return axis == 2; }
  // values of the accumulators of one run (one channel)
  int64_t run_capacity() const { return along() ? run_rows * padded : run_rows * length; }
};

// One run: `count` rows of volume e starting at row `row`; across, rows p0 .. p0 + count − 1 of the
// block (line) that starts at row `row − p0`.
struct Run {
  int64_t e, row, count;
  int p0;
};

// body(run) for the runs covering rows [begin, end) of the pass, compiled for AVX2 and the baseline
// ISA like the other CPU loops (cpu_loops.h); flattened, so that the svfcore loops it calls are
// compiled into each clone rather than once for the baseline.
template <class Body>
SVFNET_CPU_CLONES __attribute__((flatten)) void walk_runs(const Body& body, const Pass& pass, int64_t begin,
                                                          int64_t end) {
  for (int64_t u = begin; u < end;) {
    const int64_t e = u / pass.rows, row = u % pass.rows;
    int64_t count = std::min(end - u, pass.run_rows);
    int p0 = 0;
    if (!pass.along()) {
      p0 = static_cast<int>(row % pass.n);
      count = std::min<int64_t>(count, pass.n - p0);  // a run stays within its line
    }
    count = std::min(count, pass.rows - row);  // and within its volume
    body(Run{e, row, count, p0});
    u += count;
  }
}

// Runs body over the rows of `volumes` volumes in one parallel region (on the calling thread below
// min_parallel_work(), cpu_loops.h); make_buffers() gives each thread its buffers.
template <class Buffers, class Body>
void for_each_run(const Pass& pass, int64_t volumes, int64_t work, int threads, const Buffers& make_buffers,
                  const Body& body) {
  const int64_t rows = volumes * pass.rows;
#pragma omp parallel num_threads(omp_threads(threads)) if (parallel_worth(work))
  {
    auto buffers = make_buffers();
#ifdef _OPENMP
    const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
#else
    const int64_t team = 1, me = 0;
#endif
    walk_runs([&](const Run& run) { body(run, buffers); }, pass, rows * me / team, rows * (me + 1) / team);
  }
}

template <typename Acc>
struct Buffers {
  std::vector<float> pad_a, pad_b;
  std::vector<Acc> acc;
};

// The run's rows of a volume starting at `volume_data`, padded into pad (along), and the kernel's
// source: the block's first value across, the first padded row's first value along.
const float* run_source(const Pass& pass, const Run& run, const float* volume_data, int nk,
                        std::vector<float>& pad) {
  if (!pass.along()) return volume_data + (run.row - run.p0) * pass.length;
  for (int64_t q = 0; q < run.count; ++q)
    svfcore::pad_row(volume_data + (run.row + q) * nk, nk, pass.radius, pad.data() + q * pass.padded);
  return pad.data() + pass.radius;
}

// Runs the taps of a run with `kernel` (whose source run_source gave).
template <class Kernel>
void run_taps(const Pass& pass, const Run& run, const Kernel& kernel) {
  if (pass.along())
    svfcore::padded_taps(kernel, run.count * pass.padded - 2 * pass.radius, pass.radius);
  else
    svfcore::block_taps(kernel, pass.n, pass.length, run.p0, run.p0 + static_cast<int>(run.count),
                        pass.radius);
}

// Where the value of the run's row q, index x in the row, sits in acc.
inline int64_t acc_index(const Pass& pass, int64_t q, int64_t x) {
  return pass.along() ? q * pass.padded + x : q * pass.length + x;
}

template <typename Acc>
std::vector<Acc> taps_as_acc(const double* taps, const SmoothRadii& radii) {
  return std::vector<Acc>(taps, taps + (radii[0] + 1) + (radii[1] + 1) + (radii[2] + 1));
}

// The values of row q of a run, from acc (one channel) into `row`.
template <typename Acc>
void store_row(const Acc* SVF_RESTRICT from, float* SVF_RESTRICT row, int64_t length) {
  for (int64_t x = 0; x < length; ++x) row[x] = static_cast<float>(from[x]);
}

// The moments of `length` voxels from their five sums (each rounded to float32 first, as a pass's
// output), into the six channels of `out` (`volume` apart).
template <typename Acc>
void finish_row(const Acc* SVF_RESTRICT sa, const Acc* SVF_RESTRICT sb, const Acc* SVF_RESTRICT saa,
                const Acc* SVF_RESTRICT sbb, const Acc* SVF_RESTRICT sab, float* SVF_RESTRICT mean_a,
                float* SVF_RESTRICT mean_b, float* SVF_RESTRICT var_a, float* SVF_RESTRICT var_b,
                float* SVF_RESTRICT cov, float* SVF_RESTRICT lcc, int64_t length, float floor_a,
                float floor_b) {
  for (int64_t x = 0; x < length; ++x) {
    const svfcore::LocalMoments m = svfcore::local_moments_of(
        static_cast<float>(sa[x]), static_cast<float>(sb[x]), static_cast<float>(saa[x]),
        static_cast<float>(sbb[x]), static_cast<float>(sab[x]), floor_a, floor_b);
    mean_a[x] = m.mean_a, mean_b[x] = m.mean_b, var_a[x] = m.var_a, var_b[x] = m.var_b, cov[x] = m.cov,
    lcc[x] = m.lcc;
  }
}

// The five sums of a run (channel c at acc + c * capacity) stored into a batch element's buffer of
// `volume`-sized channels, or turned into the moments there.
template <typename Acc>
void store_sums(const Pass& pass, const Run& run, const Acc* acc, int64_t capacity, float* element,
                int64_t volume, bool finish, float floor_a, float floor_b) {
  for (int64_t q = 0; q < run.count; ++q) {
    const int64_t start = (run.row + q) * pass.length, from = acc_index(pass, q, 0);
    const auto sum = [&](int c) { return acc + c * capacity + from; };
    const auto channel = [&](int c) { return element + c * volume + start; };
    if (finish)
      finish_row(sum(svfcore::kSumA), sum(svfcore::kSumB), sum(svfcore::kSumAA), sum(svfcore::kSumBB),
                 sum(svfcore::kSumAB), channel(svfcore::kMeanA), channel(svfcore::kMeanB),
                 channel(svfcore::kVarA), channel(svfcore::kVarB), channel(svfcore::kCov),
                 channel(svfcore::kLcc), pass.length, floor_a, floor_b);
    else
      for (int c = 0; c < svfcore::kMomentSums; ++c) store_row(sum(c), channel(c), pass.length);
  }
}
}  // namespace

void smooth_cpu(const float* in, float* out, float* scratch, const Batch& shape, const double* taps,
                const SmoothRadii& radii, int threads) {
  const SmoothPasses passes(radii);
  const int64_t volumes = shape.batch * shape.channels, volume = shape.grid.size();
  if (passes.count == 0) {
    if (shape.elements() > 0) std::memcpy(out, in, sizeof(float) * shape.elements());
    return;
  }
  const std::vector<SmoothAcc> w = taps_as_acc<SmoothAcc>(taps, radii);
  const int nk = shape.grid.nk;
  const float* source = in;
  for (int q = 0; q < passes.count; ++q) {
    const int axis = passes.axes[q];
    float* target = passes.writes_out(q) ? out : scratch;
    const Pass pass(shape.grid, axis, radii[axis]);
    const SmoothAcc* wa = w.data() + passes.tap_offset[axis];
    const auto make_buffers = [&] {
      return Buffers<SmoothAcc>{std::vector<float>(pass.along() ? pass.run_capacity() : 0),
                                {},
                                std::vector<SmoothAcc>(pass.run_capacity())};
    };
    const int64_t work = volumes * volume * (pass.radius + 1) / kSmoothTapsPerOperation;
    for_each_run(pass, volumes, work, threads, make_buffers, [&](const Run& run, Buffers<SmoothAcc>& b) {
      const float* f = run_source(pass, run, source + run.e * volume, nk, b.pad_a);
      run_taps(pass, run, svfcore::SmoothKernel<SmoothAcc, SmoothAcc>{f, wa, b.acc.data()});
      float* dst = target + run.e * volume + run.row * pass.length;
      for (int64_t r = 0; r < run.count; ++r)
        store_row(b.acc.data() + acc_index(pass, r, 0), dst + r * pass.length, pass.length);
    });
    source = target;
  }
}

void local_moments_cpu(const float* a, const float* b, float* out, float* scratch, const Batch& shape,
                       const double* taps, const SmoothRadii& radii, float floor_a, float floor_b,
                       int threads) {
  const SmoothPasses passes(radii);
  const std::vector<MomentAcc> w = taps_as_acc<MomentAcc>(taps, radii);
  const int64_t volume = shape.grid.size();
  const int nk = shape.grid.nk;
  constexpr int sums = svfcore::kMomentSums;
  const auto channels_of = [&](const float* buffer) -> int64_t {
    return buffer == out ? svfcore::kLocalMoments : svfcore::kMomentSums;
  };
  const auto work_of = [&](const Pass& pass) {
    return shape.batch * volume * sums * (pass.radius + 1) / kMomentTapsPerOperation;
  };
  const auto buffers_for = [](const Pass& pass, int pads) {
    return [&pass, pads] {
      return Buffers<MomentAcc>{std::vector<float>(pass.along() ? pass.run_capacity() : 0),
                                std::vector<float>(pass.along() && pads > 1 ? pass.run_capacity() : 0),
                                std::vector<MomentAcc>(sums * pass.run_capacity())};
    };
  };
  // the first pass reads a and b; with no pass at all, the products themselves (axis 0's single tap,
  // which is 1) and the moments
  const float* source = nullptr;
  {
    const int axis = passes.count > 0 ? passes.axes[0] : 0;
    float* target = passes.count == 0 || passes.writes_out(0) ? out : scratch;
    const int64_t channels = channels_of(target);
    const Pass pass(shape.grid, axis, radii[axis]);
    const MomentAcc* wa = w.data() + passes.tap_offset[axis];
    const bool finish = passes.count <= 1;
    for_each_run(pass, shape.batch, work_of(pass), threads, buffers_for(pass, 2),
                 [&](const Run& run, Buffers<MomentAcc>& buf) {
                   const float* fa = run_source(pass, run, a + run.e * volume, nk, buf.pad_a);
                   const float* fb = run_source(pass, run, b + run.e * volume, nk, buf.pad_b);
                   run_taps(pass, run,
                            svfcore::ProductsKernel<MomentAcc, MomentAcc>{fa, fb, wa, buf.acc.data(),
                                                                          pass.run_capacity()});
                   store_sums(pass, run, buf.acc.data(), pass.run_capacity(),
                              target + run.e * channels * volume, volume, finish, floor_a, floor_b);
                 });
    source = target;
  }
  for (int q = 1; q < passes.count; ++q) {
    const int axis = passes.axes[q];
    float* target = passes.writes_out(q) ? out : scratch;
    const int64_t in_channels = channels_of(source), out_channels = channels_of(target);
    const Pass pass(shape.grid, axis, radii[axis]);
    const MomentAcc* wa = w.data() + passes.tap_offset[axis];
    const bool finish = q == passes.count - 1;
    for_each_run(pass, shape.batch, work_of(pass), threads, buffers_for(pass, 1),
                 [&](const Run& run, Buffers<MomentAcc>& buf) {
                   for (int c = 0; c < sums; ++c) {
                     const float* f =
                         run_source(pass, run, source + (run.e * in_channels + c) * volume, nk, buf.pad_a);
                     run_taps(pass, run,
                              svfcore::SmoothKernel<MomentAcc, MomentAcc>{
                                  f, wa, buf.acc.data() + c * pass.run_capacity()});
                   }
                   store_sums(pass, run, buf.acc.data(), pass.run_capacity(),
                              target + run.e * out_channels * volume, volume, finish, floor_a, floor_b);
                 });
    source = target;
  }
}

}  // namespace svfnet
