/* embag: the instruction sets, reductions and element types, each listed once. embag.h's
 * EMBAG_ISA_*, EMBAG_MODE_* and EMBAG_DTYPE_* constants and embag.hpp's isa, mode and dtype enums,
 * all_* arrays and names are all made from these lists, so the C and C++ APIs cannot disagree and
 * a new value is one line here. Each entry is X(name, NAME, value): `name` is the C++ enumerator
 * and the name to_string gives (the one the tool and the .embag file use), NAME the C constant's
 * suffix, `value` the number both APIs (and files) carry. Included by embag.h and embag.hpp. */
#ifndef EMBAG_ENUMS_H
#define EMBAG_ENUMS_H

/* Instruction sets, lowest first. reference: the scalar oracle, plain loops, one thread. */
#define EMBAG_FOR_EACH_ISA(X) \
  X(reference, REFERENCE, 0)  \
  X(sse2, SSE2, 1)            \
  X(avx2, AVX2, 2)            \
  X(avx512, AVX512, 3)        \
  X(neon, NEON, 4)

/* How a bag's rows reduce to one output row.
 *   none:  plain lookup (nn.Embedding): one output row per index; bag boundaries are only validated
 *   sqrtn: TensorFlow's combiner: sum(w x) / sqrt(sum w^2), unweighted sum(x) / sqrt(count); 0 when
 *          that is 0 */
#define EMBAG_FOR_EACH_MODE(X) \
  X(sum, SUM, 0)               \
  X(mean, MEAN, 1)             \
  X(max, MAX, 2)               \
  X(none, NONE, 3)             \
  X(sqrtn, SQRTN, 4)

/* Element types of table rows; the values are the .embag file's dtype codes. f32 is plain floats;
 * the others are the compressed row formats embag/quantize.hpp describes:
 *   int8_rowwise: D uint8, fp32 scale, fp32 bias: D + 8 bytes
 *   int4_rowwise: ceil(D/2) bytes of nibbles, fp16 scale, fp16 bias: ceil(D/2) + 4 bytes */
#define EMBAG_FOR_EACH_DTYPE(X)      \
  X(f32, F32, 0)                     \
  X(f16, F16, 1)                     \
  X(bf16, BF16, 2)                   \
  X(int8_rowwise, INT8_ROWWISE, 3)   \
  X(int4_rowwise, INT4_ROWWISE, 4)

#endif /* EMBAG_ENUMS_H */
