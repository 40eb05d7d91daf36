/* stem.h (private): direct kernels for convolutions with one input channel (MedicalNet's stem, 1->64 k7 s2 p3).
 * See stem.c.  mn_conv3d_forward/backward take this path on their own; the functions here are for conv3d.c and the
 * tests. */
#ifndef MN_NN_STEM_H
#define MN_NN_STEM_H

#include <stddef.h>

#include "mednet/conv3d.h"

/* Instruction sets the kernels exist for. */
enum { MN_STEM_ISA_NONE, MN_STEM_ISA_AVX2, MN_STEM_ISA_AVX512 };

/* 1 when forward and backward-weights of (l, in) take the direct kernels: one input channel, no dilation, cout a
 * multiple of the vector width and at most MN_STEM_MAX_COUT, a kernel window that fits the per-thread scratch, a
 * CPU with AVX2+FMA or AVX-512F, and MEDNET_CONV_ALGO not "gemm".  Backward-data always takes the GEMM path (a
 * network's first layer needs none). */
#define MN_STEM_MAX_COUT 128
int mn_stem_eligible(const mn_conv3d *l, const mn_shape *in);

/* Workspace floats both kernels need (0 when not eligible). */
size_t mn_stem_workspace_floats(const mn_conv3d *l, const mn_shape *in);

/* y (out shape) overwritten, with the bias. */
mn_err mn_stem_forward(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x, float *y,
                       float *ws);

/* l->dw += dL/dw (the bias gradient is the caller's). */
mn_err mn_stem_backward_weights(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x,
                                const float *dy, float *ws);

/* The instruction set in use (detected once: AVX-512F, else AVX2 with FMA, else none).  For the tests:
 * mn_stem_set_isa forces one the CPU has (returns the previous one, or -1 and changes nothing when the CPU lacks
 * it); MN_STEM_ISA_NONE turns the kernels off. */
int mn_stem_isa(void);
int mn_stem_set_isa(int isa);
const char *mn_stem_isa_name(int isa);

#endif
