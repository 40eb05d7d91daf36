/* tensor.h: the NCDHW shape type shared by every layer.
 *
 * Tensors are plain float arrays in NCDHW order (batch N, channels C, depth D, height H, width W); the element
 * (n, c, z, y, x) sits at ((((n*C + c)*D + z)*H + y)*W + x).  K names output channels of a convolution.  A shape
 * carries no storage: the model owns every buffer and layers borrow them.
 */
#ifndef MEDNET_TENSOR_H
#define MEDNET_TENSOR_H

#include <stddef.h>

/* Shape of an NCDHW tensor. All fields > 0 for a valid shape. */
typedef struct mn_shape {
    int n, c, d, h, w;
} mn_shape;

/* Number of elements. */
static inline size_t mn_shape_numel(const mn_shape *s)
{
    return (size_t)s->n * (size_t)s->c * (size_t)s->d * (size_t)s->h * (size_t)s->w;
}

/* Voxels per channel (D*H*W). */
static inline size_t mn_shape_voxels(const mn_shape *s)
{
    return (size_t)s->d * (size_t)s->h * (size_t)s->w;
}

/* 1 if every extent is positive. */
static inline int mn_shape_valid(const mn_shape *s)
{
    return s->n > 0 && s->c > 0 && s->d > 0 && s->h > 0 && s->w > 0;
}

/* 1 if equal. */
static inline int mn_shape_eq(const mn_shape *a, const mn_shape *b)
{
    return a->n == b->n && a->c == b->c && a->d == b->d && a->h == b->h && a->w == b->w;
}

/* A range [offset, offset + count) of a flat buffer, in elements (the encoder or one head in the model's
 * parameter, gradient and batch-norm buffers).  Shared by the model and the MPI layer. */
typedef struct mn_range {
    size_t offset, count;
} mn_range;

/* Formats "NxCxDxHxW" into buf (at least 64 bytes) and returns buf, for error messages. */
char *mn_shape_str(const mn_shape *s, char *buf);

#endif
