#include "common/cuda_loops.cuh"
#include "ops/ebs/ebs.h"
#include "ops/ebs/ebs_body.h"

namespace svfnet {

void ebs_grid_cuda(const EbsFits& fits, const EbsGrid& grid, float* out, std::uintptr_t stream) {
  const int64_t passes = (fits.fits + svfcore::kEbsFitsPerPass - 1) / svfcore::kEbsFitsPerPass;
  launch_voxels(passes, grid.grid, stream, EbsGridBody{fits, grid, out}, "ebs_grid");
}

}  // namespace svfnet
