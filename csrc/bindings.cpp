// svfnet._core: the compiled field operations. CPU entry points take NumPy arrays shaped
// (N, C, I, J, K); CUDA entry points take device pointers, the shape and a stream. The Python layer
// (svfnet/_backend.py) checks, converts and allocates; see each op's header for the arguments.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>

#include "common/arrays.h"
#include "common/cpu_loops.h"
#include "ops/compose/compose.h"
#include "ops/ebs/ebs_binding.h"
#include "ops/gauss/gauss_binding.h"
#include "ops/jacobian/jacobian.h"
#include "ops/reduce/reduce.h"
#include "ops/smooth/smooth_binding.h"
#include "ops/warp/warp.h"

namespace py = pybind11;
using namespace svfnet;

namespace {

using Shape = std::array<int64_t, 5>;
using Address = std::uintptr_t;

Batch batch_of_shape(const Shape& s) { return batch_from_dims(s[0], s[1], s[2], s[3], s[4]); }
template <typename T>
T* at(Address address) {
  return reinterpret_cast<T*>(address);
}

py::dict build_info() {
  py::dict info;
  info["version"] = SVFNET_VERSION;
  info["compiler"] = SVFNET_CXX_COMPILER;
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(SVFNET_NO_CPU_CLONES)
  info["cpu_loops"] = __builtin_cpu_supports("avx2") ? "avx2" : "baseline";
#else
  info["cpu_loops"] = "baseline";
#endif
  info["min_parallel_work"] = min_parallel_work();
#ifdef SVFNET_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = SVFNET_CUDA_VERSION;
  info["cuda_architectures"] = SVFNET_CUDA_ARCHITECTURES;
#else
  info["cuda"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "svfnet's compiled field operations (see python/svfnet/fields.py for the public API)";
  m.def("build_info", &build_info, "What this extension was compiled with.");
  // the threshold of the CPU launchers (common/cpu_loops.h): SVFNET_MIN_PARALLEL_WORK is read here,
  // so that a bad value fails the import with its name rather than a later call
  min_parallel_work();
  m.def("min_parallel_work", &min_parallel_work,
        "Voxel-operations (about a nanosecond of one core each) below which a CPU launcher's parallel region "
        "runs on the calling thread.");
  m.def("set_min_parallel_work", &set_min_parallel_work, py::arg("work"),
        "Sets the threshold of min_parallel_work() (>= 0; 0: every region parallel) and returns the previous "
        "one.");
  m.def(
      "parallel_team",
      [](int64_t work, int threads) {
        int team = 1;
#pragma omp parallel num_threads(omp_threads(threads)) if (parallel_worth(work))
        {
#ifdef _OPENMP
#pragma omp single
          team = omp_get_num_threads();
#endif
        }
        return team;
      },
      py::arg("work"), py::arg("threads"),
      "The threads a CPU launcher's parallel region of `work` voxel-operations runs on when asked for "
      "`threads`.");
  bind_ebs(m);  // elastic body splines (svfnet/ebs.py)

  // ---- CPU: NumPy arrays (N, C, I, J, K), C-contiguous, never converted (outputs must not be copies)
  m.def(
      "warp_cpu",
      [](const FloatArray& image, const FloatArray& disp, FloatArray& out, int order, float fill,
         int threads) {
        const Batch s = batch_of(image, "image"), d = batch_of(disp, "disp");
        require_channels(d, "disp", 3);
        require_same_grid(s, "image", d, "disp");
        require_same_shape(s, "image", batch_of(out, "out"), "out");
        py::gil_scoped_release release;
        warp_cpu(image.data(), disp.data(), out.mutable_data(), s, order, fill, threads);
      },
      py::arg("image").noconvert(), py::arg("disp").noconvert(), py::arg("out").noconvert(), py::arg("order"),
      py::arg("fill"), py::arg("threads"));
  m.def(
      "warp_disp_vjp_cpu",
      [](const FloatArray& image, const FloatArray& disp, const FloatArray& grad_out, FloatArray& grad_disp,
         float fill, int threads) {
        const Batch s = batch_of(image, "image"), d = batch_of(disp, "disp");
        require_channels(d, "disp", 3);
        require_same_grid(s, "image", d, "disp");
        if (s.batch != d.batch)
          throw std::invalid_argument("'image' and 'disp' must have the same batch size");
        require_same_shape(s, "image", batch_of(grad_out, "grad_out"), "grad_out");
        require_same_shape(d, "disp", batch_of(grad_disp, "grad_disp"), "grad_disp");
        py::gil_scoped_release release;
        warp_disp_vjp_cpu(image.data(), disp.data(), grad_out.data(), grad_disp.mutable_data(), s, fill,
                          threads);
      },
      py::arg("image").noconvert(), py::arg("disp").noconvert(), py::arg("grad_out").noconvert(),
      py::arg("grad_disp").noconvert(), py::arg("fill"), py::arg("threads"),
      "Gradient of a trilinear warp in its displacement: sum over channels of grad_out * grad(image)(x + "
      "disp(x)).");
  m.def(
      "warp_labels_cpu",
      [](const IntArray& labels, const FloatArray& disp, IntArray& out, bool onehot, int32_t fill_label,
         int threads) {
        const Batch s = batch_of(labels, "labels"), d = batch_of(disp, "disp");
        require_channels(s, "labels", 1);
        require_channels(d, "disp", 3);
        require_same_grid(s, "labels", d, "disp");
        require_same_shape(s, "labels", batch_of(out, "out"), "out");
        py::gil_scoped_release release;
        warp_labels_cpu(labels.data(), disp.data(), out.mutable_data(), s, onehot, fill_label, threads);
      },
      py::arg("labels").noconvert(), py::arg("disp").noconvert(), py::arg("out").noconvert(),
      py::arg("onehot"), py::arg("fill_label"), py::arg("threads"));
  // positions first, and the labels' grid as numbers, so that the CUDA launcher (given the first
  // array's shape) knows both grids
  m.def(
      "sample_labels_cpu",
      [](const FloatArray& positions, const IntArray& labels, IntArray& out, bool clamp, int32_t fill_label,
         int64_t ni, int64_t nj, int64_t nk, int threads) {
        const Batch p = batch_of(positions, "positions"), s = batch_of(labels, "labels");
        require_channels(p, "positions", 3);
        require_channels(s, "labels", 1);
        require_same_grid(p, "positions", batch_of(out, "out"), "out");
        if (p.batch != 1 || s.batch != 1 || s.grid.ni != ni || s.grid.nj != nj || s.grid.nk != nk)
          throw std::invalid_argument("sample_labels: one label map, whose grid is (ni, nj, nk)");
        py::gil_scoped_release release;
        sample_labels_cpu(labels.data(), s.grid, positions.data(), out.mutable_data(), p.grid, clamp,
                          fill_label, threads);
      },
      py::arg("positions").noconvert(), py::arg("labels").noconvert(), py::arg("out").noconvert(),
      py::arg("clamp"), py::arg("fill_label"), py::arg("ni"), py::arg("nj"), py::arg("nk"),
      py::arg("threads"),
      "Labels read by the one-hot vote at voxel positions of their grid (another grid's voxels).");
  m.def(
      "compose_cpu",
      [](const FloatArray& u, const FloatArray& w, FloatArray& out, int threads) {
        const Batch s = batch_of(u, "u");
        require_channels(s, "u", 3);
        require_same_shape(s, "u", batch_of(w, "w"), "w");
        require_same_shape(s, "u", batch_of(out, "out"), "out");
        py::gil_scoped_release release;
        compose_cpu(u.data(), w.data(), out.mutable_data(), s, threads);
      },
      py::arg("u").noconvert(), py::arg("w").noconvert(), py::arg("out").noconvert(), py::arg("threads"));
  m.def(
      "exp_cpu",
      [](const FloatArray& v, FloatArray& out, FloatArray& scratch, int steps, int threads) {
        const Batch s = batch_of(v, "v");
        require_channels(s, "v", 3);
        require_same_shape(s, "v", batch_of(out, "out"), "out");
        require_same_shape(s, "v", batch_of(scratch, "scratch"), "scratch");
        if (steps < 0) throw std::invalid_argument("'steps' must be >= 0");
        py::gil_scoped_release release;
        exp_cpu(v.data(), out.mutable_data(), scratch.mutable_data(), s, steps, threads);
      },
      py::arg("v").noconvert(), py::arg("out").noconvert(), py::arg("scratch").noconvert(), py::arg("steps"),
      py::arg("threads"));
  m.def(
      "exp_levels_cpu",
      [](const FloatArray& v, FloatArray& levels, int steps, int threads) {
        const Batch s = batch_of(v, "v"), l = batch_of(levels, "levels");
        require_channels(s, "v", 3);
        if (steps < 1) throw std::invalid_argument("'steps' must be >= 1");
        if (l.batch != steps * s.batch || l.channels != 3 || l.grid.ni != s.grid.ni ||
            l.grid.nj != s.grid.nj || l.grid.nk != s.grid.nk)
          throw std::invalid_argument("'levels' must be (steps * N, 3, I, J, K) for 'v' (N, 3, I, J, K)");
        py::gil_scoped_release release;
        exp_levels_cpu(v.data(), levels.mutable_data(), s, steps, threads);
      },
      py::arg("v").noconvert(), py::arg("levels").noconvert(), py::arg("steps"), py::arg("threads"));
  m.def(
      "exp_vjp_cpu",
      [](const FloatArray& v, const FloatArray& levels, const FloatArray& grad_out, FloatArray& grad_v,
         DoubleArray& accumulator, int steps, int threads) {
        const Batch s = batch_of(v, "v"), l = batch_of(levels, "levels");
        require_channels(s, "v", 3);
        require_same_shape(s, "v", batch_of(grad_out, "grad_out"), "grad_out");
        require_same_shape(s, "v", batch_of(grad_v, "grad_v"), "grad_v");
        require_same_shape(s, "v", batch_of(accumulator, "accumulator"), "accumulator");
        if (steps < 0) throw std::invalid_argument("'steps' must be >= 0");
        if (steps > 0 && (l.batch != steps * s.batch || l.channels != 3 || l.grid.ni != s.grid.ni ||
                          l.grid.nj != s.grid.nj || l.grid.nk != s.grid.nk))
          throw std::invalid_argument("'levels' must be (steps * N, 3, I, J, K) for 'v' (N, 3, I, J, K)");
        py::gil_scoped_release release;
        exp_vjp_cpu(v.data(), levels.data(), grad_out.data(), grad_v.mutable_data(),
                    accumulator.mutable_data(), s, steps, threads);
      },
      py::arg("v").noconvert(), py::arg("levels").noconvert(), py::arg("grad_out").noconvert(),
      py::arg("grad_v").noconvert(), py::arg("accumulator").noconvert(), py::arg("steps"),
      py::arg("threads"));
  m.def(
      "jacobian_det_cpu",
      [](const FloatArray& u, FloatArray& out, int threads) {
        const Batch s = batch_of(u, "u"), o = batch_of(out, "out");
        require_channels(s, "u", 3);
        require_channels(o, "out", 1);
        require_same_grid(s, "u", o, "out");
        py::gil_scoped_release release;
        jacobian_det_cpu(u.data(), out.mutable_data(), s, threads);
      },
      py::arg("u").noconvert(), py::arg("out").noconvert(), py::arg("threads"));
  m.def(
      "lie_bracket_cpu",
      [](const FloatArray& v, const FloatArray& w, FloatArray& out, int threads) {
        const Batch s = batch_of(v, "v");
        require_channels(s, "v", 3);
        require_same_shape(s, "v", batch_of(w, "w"), "w");
        require_same_shape(s, "v", batch_of(out, "out"), "out");
        py::gil_scoped_release release;
        lie_bracket_cpu(v.data(), w.data(), out.mutable_data(), s, threads);
      },
      py::arg("v").noconvert(), py::arg("w").noconvert(), py::arg("out").noconvert(), py::arg("threads"));
  m.def(
      "jacobian_solve_cpu",
      [](const FloatArray& e, const FloatArray& r, FloatArray& out, int threads) {
        const Batch s = batch_of(e, "e");
        require_channels(s, "e", 3);
        require_same_shape(s, "e", batch_of(r, "r"), "r");
        require_same_shape(s, "e", batch_of(out, "out"), "out");
        py::gil_scoped_release release;
        jacobian_solve_cpu(e.data(), r.data(), out.mutable_data(), s, threads);
      },
      py::arg("e").noconvert(), py::arg("r").noconvert(), py::arg("out").noconvert(), py::arg("threads"));
  m.def(
      "norm_stats_cpu",
      [](const FloatArray& field, int threads) {
        const Batch s = batch_of(field, "field");
        require_channels(s, "field", 3);
        py::gil_scoped_release release;
        return norm_stats_cpu(field.data(), s, threads);
      },
      py::arg("field").noconvert(), py::arg("threads"), "(max, mean) of |field(x)| over all voxels.");
  m.def(
      "norm_within_cpu",
      [](const FloatArray& field, const FloatArray& u, FloatArray& out, int threads) {
        const Batch s = batch_of(field, "field"), o = batch_of(out, "out");
        require_channels(s, "field", 3);
        require_same_shape(s, "field", batch_of(u, "u"), "u");
        require_channels(o, "out", 1);
        require_same_grid(s, "field", o, "out");
        py::gil_scoped_release release;
        norm_within_cpu(field.data(), u.data(), out.mutable_data(), s, threads);
      },
      py::arg("field").noconvert(), py::arg("u").noconvert(), py::arg("out").noconvert(), py::arg("threads"),
      "|field(x)| where x + u(x) lands in the grid, 0 elsewhere.");
  m.def(
      "norm_stats_within_cpu",
      [](const FloatArray& field, const FloatArray& u, int threads) {
        const Batch s = batch_of(field, "field");
        require_channels(s, "field", 3);
        require_same_shape(s, "field", batch_of(u, "u"), "u");
        py::gil_scoped_release release;
        return norm_stats_within_cpu(field.data(), u.data(), s, threads);
      },
      py::arg("field").noconvert(), py::arg("u").noconvert(), py::arg("threads"),
      "(max, mean, count) of |field(x)| over the voxels x that x + u(x) maps into the grid.");
  m.def(
      "count_nonfinite_cpu",
      [](const FloatArray& data, int threads) {
        const float* ptr = data.data();
        const int64_t count = data.size();
        py::gil_scoped_release release;
        return count_nonfinite_cpu(ptr, count, threads);
      },
      py::arg("data").noconvert(), py::arg("threads"));

  // ---- Gaussian kernel sums (svfnet/kernels.py): float32 or float64 rows, one dtype per call
  m.def("gauss_cpu", &gauss_cpu_entry<float>, py::arg("formula"), py::arg("x").noconvert(),
        py::arg("y").noconvert(), py::arg("a").noconvert(), py::arg("b").noconvert(),
        py::arg("c").noconvert(), py::arg("e").noconvert(), py::arg("w").noconvert(),
        py::arg("out_w").noconvert(), py::arg("out_r").noconvert(), py::arg("inv_sigma2"),
        py::arg("threads"));
  m.def("gauss_cpu", &gauss_cpu_entry<double>, py::arg("formula"), py::arg("x").noconvert(),
        py::arg("y").noconvert(), py::arg("a").noconvert(), py::arg("b").noconvert(),
        py::arg("c").noconvert(), py::arg("e").noconvert(), py::arg("w").noconvert(),
        py::arg("out_w").noconvert(), py::arg("out_r").noconvert(), py::arg("inv_sigma2"),
        py::arg("threads"));
  m.def("gauss_cpu_isa", &gauss_cpu_isa, "Instruction set the Gaussian kernel sums run with on this CPU.");

  // ---- Gaussian smoothing of volumes and the local moments of two images (svfnet/smoothing.py)
  m.def("smooth_taps", &smooth_taps, py::arg("sigma"), py::arg("truncate"), py::arg("extent"),
        "Folded half taps (float64) of a Gaussian of `sigma` voxels cut at `truncate` sigmas, on an axis of "
        "`extent`.");
  m.def("smooth_cpu", &smooth_cpu_entry, py::arg("in").noconvert(), py::arg("out").noconvert(),
        py::arg("scratch").noconvert(), py::arg("taps").noconvert(), py::arg("radii"), py::arg("threads"));
  m.def("local_moments_cpu", &local_moments_cpu_entry, py::arg("a").noconvert(), py::arg("b").noconvert(),
        py::arg("out").noconvert(), py::arg("scratch").noconvert(), py::arg("taps").noconvert(),
        py::arg("radii"), py::arg("floor_a"), py::arg("floor_b"), py::arg("threads"));

#ifdef SVFNET_WITH_CUDA
  // ---- CUDA: device addresses (torch data_ptr(), CuPy .data.ptr), the shape (N, C, I, J, K) of the
  // first argument, and the stream (torch.cuda.current_stream().cuda_stream, CuPy stream.ptr).
  m.def("cuda_device_count", &cuda_device_count);
  m.def("warp_cuda", [](Address image, Address disp, Address out, const Shape& shape, int order, float fill,
                        Address stream) {
    warp_cuda(at<const float>(image), at<const float>(disp), at<float>(out), batch_of_shape(shape), order,
              fill, stream);
  });
  m.def("warp_disp_vjp_cuda", [](Address image, Address disp, Address grad_out, Address grad_disp,
                                 const Shape& shape, float fill, Address stream) {
    warp_disp_vjp_cuda(at<const float>(image), at<const float>(disp), at<const float>(grad_out),
                       at<float>(grad_disp), batch_of_shape(shape), fill, stream);
  });
  m.def("warp_labels_cuda", [](Address labels, Address disp, Address out, const Shape& shape, bool onehot,
                               int32_t fill_label, Address stream) {
    warp_labels_cuda(at<const int32_t>(labels), at<const float>(disp), at<int32_t>(out),
                     batch_of_shape(shape), onehot, fill_label, stream);
  });
  m.def("sample_labels_cuda",
        [](Address positions, Address labels, Address out, const Shape& shape, bool clamp, int32_t fill_label,
           int64_t ni, int64_t nj, int64_t nk, Address stream) {
          const svfcore::Grid grid = batch_from_dims(1, 1, ni, nj, nk).grid;
          sample_labels_cuda(at<const int32_t>(labels), grid, at<const float>(positions), at<int32_t>(out),
                             batch_of_shape(shape).grid, clamp, fill_label, stream);
        });
  m.def("compose_cuda", [](Address u, Address w, Address out, const Shape& shape, Address stream) {
    compose_cuda(at<const float>(u), at<const float>(w), at<float>(out), batch_of_shape(shape), stream);
  });
  m.def("exp_cuda", [](Address v, Address out, Address scratch, const Shape& shape, int steps,
                       Address stream) {
    if (steps < 0) throw std::invalid_argument("'steps' must be >= 0");
    exp_cuda(at<const float>(v), at<float>(out), at<float>(scratch), batch_of_shape(shape), steps, stream);
  });
  m.def("exp_levels_cuda", [](Address v, Address levels, const Shape& shape, int steps, Address stream) {
    if (steps < 1) throw std::invalid_argument("'steps' must be >= 1");
    exp_levels_cuda(at<const float>(v), at<float>(levels), batch_of_shape(shape), steps, stream);
  });
  m.def("exp_vjp_cuda", [](Address v, Address levels, Address grad_out, Address grad_v, Address accumulator,
                           const Shape& shape, int steps, Address stream) {
    if (steps < 0) throw std::invalid_argument("'steps' must be >= 0");
    exp_vjp_cuda(at<const float>(v), at<const float>(levels), at<const float>(grad_out), at<float>(grad_v),
                 at<double>(accumulator), batch_of_shape(shape), steps, stream);
  });
  m.def("jacobian_det_cuda", [](Address u, Address out, const Shape& shape, Address stream) {
    jacobian_det_cuda(at<const float>(u), at<float>(out), batch_of_shape(shape), stream);
  });
  m.def("lie_bracket_cuda", [](Address v, Address w, Address out, const Shape& shape, Address stream) {
    lie_bracket_cuda(at<const float>(v), at<const float>(w), at<float>(out), batch_of_shape(shape), stream);
  });
  m.def("jacobian_solve_cuda", [](Address e, Address r, Address out, const Shape& shape, Address stream) {
    jacobian_solve_cuda(at<const float>(e), at<const float>(r), at<float>(out), batch_of_shape(shape),
                        stream);
  });
  m.def("norm_stats_cuda", [](Address field, const Shape& shape, Address stream) {
    return norm_stats_cuda(at<const float>(field), batch_of_shape(shape), stream);
  });
  m.def("norm_within_cuda", [](Address field, Address u, Address out, const Shape& shape, Address stream) {
    norm_within_cuda(at<const float>(field), at<const float>(u), at<float>(out), batch_of_shape(shape),
                     stream);
  });
  m.def("norm_stats_within_cuda", [](Address field, Address u, const Shape& shape, Address stream) {
    return norm_stats_within_cuda(at<const float>(field), at<const float>(u), batch_of_shape(shape), stream);
  });
  m.def("count_nonfinite_cuda", [](Address data, int64_t count, Address stream) {
    return count_nonfinite_cuda(at<const float>(data), count, stream);
  });
  m.def("gauss_cuda_float32", &gauss_cuda_entry<float>);
  m.def("smooth_cuda", &smooth_cuda_entry);
  m.def("local_moments_cuda", &local_moments_cuda_entry);
  m.def("gauss_cuda_float64", &gauss_cuda_entry<double>);
#endif
}
