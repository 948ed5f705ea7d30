// The elastic body spline (EBS): the Green's function of the Navier equation of linear
// elasticity, used to spread landmark displacements over a grid.
//
//   u(x) = Σ_k G(x − p_k) c_k + A x + t,   G(r) = (α |r|² I − 3 r rᵀ) |r|,   α = 12 (1 − ν) − 1
//
// References: Davis, Khotanzad, Flamig, Harms, "A physics-based coordinate transformation for
// 3-D image matching", IEEE TMI 16(3), 1997; ITK's ElasticBodySplineKernelTransform.
#pragma once

#include <cmath>

#include "svfcore/macros.h"

namespace svfcore {

// out += G(r) c for r = (rx, ry, rz), given r2 = |r|² and r = |r|, in double: the coefficients of
// an EBS fit alternate in sign and cancel, so the sum over landmarks needs more than float.
SVF_HOST_DEVICE void ebs_accumulate(double rx, double ry, double rz, double r2, double r, double alpha,
                                    const double* c, double& out_x, double& out_y, double& out_z) {
  const double rc = 3.0 * (rx * c[0] + ry * c[1] + rz * c[2]);
  const double ar2 = alpha * r2;
  out_x += (ar2 * c[0] - rc * rx) * r;
  out_y += (ar2 * c[1] - rc * ry) * r;
  out_z += (ar2 * c[2] - rc * rz) * r;
}

// Fits evaluated together in one pass over the landmarks (their accumulators stay in registers).
constexpr int kEbsFitsPerPass = 8;

// EBS displacements at position (x, y, z) of `fits` (<= kEbsFitsPerPass) fits sharing `count`
// landmarks: landmarks (count, 3); coefficients (fits, count, 3); affine (fits, 4, 3), the rows
// of Aᵀ then t; out[f] = Σ_k G(x − p_k) c_fk + A_f x + t_f.
SVF_HOST_DEVICE void ebs_displacement(double x, double y, double z, const double* landmarks, int count,
                                      const double* coefficients, const double* affine, int fits,
                                      double alpha, double out[][3]) {
  for (int f = 0; f < fits; ++f) {
    const double* a = affine + 12 * f;
    out[f][0] = a[0] * x + a[3] * y + a[6] * z + a[9];
    out[f][1] = a[1] * x + a[4] * y + a[7] * z + a[10];
    out[f][2] = a[2] * x + a[5] * y + a[8] * z + a[11];
  }
  for (int k = 0; k < count; ++k) {
    const double rx = x - landmarks[3 * k], ry = y - landmarks[3 * k + 1], rz = z - landmarks[3 * k + 2];
    const double r2 = rx * rx + ry * ry + rz * rz;
    const double r = sqrt(r2);
    for (int f = 0; f < fits; ++f)
      ebs_accumulate(rx, ry, rz, r2, r, alpha, coefficients + 3 * (int64_t(f) * count + k), out[f][0],
                     out[f][1], out[f][2]);
  }
}

}  // namespace svfcore
