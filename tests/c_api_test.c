/* The C ABI, compiled as C99: every function of embag.h, its results against sums worked out here
 * (small integers: exact in float), and its error paths (status, message, buffers untouched). */
#include "embag/embag.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks, failures;

static void check(int ok, const char* what, int line) {
  ++checks;
  if (!ok) {
    ++failures;
    fprintf(stderr, "c_api_test.c:%d: failed: %s\n", line, what);
  }
}
#define CHECK(cond) check((cond) != 0, #cond, __LINE__)

static void expect_status(embag_status got, embag_status want, const char* call, int line) {
  ++checks;
  if (got != want) {
    ++failures;
    fprintf(stderr, "c_api_test.c:%d: %s returned %s, expected %s: %s\n", line, call, embag_status_name(got),
            embag_status_name(want), embag_last_error());
  }
}
#define EXPECT_STATUS(call, want) expect_status((call), (want), #call, __LINE__)
#define EXPECT_OK(call) expect_status((call), EMBAG_OK, #call, __LINE__)

static int error_mentions(const char* text) { return strstr(embag_last_error(), text) != NULL; }

enum { rows = 10, dim = 4 };
static float table_rows[rows * dim]; /* row r is {10r, 10r + 1, 10r + 2, 10r + 3} */
static const float canary = -12345.0f;

static float value(int row, int col) { return (float)(10 * row + col); }

static void fill(float* p, int n, float v) {
  int i;
  for (i = 0; i < n; ++i) p[i] = v;
}

static int all_equal(const float* p, int n, float v) {
  int i;
  for (i = 0; i < n; ++i)
    if (p[i] != v) return 0;
  return 1;
}

/* Two bags of int64 offsets: {1, 2, 2} and {7}. */
static const int64_t indices64[] = {1, 2, 2, 7};
static const int64_t offsets64[] = {0, 3};

static embag_bags offsets_bags(void) {
  embag_bags b;
  memset(&b, 0, sizeof b);
  b.indices = indices64;
  b.num_indices = 4;
  b.index_type = EMBAG_INT64;
  b.layout = EMBAG_BAGS_OFFSETS;
  b.boundaries = offsets64;
  b.num_boundaries = 2;
  b.boundary_type = EMBAG_INT64;
  return b;
}

static void test_version_and_status_names(void) {
  CHECK(embag_abi_version() == EMBAG_ABI_VERSION);
  CHECK(strlen(embag_version()) >= 5);
  CHECK(strcmp(embag_status_name(EMBAG_OK), "ok") == 0);
  CHECK(strcmp(embag_status_name(EMBAG_ERR_INDEX_OUT_OF_RANGE), "index_out_of_range") == 0);
  CHECK(strcmp(embag_status_name(EMBAG_ERR_BAD_FILE), "bad_file") == 0);
  CHECK(strcmp(embag_status_name(EMBAG_ERR_OUT_OF_MEMORY), "out_of_memory") == 0);
  CHECK(strcmp(embag_status_name(EMBAG_ERR_INTERNAL), "internal") == 0);
  CHECK(strcmp(embag_status_name(999), "unknown") == 0);
}

static void test_tables(void) {
  static int sentinel;
  embag_table* t = NULL;
  embag_table* untouched = (embag_table*)&sentinel;
  int64_t r = 0, d = 0;
  EXPECT_OK(embag_table_from_memory(table_rows, rows, dim, 0, &t));
  EXPECT_OK(embag_table_shape(t, &r, &d));
  CHECK(r == rows && d == dim);
  EXPECT_STATUS(embag_table_shape(NULL, &r, &d), EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_table_shape(t, NULL, &d), EMBAG_ERR_NULL_POINTER);
  embag_table_destroy(t);
  embag_table_destroy(NULL);

  EXPECT_STATUS(embag_table_from_memory(NULL, rows, dim, 0, &untouched), EMBAG_ERR_NULL_POINTER);
  CHECK(error_mentions("table"));
  EXPECT_STATUS(embag_table_from_memory(table_rows, rows, 0, 0, &untouched), EMBAG_ERR_INVALID_SHAPE);
  EXPECT_STATUS(embag_table_from_memory(table_rows, rows, dim, 2, &untouched), EMBAG_ERR_INVALID_SHAPE);
  EXPECT_STATUS(embag_table_from_mutable_memory(table_rows + 0, -1, dim, 0, &untouched), EMBAG_ERR_INVALID_SHAPE);
  EXPECT_STATUS(embag_table_from_memory((const float*)((const char*)table_rows + 1), rows, dim, 0, &untouched),
                EMBAG_ERR_MISALIGNED);
  CHECK(untouched == (embag_table*)&sentinel);
  EXPECT_STATUS(embag_table_from_memory(table_rows, rows, dim, 0, NULL), EMBAG_ERR_NULL_POINTER);
}

/* tests/data (EMBAG_TEST_DATA) holds .npy files NumPy wrote; v1_f32_2x3.npy is 2 x 3, k-th value k/2. */
static void data_file(char* path, size_t size, const char* name) {
  const char* dir = getenv("EMBAG_TEST_DATA");
  snprintf(path, size, "%s/%s", dir != NULL ? dir : "tests/data", name);
}

static void test_npy_tables(void) {
  static int sentinel;
  char path[4096];
  embag_table* t = NULL;
  embag_table* untouched = (embag_table*)&sentinel;
  const int64_t indices[] = {1, 0, 1};
  const int64_t offsets[] = {0, 1};
  float out[2 * 3];
  embag_matrix out_view = {out, 2, 3, 0};
  embag_bags b = offsets_bags();
  int64_t r = 0, d = 0;
  uint32_t how;
  b.indices = indices;
  b.num_indices = 3;
  b.boundaries = offsets;

  data_file(path, sizeof path, "v1_f32_2x3.npy");
  for (how = 0; how <= EMBAG_NPY_COPY; how += EMBAG_NPY_COPY) {
    EXPECT_OK(embag_table_open_npy(path, how, &t));
    EXPECT_OK(embag_table_shape(t, &r, &d));
    CHECK(r == 2 && d == 3);
    EXPECT_OK(embag_forward(t, &b, NULL, &out_view, NULL, 0));
    CHECK(out[0] == 1.5f && out[2] == 2.5f && out[3] == 0.0f + 1.5f && out[5] == 1.0f + 2.5f);
    embag_table_destroy(t);
    t = NULL;
  }

  data_file(path, sizeof path, "no_such_file.npy");
  EXPECT_STATUS(embag_table_open_npy(path, 0, &untouched), EMBAG_ERR_IO);
  CHECK(error_mentions("no_such_file.npy"));
  data_file(path, sizeof path, "fortran_f32_2x3.npy");
  EXPECT_STATUS(embag_table_open_npy(path, 0, &untouched), EMBAG_ERR_BAD_FILE);
  CHECK(error_mentions("fortran_f32_2x3.npy"));
  data_file(path, sizeof path, "v2_i64_3.npy"); /* a 1-D int64 array is no table */
  EXPECT_STATUS(embag_table_open_npy(path, EMBAG_NPY_COPY, &untouched), EMBAG_ERR_BAD_FILE);
  CHECK(error_mentions("v2_i64_3.npy"));
  data_file(path, sizeof path, "v1_f32_2x3.npy");
  EXPECT_STATUS(embag_table_open_npy(path, 0x4u, &untouched), EMBAG_ERR_INVALID_OPTION);
  EXPECT_STATUS(embag_table_open_npy(NULL, 0, &untouched), EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_table_open_npy(path, 0, NULL), EMBAG_ERR_NULL_POINTER);
  CHECK(untouched == (embag_table*)&sentinel);
}

static void test_forward_modes(const embag_table* t) {
  float out[rows * dim];
  int64_t argmax[2 * dim];
  embag_matrix two_rows = {out, 2, dim, 0};
  embag_bags b = offsets_bags();
  embag_options o;
  int64_t out_rows = 0;
  int c;

  EXPECT_OK(embag_options_init(&o));
  CHECK(o.struct_size == sizeof o && o.mode == EMBAG_MODE_SUM && o.isa == EMBAG_ISA_DEFAULT && o.norm_type == 2.0f);
  EXPECT_OK(embag_output_rows(&b, &o, &out_rows));
  CHECK(out_rows == 2);

  /* sum, with default options given as NULL */
  EXPECT_OK(embag_forward(t, &b, NULL, &two_rows, NULL, 0));
  for (c = 0; c < dim; ++c) {
    CHECK(out[c] == value(1, c) + value(2, c) + value(2, c));
    CHECK(out[dim + c] == value(7, c));
  }

  /* mean, int32 indices and lengths */
  {
    const int32_t indices32[] = {1, 2, 2, 7};
    const int32_t lengths32[] = {3, 1};
    embag_bags lb = b;
    lb.indices = indices32;
    lb.index_type = EMBAG_INT32;
    lb.layout = EMBAG_BAGS_LENGTHS;
    lb.boundaries = lengths32;
    lb.boundary_type = EMBAG_INT32;
    o.mode = EMBAG_MODE_MEAN;
    EXPECT_OK(embag_forward(t, &lb, &o, &two_rows, NULL, 0));
    for (c = 0; c < dim; ++c) CHECK(out[c] == (value(1, c) + 2 * value(2, c)) / 3);
  }

  /* max with argmax: the rows the maxima came from */
  o.mode = EMBAG_MODE_MAX;
  EXPECT_OK(embag_forward(t, &b, &o, &two_rows, argmax, 2 * dim));
  for (c = 0; c < dim; ++c) {
    CHECK(out[c] == value(2, c) && argmax[c] == 2);
    CHECK(out[dim + c] == value(7, c) && argmax[dim + c] == 7);
  }

  /* fixed-length bags: 2 bags of 2 */
  {
    embag_bags fb = b;
    fb.layout = EMBAG_BAGS_FIXED;
    fb.boundaries = NULL;
    fb.num_boundaries = 0;
    fb.fixed_length = 2;
    o.mode = EMBAG_MODE_SUM;
    EXPECT_OK(embag_forward(t, &fb, &o, &two_rows, NULL, 0));
    CHECK(out[0] == value(1, 0) + value(2, 0) && out[dim] == value(2, 0) + value(7, 0));
  }

  /* mode none: one row per index */
  {
    embag_matrix four_rows = {out, 4, dim, 0};
    o.mode = EMBAG_MODE_NONE;
    EXPECT_OK(embag_output_rows(&b, &o, &out_rows));
    CHECK(out_rows == 4);
    EXPECT_OK(embag_forward(t, &b, &o, &four_rows, NULL, 0));
    CHECK(out[3 * dim + 1] == value(7, 1));
  }

  /* per-sample weights, padding_idx, include_last_offset */
  {
    const float weights[] = {2.0f, 1.0f, 1.0f, 3.0f};
    const int64_t offsets_with_last[] = {0, 3, 4};
    embag_bags wb = b;
    wb.per_sample_weights = weights;
    wb.num_weights = 4;
    wb.boundaries = offsets_with_last;
    wb.num_boundaries = 3;
    o.mode = EMBAG_MODE_SUM;
    o.flags = EMBAG_INCLUDE_LAST_OFFSET | EMBAG_HAS_PADDING_IDX;
    o.padding_idx = 2;
    EXPECT_OK(embag_forward(t, &wb, &o, &two_rows, NULL, 0));
    for (c = 0; c < dim; ++c) {
      CHECK(out[c] == 2 * value(1, c));
      CHECK(out[dim + c] == 3 * value(7, c));
    }
    o.flags = 0;

    wb.num_weights = 0;  /* a weights pointer without its count */
    EXPECT_STATUS(embag_forward(t, &wb, &o, &two_rows, NULL, 0), EMBAG_ERR_SIZE_MISMATCH);
    CHECK(error_mentions("num_weights"));
  }

  /* max_norm clip: row 7's norm is far above 1, so the copy of it has norm ~1 */
  {
    double norm = 0;
    o.flags = EMBAG_HAS_MAX_NORM;
    o.max_norm = 1.0f;
    EXPECT_OK(embag_forward(t, &b, &o, &two_rows, NULL, 0));
    for (c = 0; c < dim; ++c) norm += (double)out[dim + c] * out[dim + c];
    CHECK(fabs(sqrt(norm) - 1.0) < 1e-5);
    CHECK(table_rows[7 * dim] == value(7, 0)); /* the table is never written */

    o.flags = EMBAG_HAS_MAX_NORM | EMBAG_MAX_NORM_IN_PLACE; /* needs a mutable table */
    fill(out, 2 * dim, canary);
    EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
    CHECK(error_mentions("mutable"));
    CHECK(all_equal(out, 2 * dim, canary));

    o.flags = EMBAG_MAX_NORM_IN_PLACE;
    EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
    o.flags = 0;
  }

  /* the same bits on one thread, two threads and the reference ISA */
  {
    float inline_out[2 * dim];
    embag_matrix inline_view = {inline_out, 2, dim, dim};
    o.mode = EMBAG_MODE_MEAN;
    o.max_threads = 1;
    EXPECT_OK(embag_forward(t, &b, &o, &inline_view, NULL, 0));
    o.max_threads = 2;
    EXPECT_OK(embag_forward(t, &b, &o, &two_rows, NULL, 0));
    CHECK(memcmp(out, inline_out, sizeof inline_out) == 0);
    o.max_threads = 0;
    o.isa = EMBAG_ISA_REFERENCE;
    o.prefetch_level = EMBAG_PREFETCH_NONE;
    EXPECT_OK(embag_forward(t, &b, &o, &two_rows, NULL, 0));
    CHECK(memcmp(out, inline_out, sizeof inline_out) == 0);
  }
}

static void test_max_norm_in_place(void) {
  float own_rows[rows * dim];
  float out[dim];
  const int64_t one_index[] = {7};
  const int64_t one_offset[] = {0};
  embag_table* t = NULL;
  embag_bags b = offsets_bags();
  embag_matrix one_row = {out, 1, dim, 0};
  embag_options o;
  memcpy(own_rows, table_rows, sizeof own_rows);
  b.indices = one_index;
  b.num_indices = 1;
  b.boundaries = one_offset;
  b.num_boundaries = 1;
  EXPECT_OK(embag_options_init(&o));
  o.flags = EMBAG_HAS_MAX_NORM | EMBAG_MAX_NORM_IN_PLACE;
  o.max_norm = 1.0f;
  EXPECT_OK(embag_table_from_mutable_memory(own_rows, rows, dim, 0, &t));
  EXPECT_OK(embag_forward(t, &b, &o, &one_row, NULL, 0));
  CHECK(own_rows[7 * dim + 1] < value(7, 1) && own_rows[7 * dim + 1] == out[1]); /* rescaled in the table */
  CHECK(own_rows[6 * dim + 1] == value(6, 1));
  embag_table_destroy(t);
}

static void test_bad_input(const embag_table* t) {
  const int64_t bad_indices[] = {1, 99, 2, 7};
  float out[2 * dim];
  embag_matrix two_rows = {out, 2, dim, 0};
  embag_bags b = offsets_bags();
  embag_options o;
  char small[8];
  char whole[256];
  size_t length;

  fill(out, 2 * dim, canary);
  b.indices = bad_indices;
  EXPECT_STATUS(embag_forward(t, &b, NULL, &two_rows, NULL, 0), EMBAG_ERR_INDEX_OUT_OF_RANGE);
  CHECK(error_mentions("indices[1] = 99"));
  CHECK(all_equal(out, 2 * dim, canary));

  length = embag_copy_last_error(small, sizeof small);
  CHECK(length == strlen(embag_last_error()) && length > sizeof small);
  CHECK(strlen(small) == sizeof small - 1 && strncmp(small, embag_last_error(), sizeof small - 1) == 0);
  CHECK(embag_copy_last_error(whole, sizeof whole) == length && strcmp(whole, embag_last_error()) == 0);
  CHECK(embag_copy_last_error(NULL, 0) == length);

  /* a success clears the message */
  b = offsets_bags();
  EXPECT_OK(embag_forward(t, &b, NULL, &two_rows, NULL, 0));
  CHECK(strcmp(embag_last_error(), "") == 0 && embag_copy_last_error(whole, sizeof whole) == 0);

  fill(out, 2 * dim, canary);
  {
    const int64_t bad_offsets[] = {0, 5};
    b.boundaries = bad_offsets;
    EXPECT_STATUS(embag_forward(t, &b, NULL, &two_rows, NULL, 0), EMBAG_ERR_BAD_OFFSETS);
    b = offsets_bags();
  }
  EXPECT_STATUS(embag_forward(NULL, &b, NULL, &two_rows, NULL, 0), EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_forward(t, NULL, NULL, &two_rows, NULL, 0), EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_forward(t, &b, NULL, NULL, NULL, 0), EMBAG_ERR_NULL_POINTER);
  CHECK(error_mentions("out"));
  {
    embag_matrix one_row = {out, 1, dim, 0};
    EXPECT_STATUS(embag_forward(t, &b, NULL, &one_row, NULL, 0), EMBAG_ERR_SIZE_MISMATCH);
  }
  {
    embag_matrix overlapping = {(float*)table_rows, 2, dim, 0};
    EXPECT_STATUS(embag_forward(t, &b, NULL, &overlapping, NULL, 0), EMBAG_ERR_ALIASING);
  }
  EXPECT_STATUS(embag_forward(t, &b, NULL, &two_rows, NULL, 5), EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_forward(t, &b, NULL, &two_rows, NULL, -1), EMBAG_ERR_SIZE_MISMATCH);
  b.index_type = 7;
  EXPECT_STATUS(embag_forward(t, &b, NULL, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("bags.index_type = 7"));
  b = offsets_bags();
  b.layout = 3;
  EXPECT_STATUS(embag_forward(t, &b, NULL, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  b = offsets_bags();

  /* options: each constant out of range, and the struct_size contract */
  EXPECT_OK(embag_options_init(&o));
  o.mode = 4;
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("options.mode = 4"));
  EXPECT_OK(embag_options_init(&o));
  o.flags = 0x100u;
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  EXPECT_OK(embag_options_init(&o));
  o.isa = 9;
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  EXPECT_OK(embag_options_init(&o));
  o.prefetch_level = 4;
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  EXPECT_OK(embag_options_init(&o));
  o.max_threads = -2;
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  EXPECT_OK(embag_options_init(&o));
  o.flags = EMBAG_HAS_PADDING_IDX;
  o.padding_idx = rows;
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("padding_idx = 10"));
  EXPECT_OK(embag_options_init(&o));
  o.struct_size = 8;
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("struct_size"));
  CHECK(all_equal(out, 2 * dim, canary));
  {
    /* a newer caller's larger struct: accepted while the fields this library lacks are zero */
    struct {
      embag_options known;
      int64_t newer_field;
    } larger;
    memset(&larger, 0, sizeof larger);
    EXPECT_OK(embag_options_init(&larger.known));
    larger.known.struct_size = sizeof larger;
    EXPECT_OK(embag_forward(t, &b, &larger.known, &two_rows, NULL, 0));
    larger.newer_field = 1;
    EXPECT_STATUS(embag_forward(t, &b, &larger.known, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
    CHECK(error_mentions("newer"));
  }
  EXPECT_STATUS(embag_options_init(NULL), EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_output_rows(&b, NULL, NULL), EMBAG_ERR_NULL_POINTER);
}

static void test_backward(const embag_table* t) {
  const float dy[2 * dim] = {1, 2, 3, 4, 5, 6, 7, 8};
  float grad_table[rows * dim];
  embag_const_matrix grad_output = {dy, 2, dim, 0};
  embag_matrix grad_view = {grad_table, rows, dim, 0};
  embag_bags b = offsets_bags();
  embag_options o;
  int64_t sparse_rows[4];
  float sparse_values[4 * dim];
  int64_t num_rows = -1;
  int c;

  /* dense: row 2 gets dY[0] twice, row 1 once, row 7 dY[1]; accumulates into what is there */
  fill(grad_table, rows * dim, 1.0f);
  EXPECT_OK(embag_backward_dense(&b, NULL, &grad_output, &grad_view, NULL, 0));
  for (c = 0; c < dim; ++c) {
    CHECK(grad_table[1 * dim + c] == 1 + dy[c]);
    CHECK(grad_table[2 * dim + c] == 1 + 2 * dy[c]);
    CHECK(grad_table[7 * dim + c] == 1 + dy[dim + c]);
    CHECK(grad_table[0 * dim + c] == 1);
  }

  /* scale_grad_by_freq: row 2 occurs twice, so its gradient is divided by 2 */
  EXPECT_OK(embag_options_init(&o));
  o.flags = EMBAG_SCALE_GRAD_BY_FREQ;
  fill(grad_table, rows * dim, 0.0f);
  EXPECT_OK(embag_backward_dense(&b, &o, &grad_output, &grad_view, NULL, 0));
  CHECK(grad_table[2 * dim + 3] == dy[3]);

  /* max needs forward's argmax */
  {
    float out[2 * dim];
    int64_t argmax[2 * dim];
    embag_matrix out_view = {out, 2, dim, 0};
    EXPECT_OK(embag_options_init(&o));
    o.mode = EMBAG_MODE_MAX;
    EXPECT_OK(embag_forward(t, &b, &o, &out_view, argmax, 2 * dim));
    fill(grad_table, rows * dim, 0.0f);
    EXPECT_OK(embag_backward_dense(&b, &o, &grad_output, &grad_view, argmax, 2 * dim));
    CHECK(grad_table[2 * dim + 1] == dy[1] && grad_table[1 * dim + 1] == 0);
    EXPECT_STATUS(embag_backward_dense(&b, &o, &grad_output, &grad_view, NULL, 0), EMBAG_ERR_SIZE_MISMATCH);
  }

  /* sparse: rows 1, 2, 7 */
  EXPECT_OK(embag_backward_sparse(rows, &b, NULL, &grad_output, NULL, 0, 4, sparse_rows, sparse_values, &num_rows));
  CHECK(num_rows == 3 && sparse_rows[0] == 1 && sparse_rows[1] == 2 && sparse_rows[2] == 7);
  for (c = 0; c < dim; ++c) {
    CHECK(sparse_values[c] == dy[c]);
    CHECK(sparse_values[dim + c] == 2 * dy[c]);
    CHECK(sparse_values[2 * dim + c] == dy[dim + c]);
  }

  /* the size query: capacity 0, NULL buffers; then a capacity too small leaves the buffers alone */
  num_rows = -1;
  EXPECT_STATUS(embag_backward_sparse(rows, &b, NULL, &grad_output, NULL, 0, 0, NULL, NULL, &num_rows),
                EMBAG_ERR_SIZE_MISMATCH);
  CHECK(num_rows == 3);
  fill(sparse_values, 4 * dim, canary);
  sparse_rows[0] = -5;
  EXPECT_STATUS(embag_backward_sparse(rows, &b, NULL, &grad_output, NULL, 0, 2, sparse_rows, sparse_values, &num_rows),
                EMBAG_ERR_SIZE_MISMATCH);
  CHECK(error_mentions("capacity = 2"));
  CHECK(sparse_rows[0] == -5 && all_equal(sparse_values, 4 * dim, canary));
  EXPECT_STATUS(embag_backward_sparse(rows, &b, NULL, &grad_output, NULL, 0, 4, NULL, sparse_values, &num_rows),
                EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_backward_sparse(rows, &b, NULL, &grad_output, NULL, 0, 4, sparse_rows, sparse_values, NULL),
                EMBAG_ERR_NULL_POINTER);

  /* a bad index in backward: gradient untouched */
  {
    const int64_t bad_indices[] = {1, 2, 2, 10};
    b.indices = bad_indices;
    fill(grad_table, rows * dim, canary);
    EXPECT_STATUS(embag_backward_dense(&b, NULL, &grad_output, &grad_view, NULL, 0), EMBAG_ERR_INDEX_OUT_OF_RANGE);
    CHECK(error_mentions("indices[3] = 10"));
    CHECK(all_equal(grad_table, rows * dim, canary));
    num_rows = -1;
    EXPECT_STATUS(embag_backward_sparse(rows, &b, NULL, &grad_output, NULL, 0, 4, sparse_rows, sparse_values, &num_rows),
                  EMBAG_ERR_INDEX_OUT_OF_RANGE);
    CHECK(num_rows == -1 && sparse_rows[0] == -5);
  }
}

static void test_weights_grad(const embag_table* t) {
  const float dy[2 * dim] = {1, 0, 0, 0, 0, 1, 0, 0};
  const float weights[] = {1, 1, 1, 1};
  float grad_weights[4];
  embag_const_matrix grad_output = {dy, 2, dim, 0};
  embag_bags b = offsets_bags();
  b.per_sample_weights = weights;
  b.num_weights = 4;
  /* <dY[bag(j)], W[indices[j]]>: column 0 for bag 0, column 1 for bag 1 */
  EXPECT_OK(embag_per_sample_weights_grad(t, &b, NULL, &grad_output, grad_weights, 4));
  CHECK(grad_weights[0] == value(1, 0) && grad_weights[1] == value(2, 0) && grad_weights[3] == value(7, 1));
  fill(grad_weights, 4, canary);
  EXPECT_STATUS(embag_per_sample_weights_grad(t, &b, NULL, &grad_output, grad_weights, 3), EMBAG_ERR_SIZE_MISMATCH);
  CHECK(all_equal(grad_weights, 4, canary));
  EXPECT_STATUS(embag_per_sample_weights_grad(NULL, &b, NULL, &grad_output, grad_weights, 4), EMBAG_ERR_NULL_POINTER);
}

static void test_isas(const embag_table* t) {
  int32_t isas[8];
  int32_t count = 0, active = -1, one = -1, i;
  int32_t missing = -1;
  embag_bags b = offsets_bags();
  float out[2 * dim];
  embag_matrix two_rows = {out, 2, dim, 0};

  EXPECT_OK(embag_available_isas(isas, 8, &count));
  CHECK(count >= 1 && isas[0] == EMBAG_ISA_REFERENCE);
  EXPECT_OK(embag_available_isas(&one, 1, &count)); /* a short buffer gets the first, count the total */
  CHECK(one == EMBAG_ISA_REFERENCE);
  EXPECT_OK(embag_available_isas(NULL, 0, &count));
  EXPECT_STATUS(embag_available_isas(NULL, 0, NULL), EMBAG_ERR_NULL_POINTER);
  EXPECT_OK(embag_active_isa(&active));
  CHECK(active == isas[count - 1] || getenv("EMBAG_ISA") != NULL); /* the best, unless forced */
  CHECK(embag_isa_name(active) != NULL && strcmp(embag_isa_name(EMBAG_ISA_AVX2), "avx2") == 0);
  CHECK(embag_isa_name(42) == NULL && embag_isa_name(EMBAG_ISA_DEFAULT) == NULL);

  EXPECT_OK(embag_force_isa(EMBAG_ISA_REFERENCE));
  EXPECT_OK(embag_active_isa(&one));
  CHECK(one == EMBAG_ISA_REFERENCE);
  EXPECT_OK(embag_forward(t, &b, NULL, &two_rows, NULL, 0));
  CHECK(out[0] == value(1, 0) + 2 * value(2, 0));
  EXPECT_OK(embag_force_isa(active));

  EXPECT_STATUS(embag_force_isa(42), EMBAG_ERR_INVALID_OPTION);
  for (i = EMBAG_ISA_REFERENCE; i <= EMBAG_ISA_NEON && missing < 0; ++i) {
    int32_t k, found = 0;
    for (k = 0; k < count; ++k) found |= isas[k] == i;
    if (!found) missing = i;
  }
  if (missing >= 0) {
    EXPECT_STATUS(embag_force_isa(missing), EMBAG_ERR_UNSUPPORTED_ISA);
    CHECK(error_mentions(embag_isa_name(missing)));
  }
  EXPECT_STATUS(embag_active_isa(NULL), EMBAG_ERR_NULL_POINTER);
}

int main(void) {
  embag_table* t = NULL;
  int r, c;
  for (r = 0; r < rows; ++r)
    for (c = 0; c < dim; ++c) table_rows[r * dim + c] = value(r, c);

  test_version_and_status_names();
  test_tables();
  test_npy_tables();
  if (embag_table_from_memory(table_rows, rows, dim, 0, &t) != EMBAG_OK) {
    fprintf(stderr, "c_api_test: cannot make the table: %s\n", embag_last_error());
    return 1;
  }
  test_forward_modes(t);
  test_max_norm_in_place();
  test_bad_input(t);
  test_backward(t);
  test_weights_grad(t);
  test_isas(t);
  embag_table_destroy(t);

  printf("c_api_test: %d checks, %d passed, %d failed\n", checks, checks - failures, failures);
  return failures == 0 ? 0 : 1;
}
