/* embag: the C ABI (C99), for C callers and for foreign-function interfaces (ctypes, Rust bindgen,
 * cgo). A thin layer over the C++ API of embag.hpp: the same semantics, validation and messages.
 *
 * Conventions:
 * - Every function that can fail returns an embag_status: EMBAG_OK (0) or an error code. On error
 *   nothing is written (outputs, gradients, tables, out-parameters), except where a function says
 *   so (the row count of embag_backward_sparse). Bad input never aborts.
 * - The message of the last failed call on the calling thread is embag_last_error(); every call
 *   that returns a status clears it first, so after EMBAG_OK it is "".
 * - Enumerations are int constants carried in int32_t fields and arguments, so no struct's size
 *   depends on the compiler's choice of enum size. The instruction sets, modes and dtypes are made
 *   from embag/enums.h's lists, which embag.hpp's enums are made from too.
 * - Arrays are passed as a pointer and an element count; matrices as an embag_matrix whose
 *   row_stride (in elements) may exceed cols, 0 meaning cols.
 * - Tables are opaque handles over the caller's rows, a .npy or .embag file, or rows embag_quantize
 *   made; they never copy the caller's rows and may be used by many threads at once (except with
 *   max_norm in place, which writes the table).
 */
#ifndef EMBAG_EMBAG_H
#define EMBAG_EMBAG_H

#include <stddef.h>
#include <stdint.h>

#include "embag/enums.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Raised whenever a function, type or constant changes incompatibly; additions keep it. */
#define EMBAG_ABI_VERSION 1
int32_t embag_abi_version(void);      /* EMBAG_ABI_VERSION of the library actually loaded */
const char* embag_version(void);      /* "major.minor.patch" */

/* ---------------------------------------------------------------------------------------------
 * Status codes: 1 to 13 are embag::errc's values, in the same order. */
typedef int32_t embag_status;
#define EMBAG_OK 0
#define EMBAG_ERR_INDEX_OUT_OF_RANGE 1 /* an index < 0 or >= rows */
#define EMBAG_ERR_BAD_OFFSETS 2        /* offsets not starting at 0, decreasing, past the end */
#define EMBAG_ERR_BAD_LENGTHS 3        /* a negative length, or lengths not summing to the indices */
#define EMBAG_ERR_SIZE_MISMATCH 4      /* an array of the wrong length, or a capacity too small */
#define EMBAG_ERR_NULL_POINTER 5       /* a null pointer where data or a handle is needed */
#define EMBAG_ERR_INVALID_SHAPE 6      /* dim 0, negative rows, row stride smaller than dim */
#define EMBAG_ERR_SIZE_OVERFLOW 7      /* a byte count that does not fit in the address space */
#define EMBAG_ERR_INVALID_OPTION 8     /* an option or constant out of range, or a bad combination */
#define EMBAG_ERR_ALIASING 9           /* an output overlapping an input */
#define EMBAG_ERR_UNSUPPORTED_ISA 10   /* an instruction set this CPU (or build) lacks */
#define EMBAG_ERR_MISALIGNED 11        /* a pointer not aligned to its element type */
#define EMBAG_ERR_IO 12                /* a file that cannot be opened, mapped or read */
#define EMBAG_ERR_BAD_FILE 13          /* a file whose contents are malformed */
#define EMBAG_ERR_OUT_OF_MEMORY 100    /* an allocation failed; nothing was written */
#define EMBAG_ERR_INTERNAL 101         /* a bug in embag: please report embag_last_error() */

/* "ok", "index_out_of_range", ... ("unknown" for other values); never NULL, static storage. */
const char* embag_status_name(embag_status status);

/* The calling thread's last error message ("" after a success); valid until its next call. */
const char* embag_last_error(void);

/* Copies the last error message into buf (size bytes, always NUL-terminated when size > 0,
 * truncated if needed) and returns its full length, as snprintf does. Does not clear it. */
size_t embag_copy_last_error(char* buf, size_t size);

/* ---------------------------------------------------------------------------------------------
 * Tables: rows x dim floats, row r at data + r * row_stride; or compressed rows (below). */
typedef struct embag_table embag_table;

/* Bits of the flags of embag_table_open_npy and embag_table_open_embag; other bits are refused. */
#define EMBAG_LOAD_COPY 0x1u            /* read the file into memory the table owns (default: map) */
#define EMBAG_NPY_COPY EMBAG_LOAD_COPY  /* its first name, from when only .npy files opened */

/* Borrows the caller's rows (zero-copy; they must outlive the table). row_stride 0 means dim.
 * A table made from const memory is read-only: max_norm in place is refused on it. */
embag_status embag_table_from_memory(const float* data, int64_t rows, int64_t dim, int64_t row_stride,
                                     embag_table** out);
embag_status embag_table_from_mutable_memory(float* data, int64_t rows, int64_t dim, int64_t row_stride,
                                             embag_table** out);
/* A table from a 2-D float32 .npy file (versions 1.0 to 3.0, C order). By default the file is
 * memory-mapped read-only: no copy, and processes mapping the same file share its pages (the file
 * must then not change while the table lives); EMBAG_LOAD_COPY reads it into memory the table owns.
 * Big-endian files are converted, which copies. EMBAG_ERR_IO (cannot open, map, read) or
 * EMBAG_ERR_BAD_FILE (malformed header, not 2-D float32, truncated), naming the file. */
embag_status embag_table_open_npy(const char* path, uint32_t flags, embag_table** out);
/* Frees the handle (and unmaps its file, or frees the rows embag_quantize made; never borrowed
 * rows); NULL is allowed. Cannot fail. */
void embag_table_destroy(embag_table* table);
/* Every table's shape, compressed or not. */
embag_status embag_table_shape(const embag_table* table, int64_t* rows, int64_t* dim);

/* ---------------------------------------------------------------------------------------------
 * A batch of bags. */
#define EMBAG_INT32 0
#define EMBAG_INT64 1

#define EMBAG_BAGS_OFFSETS 0 /* bag b is indices[offsets[b] .. offsets[b+1]) */
#define EMBAG_BAGS_LENGTHS 1 /* bag b has lengths[b] indices, bags back to back */
#define EMBAG_BAGS_FIXED 2   /* indices is a B x fixed_length array; no boundaries */

typedef struct embag_bags {
  const void* indices; /* num_indices values of index_type */
  int64_t num_indices;
  const void* boundaries; /* offsets or lengths per layout: num_boundaries values of boundary_type */
  int64_t num_boundaries;
  const float* per_sample_weights; /* NULL: none; otherwise num_weights == num_indices floats */
  int64_t num_weights;
  int64_t fixed_length; /* L, for EMBAG_BAGS_FIXED */
  int32_t index_type;    /* EMBAG_INT32 or EMBAG_INT64 */
  int32_t boundary_type; /* EMBAG_INT32 or EMBAG_INT64 */
  int32_t layout;        /* EMBAG_BAGS_* */
} embag_bags;

/* ---------------------------------------------------------------------------------------------
 * Options. Initialise with embag_options_init, then change fields; a NULL options pointer means
 * the defaults. struct_size lets the struct grow: a library reads only the struct_size bytes the
 * caller was compiled with (later fields keep their defaults), and refuses non-zero bytes it does
 * not know. A struct_size above EMBAG_OPTIONS_MAX_STRUCT_SIZE is no embag_options of any version
 * (an uninitialised struct, most likely): EMBAG_ERR_INVALID_OPTION, before a byte past the fields
 * this library knows is read. */
#define EMBAG_OPTIONS_MAX_STRUCT_SIZE 4096
/* EMBAG_MODE_SUM, _MEAN, _MAX, _NONE (plain lookup: one output row per index), _SQRTN */
#define EMBAG_MODE_CONSTANT_(name, NAME, value) EMBAG_MODE_##NAME = value,
enum { EMBAG_FOR_EACH_MODE(EMBAG_MODE_CONSTANT_) };
#undef EMBAG_MODE_CONSTANT_

/* EMBAG_ISA_REFERENCE (the scalar oracle: plain loops, one thread), _SSE2, _AVX2, _AVX512, _NEON */
#define EMBAG_ISA_CONSTANT_(name, NAME, value) EMBAG_ISA_##NAME = value,
enum { EMBAG_FOR_EACH_ISA(EMBAG_ISA_CONSTANT_) };
#undef EMBAG_ISA_CONSTANT_
#define EMBAG_ISA_DEFAULT (-1) /* the process-wide choice */

#define EMBAG_PREFETCH_AUTOMATIC 0
#define EMBAG_PREFETCH_NONE 1
#define EMBAG_PREFETCH_L1 2
#define EMBAG_PREFETCH_L2 3          /* into L2, rows read in passes of at most 256 bytes */
#define EMBAG_PREFETCH_L2_ONE_PASS 4 /* into L2, rows read whole */

/* Bits of embag_options.flags; other bits are refused. */
#define EMBAG_HAS_PADDING_IDX 0x1u       /* padding_idx is used */
#define EMBAG_INCLUDE_LAST_OFFSET 0x2u   /* offsets has B+1 entries, the last == num_indices */
#define EMBAG_HAS_MAX_NORM 0x4u          /* max_norm is used (clip: the gathered copy is scaled) */
#define EMBAG_MAX_NORM_IN_PLACE 0x8u     /* with EMBAG_HAS_MAX_NORM: rescale the (mutable) table */
#define EMBAG_SCALE_GRAD_BY_FREQ 0x10u   /* backward: divide by each row's count in the call */
#define EMBAG_PRUNED_IDS 0x20u           /* index -1 is a pruned row: skipped like padding */

/* What a call does with an index outside the table (embag.hpp's bad_index_policy). */
#define EMBAG_BAD_INDICES_ERROR 0 /* EMBAG_ERR_INDEX_OUT_OF_RANGE naming it; nothing written (default) */
#define EMBAG_BAD_INDICES_SKIP 1  /* skipped like padding and counted in options.report (required) */

/* What the index policies skipped, written once the whole call is valid. */
typedef struct embag_index_report {
  int64_t skipped;        /* indices outside the table (or the remap) skipped */
  int64_t first_position; /* the first of them: its position in indices, -1 when none */
  int64_t first_value;    /* and its value */
  int64_t pruned;         /* indices skipped as pruned: -1 with EMBAG_PRUNED_IDS, or remapped to -1 */
} embag_index_report;

typedef struct embag_options {
  uint32_t struct_size; /* sizeof(embag_options), set by embag_options_init */
  int32_t mode;         /* EMBAG_MODE_*; default sum */
  uint32_t flags;       /* EMBAG_HAS_PADDING_IDX | ...; default 0 */
  int32_t max_threads;  /* 0: every thread of the current TBB arena (default); 1: inline; n: cap */
  int64_t padding_idx;  /* with EMBAG_HAS_PADDING_IDX; negative counts from the end */
  float max_norm;       /* with EMBAG_HAS_MAX_NORM */
  float norm_type;      /* p of the p-norm; default 2 (INFINITY allowed) */
  int32_t isa;          /* EMBAG_ISA_*; default EMBAG_ISA_DEFAULT */
  int32_t prefetch_level; /* EMBAG_PREFETCH_*; default automatic */
  int32_t prefetch_rows;  /* how far ahead; 0: chosen from the row size */
  /* Since 0.2 (a struct_size of 48, 0.1's, leaves them at their defaults): index policies. */
  const void* remap;          /* NULL: ids are rows; else remap_size values of remap_type: id -> row, -1 pruned */
  int64_t remap_size;
  embag_index_report* report; /* receives what the policies skipped; EMBAG_BAD_INDICES_SKIP needs it */
  int32_t remap_type;         /* EMBAG_INT32 or EMBAG_INT64 */
  int32_t bad_indices;        /* EMBAG_BAD_INDICES_*; default error */
} embag_options;

embag_status embag_options_init(embag_options* options);

/* ---------------------------------------------------------------------------------------------
 * Matrices: outputs and gradients. */
typedef struct embag_matrix {
  float* data;
  int64_t rows, cols, row_stride; /* row_stride in elements; 0 means cols */
} embag_matrix;

typedef struct embag_const_matrix {
  const float* data;
  int64_t rows, cols, row_stride;
} embag_const_matrix;

/* ---------------------------------------------------------------------------------------------
 * Entry points. argmax (mode max only) is output_rows x dim int64 values, the table row each
 * maximum came from (-1 for an empty bag); pass NULL and 0 to leave it out of forward. */

/* Rows of out a call produces: the number of bags, or num_indices with EMBAG_MODE_NONE. */
embag_status embag_output_rows(const embag_bags* bags, const embag_options* options, int64_t* rows);

/* out (output_rows x dim) = the bags' reductions of the table's rows (for a compressed table, of
 * its dequantised rows: the same bits as forward on the f32 table embag_dequantize makes; max_norm
 * is refused on it). */
embag_status embag_forward(const embag_table* table, const embag_bags* bags, const embag_options* options,
                           const embag_matrix* out, int64_t* argmax, int64_t argmax_size);

/* Many tables in one call (embag/batched.hpp's forward_batched): every table's lookups validated
 * first (nothing is written unless all pass; an error names the table, "tables[3]: ..."), then one
 * parallel loop over all of them; each out bitwise what embag_forward writes for its table. The
 * outs may be one buffer's columns side by side (data at each table's column, row_stride the
 * buffer's) but share no cell. options: the call's execution (max_threads, isa, prefetch), as
 * embag_quantize reads them; a table's own options must leave those at their defaults, and its
 * max_norm may only clip. */
typedef struct embag_table_lookup {
  uint32_t struct_size; /* sizeof(embag_table_lookup): entries lie struct_size bytes apart */
  const embag_table* table;
  const embag_bags* bags;
  const embag_options* options; /* NULL: the defaults */
  const embag_matrix* out;      /* output_rows x the table's dim */
  /* Since 0.2 (0.1's struct_size, 40, leaves it f32): the element type of out: EMBAG_DTYPE_F32, or
   * EMBAG_DTYPE_F16 / EMBAG_DTYPE_BF16 (out->data then points at 16-bit elements, cast to float*;
   * row_stride counts them; each the fp32 result rounded once to nearest even). */
  int32_t out_type;
} embag_table_lookup;
embag_status embag_forward_batched(const embag_table_lookup* tables, int64_t num_tables, const embag_options* options);

/* grad_table (rows x dim) += the gradient of forward's output, grad_output (output_rows x dim). */
embag_status embag_backward_dense(const embag_bags* bags, const embag_options* options,
                                  const embag_const_matrix* grad_output, const embag_matrix* grad_table,
                                  const int64_t* argmax, int64_t argmax_size);

/* The same gradient, sparse: the sorted unique non-padding rows the call references, into
 * rows_out (capacity entries), and their gradient rows into values_out (capacity x dim floats,
 * dim = grad_output->cols, dense). Once the arguments are valid, *num_rows receives the number
 * of rows the gradient has, at most num_indices: a capacity of num_indices always suffices. If
 * capacity is smaller, the status is EMBAG_ERR_SIZE_MISMATCH and rows_out and values_out are
 * untouched; so capacity 0 with NULL buffers asks for the size alone (the gradient is computed
 * either way: size by num_indices to compute it once). rows_out, values_out and num_rows are
 * outputs as grad_table is: aligned to their elements (EMBAG_ERR_MISALIGNED), overlapping neither
 * each other nor any input (EMBAG_ERR_ALIASING); *num_rows is not set on those errors. */
embag_status embag_backward_sparse(int64_t table_rows, const embag_bags* bags, const embag_options* options,
                                   const embag_const_matrix* grad_output, const int64_t* argmax,
                                   int64_t argmax_size, int64_t capacity, int64_t* rows_out,
                                   float* values_out, int64_t* num_rows);

/* The gradient of the per-sample weights (num_indices floats), for modes sum and mean; the table
 * must be f32 (EMBAG_ERR_INVALID_OPTION for a compressed one). */
embag_status embag_per_sample_weights_grad(const embag_table* table, const embag_bags* bags,
                                           const embag_options* options, const embag_const_matrix* grad_output,
                                           float* grad_weights, int64_t grad_weights_size);

/* ---------------------------------------------------------------------------------------------
 * Fused sparse optimizers (embag/optim.hpp has the formulas, where they differ from PyTorch's, and
 * the policy on rows that would not stay finite: left as they were, and counted). */
#define EMBAG_OPTIMIZER_SGD 0
#define EMBAG_OPTIMIZER_ADAGRAD 1
#define EMBAG_OPTIMIZER_ROWWISE_ADAGRAD 2
#define EMBAG_ROUNDING_NEAREST 0    /* an f16 / bf16 weight: to nearest, ties to even */
#define EMBAG_ROUNDING_STOCHASTIC 1 /* up with probability (w - down) / (up - down) */

/* Initialise with embag_optimizer_init; struct_size lets the struct grow as embag_options does. */
typedef struct embag_optimizer {
  uint32_t struct_size;  /* sizeof(embag_optimizer), set by embag_optimizer_init */
  int32_t kind;          /* EMBAG_OPTIMIZER_* */
  float learning_rate;   /* default 0.01; finite, >= 0 */
  float eps;             /* default 1e-10 (adagrad, rowwise adagrad); finite, >= 0 */
  float weight_decay;    /* default 0; finite, >= 0 */
  int32_t rounding;      /* EMBAG_ROUNDING_*; default nearest */
  uint64_t seed;         /* stochastic rounding: a hash of (seed, row, column); give each step its own */
} embag_optimizer;
embag_status embag_optimizer_init(embag_optimizer* optimizer, int32_t kind);

/* A table an optimizer writes: rows x dim elements of dtype (EMBAG_DTYPE_F32, _F16 or _BF16), row
 * r at data + r * row_stride elements (0 means dim). */
typedef struct embag_trainable_table {
  void* data;
  int64_t rows, dim, row_stride;
  int32_t dtype;
} embag_trainable_table;

typedef struct embag_update_summary {
  int64_t rows_updated;
  int64_t rows_not_finite;      /* rows left as they were: an update not finite, or past a 16-bit type */
  int64_t first_not_finite_row; /* the lowest of them, -1 when none */
} embag_update_summary;

/* Backward and the optimizer's step on every row the bags touch, in one pass, no gradient written.
 * state (fp32): rows x dim for adagrad, rows x 1 for rowwise adagrad, NULL for sgd. Every argument
 * is checked before the first write; summary (NULL: not wanted) is written last. */
embag_status embag_backward_update(const embag_trainable_table* table, const embag_bags* bags,
                                   const embag_options* options, const embag_const_matrix* grad_output,
                                   const int64_t* argmax, int64_t argmax_size, const embag_optimizer* optimizer,
                                   const embag_matrix* state, embag_update_summary* summary);
/* The step from a sparse gradient: num_rows ascending unique rows, and their gradient rows
 * (num_rows x dim floats, dense) in values. options: the call's execution only (NULL: defaults). */
embag_status embag_apply_sparse_gradient(const embag_trainable_table* table, const int64_t* rows, int64_t num_rows,
                                         const float* values, const embag_optimizer* optimizer,
                                         const embag_matrix* state, const embag_options* options,
                                         embag_update_summary* summary);

/* ---------------------------------------------------------------------------------------------
 * Compressed tables, for inference: rows of fp16, bf16, or 8-bit or 4-bit integers with an fp32 /
 * fp16 scale and bias per row (FBGEMM's fused rowwise layouts). embag/quantize.hpp has their bytes
 * and error bounds. embag_forward reads every dtype (dequantising as it goes); the gradients and
 * max_norm need f32 tables. */
/* EMBAG_DTYPE_F32, _F16, _BF16, _INT8_ROWWISE, _INT4_ROWWISE (their bytes: embag/enums.h) */
#define EMBAG_DTYPE_CONSTANT_(name, NAME, value) EMBAG_DTYPE_##NAME = value,
enum { EMBAG_FOR_EACH_DTYPE(EMBAG_DTYPE_CONSTANT_) };
#undef EMBAG_DTYPE_CONSTANT_

/* "f32", "f16", "bf16", "int8_rowwise", "int4_rowwise"; NULL for other values. */
const char* embag_dtype_name(int32_t dtype);
/* Bytes of one packed row of dim elements. */
embag_status embag_row_bytes(int32_t dtype, int64_t dim, int64_t* bytes);
/* The table's EMBAG_DTYPE_* (EMBAG_DTYPE_F32 for tables of floats). */
embag_status embag_table_dtype(const embag_table* table, int32_t* dtype);

/* Borrows the caller's rows in dtype's layout (zero-copy; they must outlive the table), row r at
 * (const char*)data + r * row_stride_bytes; 0 means packed (embag_row_bytes). EMBAG_DTYPE_F32
 * rows must be float-aligned, and the table is then an ordinary read-only float table. */
embag_status embag_table_from_compressed_memory(const void* data, int64_t rows, int64_t dim,
                                                int64_t row_stride_bytes, int32_t dtype, embag_table** out);
/* A table from an .embag file (see embag_table_write_embag): memory-mapped read-only by default,
 * read into owned memory with EMBAG_LOAD_COPY. EMBAG_ERR_IO or EMBAG_ERR_BAD_FILE (magic, version,
 * dtype, sizes, truncated or trailing data), naming the file. */
embag_status embag_table_open_embag(const char* path, uint32_t flags, embag_table** out);
/* A new table that owns source's rows converted to dtype (source must be an f32 table), in
 * parallel (of the options, only max_threads matters; all are checked as for forward; NULL means
 * the defaults), the same bits whatever the thread count. Rows a dtype cannot hold (NaN or Inf for the rowwise ones, a value fp16 overflows) are
 * EMBAG_ERR_INVALID_OPTION naming table[row][column] and the value. */
embag_status embag_quantize(const embag_table* source, int32_t dtype, const embag_options* options,
                            embag_table** out);
/* out (rows x dim of the table) = the fp32 values of the table's rows, for every dtype; options as
 * for embag_quantize. */
embag_status embag_dequantize(const embag_table* table, const embag_options* options, const embag_matrix* out);
/* Writes the table's rows, packed, to an .embag file: header (magic EMBAGTBL, version, dtype,
 * rows, dim, row bytes, data offset), then the rows. Written beside path and renamed over it: a
 * failed write leaves no file. */
embag_status embag_table_write_embag(const embag_table* table, const char* path);

/* ---------------------------------------------------------------------------------------------
 * Instruction sets. */

/* The instruction sets this CPU and build support, lowest first (always EMBAG_ISA_REFERENCE):
 * *count receives how many; the first min(count, capacity) go into isas. */
embag_status embag_available_isas(int32_t* isas, int32_t capacity, int32_t* count);
/* The one calls with EMBAG_ISA_DEFAULT use. */
embag_status embag_active_isa(int32_t* isa);
/* Forces the process-wide choice; EMBAG_ERR_UNSUPPORTED_ISA naming what the CPU has. */
embag_status embag_force_isa(int32_t isa);
/* "reference", "sse2", ...; NULL for a value that is no EMBAG_ISA_* constant. */
const char* embag_isa_name(int32_t isa);

#ifdef __cplusplus
}
#endif

#endif /* EMBAG_EMBAG_H */
