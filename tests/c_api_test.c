/* The C ABI, compiled as C99: every function of embag.h, its results against sums worked out here
 * (small integers: exact in float), and its error paths (status, message, buffers untouched). */
#define _POSIX_C_SOURCE 200809L /* mkdtemp, rmdir: the .embag files go to a fresh directory */
#define _DEFAULT_SOURCE         /* MAP_ANONYMOUS: a page no one may read, after an options struct */

#include "embag/embag.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* The same bags, each index weighted (4 weights). */
static embag_bags weighted_bags(const float* weights) {
  embag_bags b = offsets_bags();
  b.per_sample_weights = weights;
  b.num_weights = 4;
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
    o.isa = EMBAG_ISA_DEFAULT;
    o.prefetch_level = EMBAG_PREFETCH_L2_ONE_PASS;
    o.prefetch_rows = 3;
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
  o.mode = 5;
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("options.mode = 5"));
  EXPECT_OK(embag_options_init(&o));
  o.flags = 0x100u;
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  EXPECT_OK(embag_options_init(&o));
  o.isa = 9;
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  EXPECT_OK(embag_options_init(&o));
  o.prefetch_level = EMBAG_PREFETCH_L2_ONE_PASS + 1;
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
  {
    /* a struct_size past any embag_options' (garbage, or a caller that never called
     * embag_options_init) is refused before a byte past the fields this library knows is read: the
     * caller's struct ends where a page no one may read begins */
    typedef struct {
      embag_options known;
      unsigned char newer_fields[EMBAG_OPTIONS_MAX_STRUCT_SIZE - sizeof(embag_options)];
    } largest_options;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    unsigned char* const pages = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(sizeof(largest_options) == EMBAG_OPTIONS_MAX_STRUCT_SIZE && page >= EMBAG_OPTIONS_MAX_STRUCT_SIZE);
    if (pages != MAP_FAILED && mprotect(pages + page, page, PROT_NONE) == 0) {
      embag_options* const small_struct = (embag_options*)(pages + page - sizeof(embag_options));
      largest_options* const largest = (largest_options*)(pages + page - sizeof(largest_options));
      fill(out, 2 * dim, canary);
      EXPECT_OK(embag_options_init(small_struct));
      small_struct->struct_size = 1u << 30;
      EXPECT_STATUS(embag_forward(t, &b, small_struct, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
      CHECK(error_mentions("options.struct_size = 1073741824 is larger than EMBAG_OPTIONS_MAX_STRUCT_SIZE (4096)"));
      small_struct->struct_size = UINT32_MAX;
      EXPECT_STATUS(embag_forward(t, &b, small_struct, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
      CHECK(all_equal(out, 2 * dim, canary));
      /* the bound itself is a size a newer caller's struct may have */
      memset(largest, 0, sizeof *largest);
      EXPECT_OK(embag_options_init(&largest->known));
      largest->known.struct_size = sizeof *largest;
      EXPECT_OK(embag_forward(t, &b, &largest->known, &two_rows, NULL, 0));
      fill(out, 2 * dim, canary);
      largest->known.struct_size = sizeof *largest + 1;
      EXPECT_STATUS(embag_forward(t, &b, &largest->known, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
      CHECK(error_mentions("EMBAG_OPTIONS_MAX_STRUCT_SIZE"));
      CHECK(all_equal(out, 2 * dim, canary));
    } else {
      CHECK(!"mmap and mprotect of two pages");
    }
    if (pages != MAP_FAILED) munmap(pages, 2 * page);
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

/* Every memory the sparse backward's hostile-buffer calls can reach, as one block: the inputs and
 * the outputs are carved out of it, and the whole of it must be byte-for-byte untouched after a
 * refused call. int64_t elements, so every carving is aligned unless a test misaligns it. */
enum { arena_words = 64 };
static int64_t arena[arena_words];
static int64_t arena_before[arena_words];

static void fill_arena(void) {
  int i;
  for (i = 0; i < arena_words; ++i) arena[i] = 0x5A5A5A5A5A5A5A5A;
  memcpy(arena + 0, indices64, sizeof indices64); /* words 0..3: indices */
  memcpy(arena + 4, offsets64, sizeof offsets64); /* words 4..5: offsets */
  for (i = 0; i < 2 * dim; ++i) ((float*)(arena + 8))[i] = (float)(i + 1); /* words 8..11: grad_output */
  for (i = 0; i < 4; ++i) ((float*)(arena + 12))[i] = 1.0f;                /* words 12..13: weights */
  for (i = 0; i < 2 * dim; ++i) arena[16 + i] = i < dim ? 2 : 7;           /* words 16..23: max's argmax */
  memcpy(arena_before, arena, sizeof arena);
}

/* words 32..: room for the outputs (rows_out 4 words, values_out 4 x dim floats = 8 words) */
static int64_t* const rows_room = arena + 32;
static float* const values_room = (float*)(arena + 40);

/* One sparse call over the arena's inputs (mode max: argmax from the arena too). */
static embag_status sparse_over_arena(int32_t mode, int64_t* rows_out, float* values_out, int64_t* num_rows) {
  embag_bags b = offsets_bags();
  embag_const_matrix grad_output = {(const float*)(arena + 8), 2, dim, 0};
  embag_options o;
  embag_options_init(&o);
  o.mode = mode;
  b.indices = arena + 0;
  b.boundaries = arena + 4;
  if (mode != EMBAG_MODE_MAX) {
    b.per_sample_weights = (const float*)(arena + 12);
    b.num_weights = 4;
  }
  return embag_backward_sparse(rows, &b, &o, &grad_output, mode == EMBAG_MODE_MAX ? arena + 16 : NULL,
                               mode == EMBAG_MODE_MAX ? 2 * dim : 0, 4, rows_out, values_out, num_rows);
}

#define EXPECT_REFUSED(mode, rows_out, values_out, want, fragment)                                   \
  do {                                                                                               \
    int64_t num_rows = -1;                                                                           \
    fill_arena();                                                                                    \
    EXPECT_STATUS(sparse_over_arena((mode), (rows_out), (values_out), &num_rows), (want));           \
    CHECK(error_mentions(fragment));                                                                 \
    CHECK(num_rows == -1 && memcmp(arena, arena_before, sizeof arena) == 0);                         \
  } while (0)

/* The sparse backward checks its output buffers as the dense one checks grad_table: aliasing and
 * alignment are refused before anything is written, and *num_rows is not set. */
static void test_backward_sparse_buffers(void) {
  int64_t num_rows = -1;
  int c;
  /* the arena's valid call, on the default ISA and on the reference: rows 1, 2, 7 */
  const int32_t isas[] = {EMBAG_ISA_DEFAULT, EMBAG_ISA_REFERENCE};
  for (c = 0; c < 2; ++c) {
    embag_bags b = offsets_bags();
    embag_const_matrix grad_output;
    embag_options o;
    fill_arena();
    grad_output.data = (const float*)(arena + 8);
    grad_output.rows = 2;
    grad_output.cols = dim;
    grad_output.row_stride = 0;
    embag_options_init(&o);
    o.isa = isas[c];
    EXPECT_OK(embag_backward_sparse(rows, &b, &o, &grad_output, NULL, 0, 4, rows_room, values_room, &num_rows));
    CHECK(num_rows == 3 && rows_room[0] == 1 && rows_room[1] == 2 && rows_room[2] == 7);
    CHECK(values_room[4] == 2 * grad_output.data[0] && values_room[2 * dim + 3] == grad_output.data[dim + 3]);
    CHECK(rows_room[3] == 0x5A5A5A5A5A5A5A5A); /* the capacity past num_rows is left alone */
  }

  /* the outputs overlapping each other */
  EXPECT_REFUSED(EMBAG_MODE_SUM, rows_room, (float*)(rows_room + 2), EMBAG_ERR_ALIASING,
                 "rows_out overlaps values_out");
  EXPECT_REFUSED(EMBAG_MODE_SUM, rows_room, (float*)rows_room, EMBAG_ERR_ALIASING, "rows_out overlaps values_out");
  /* an output overlapping each input */
  EXPECT_REFUSED(EMBAG_MODE_SUM, arena + 10, values_room, EMBAG_ERR_ALIASING, "rows_out overlaps grad_output");
  EXPECT_REFUSED(EMBAG_MODE_SUM, rows_room, (float*)(arena + 6), EMBAG_ERR_ALIASING,
                 "values_out overlaps grad_output");
  EXPECT_REFUSED(EMBAG_MODE_SUM, arena + 0, values_room, EMBAG_ERR_ALIASING, "rows_out overlaps indices");
  EXPECT_REFUSED(EMBAG_MODE_SUM, rows_room, (float*)arena, EMBAG_ERR_ALIASING, "values_out overlaps indices");
  EXPECT_REFUSED(EMBAG_MODE_SUM, arena + 4, values_room, EMBAG_ERR_ALIASING, "rows_out overlaps offsets");
  EXPECT_REFUSED(EMBAG_MODE_SUM, rows_room, (float*)(arena + 13), EMBAG_ERR_ALIASING,
                 "values_out overlaps per_sample_weights");
  EXPECT_REFUSED(EMBAG_MODE_MAX, arena + 20, values_room, EMBAG_ERR_ALIASING, "rows_out overlaps argmax");
  /* the row count inside an output or an input */
  {
    fill_arena();
    EXPECT_STATUS(sparse_over_arena(EMBAG_MODE_SUM, rows_room, values_room, rows_room + 1), EMBAG_ERR_ALIASING);
    CHECK(error_mentions("num_rows overlaps rows_out"));
    CHECK(memcmp(arena, arena_before, sizeof arena) == 0);
    EXPECT_STATUS(sparse_over_arena(EMBAG_MODE_SUM, rows_room, values_room, arena + 1), EMBAG_ERR_ALIASING);
    CHECK(error_mentions("num_rows overlaps indices"));
    CHECK(memcmp(arena, arena_before, sizeof arena) == 0);
  }

  /* misaligned outputs */
  EXPECT_REFUSED(EMBAG_MODE_SUM, (int64_t*)((char*)rows_room + 4), values_room, EMBAG_ERR_MISALIGNED,
                 "rows_out is misaligned by 4 bytes for its 8-byte elements");
  EXPECT_REFUSED(EMBAG_MODE_SUM, rows_room, (float*)((char*)values_room + 2), EMBAG_ERR_MISALIGNED,
                 "values_out is misaligned by 2 bytes for its 4-byte elements");
}

static void test_weights_grad(const embag_table* t) {
  const float dy[2 * dim] = {1, 0, 0, 0, 0, 1, 0, 0};
  const float weights[] = {1, 1, 1, 1};
  float grad_weights[4];
  embag_const_matrix grad_output = {dy, 2, dim, 0};
  embag_bags b = weighted_bags(weights);
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

/* ---------------------------------------------------------------------------------------------
 * Compressed tables. */

enum { qrows = 12, qdim = 7 }; /* an odd dim: int4's last byte holds one element */
static float qtable[qrows * qdim];
static const int32_t every_dtype[] = {EMBAG_DTYPE_F32, EMBAG_DTYPE_F16, EMBAG_DTYPE_BF16, EMBAG_DTYPE_INT8_ROWWISE,
                                      EMBAG_DTYPE_INT4_ROWWISE};
enum { num_dtypes = sizeof every_dtype / sizeof every_dtype[0] };
static char temporary_dir[64];

/* Pseudo-random values in [-3, 3), with a constant row, a narrow range far from zero and a row of
 * tiny values (fp16 subnormals). */
static void fill_qtable(void) {
  uint32_t state = 12345u;
  int i, c;
  for (i = 0; i < qrows * qdim; ++i) {
    state = state * 1664525u + 1013904223u;
    qtable[i] = (float)(state >> 8) / (float)(1u << 24) * 6.0f - 3.0f;
  }
  for (c = 0; c < qdim; ++c) {
    qtable[0 * qdim + c] = 1.5f;
    qtable[1 * qdim + c] = 1000.0f + 0.001f * (float)c;
    qtable[2 * qdim + c] = 1e-6f * (float)(c - 3);
  }
}

static void temporary_path(char* path, size_t size, const char* name) {
  snprintf(path, size, "%s/%s", temporary_dir, name);
}

/* A whole file; *size receives its length. NULL if it cannot be read. */
static unsigned char* read_file(const char* path, long* size) {
  FILE* f = fopen(path, "rb");
  unsigned char* bytes;
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  *size = ftell(f);
  fseek(f, 0, SEEK_SET);
  bytes = (unsigned char*)malloc((size_t)*size + 1);
  if (bytes != NULL && fread(bytes, 1, (size_t)*size, f) != (size_t)*size) {
    free(bytes);
    bytes = NULL;
  }
  fclose(f);
  return bytes;
}

static int file_exists(const char* path) {
  FILE* f = fopen(path, "rb");
  if (f != NULL) fclose(f);
  return f != NULL;
}

static uint64_t u64_at(const unsigned char* p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

static double f16_value(uint16_t h) {
  const int e = (h >> 10) & 31, f = h & 1023;
  const double magnitude = e == 0 ? ldexp(f, -24) : ldexp(1024 + f, e - 25);
  return (h & 0x8000) ? -magnitude : magnitude;
}

/* The row's stored scale (the rowwise layouts of embag/quantize.hpp). */
static double stored_scale(int32_t dtype, const unsigned char* row) {
  if (dtype == EMBAG_DTYPE_INT8_ROWWISE) {
    float scale;
    memcpy(&scale, row + qdim, sizeof scale);
    return scale;
  } else {
    uint16_t h;
    memcpy(&h, row + (qdim + 1) / 2, sizeof h);
    return f16_value(h);
  }
}

/* Every dequantised value within its dtype's documented bound of the source. */
static int within_bound(int32_t dtype, const float* x, const float* back, const unsigned char* stored,
                        int64_t row_bytes) {
  int r, c, ok = 1;
  for (r = 0; r < qrows; ++r) {
    double largest = 0, scale = 0;
    for (c = 0; c < qdim; ++c) largest = fmax(largest, fabs(x[r * qdim + c]));
    if (dtype == EMBAG_DTYPE_INT8_ROWWISE || dtype == EMBAG_DTYPE_INT4_ROWWISE)
      scale = stored_scale(dtype, stored + r * row_bytes);
    for (c = 0; c < qdim; ++c) {
      const double v = x[r * qdim + c], error = fabs(v - back[r * qdim + c]);
      double bound = 0;
      switch (dtype) {
        case EMBAG_DTYPE_F16: bound = fmax(ldexp(fabs(v), -11), ldexp(1, -25)); break;
        case EMBAG_DTYPE_BF16: bound = fmax(ldexp(fabs(v), -8), ldexp(1, -134)); break;
        case EMBAG_DTYPE_INT8_ROWWISE:
        case EMBAG_DTYPE_INT4_ROWWISE:
          bound = (1 + ldexp(1, -22)) * scale / 2 + ldexp(1, -22) * largest;
          break;
        default: bound = 0; /* f32: exact */
      }
      if (error > bound) {
        fprintf(stderr, "c_api_test.c: %s: table[%d][%d] = %.9g came back %.9g, beyond the bound %.3g\n",
                embag_dtype_name(dtype), r, c, v, back[r * qdim + c], bound);
        ok = 0;
      }
    }
  }
  return ok;
}

static void test_dtypes(void) {
  static const int64_t packed[] = {28, 14, 14, 15, 8}; /* row_bytes of dim 7, per dtype */
  int64_t bytes = -1;
  int i;
  for (i = 0; i < num_dtypes; ++i) {
    EXPECT_OK(embag_row_bytes(every_dtype[i], qdim, &bytes));
    CHECK(bytes == packed[i]);
  }
  CHECK(strcmp(embag_dtype_name(EMBAG_DTYPE_F32), "f32") == 0);
  CHECK(strcmp(embag_dtype_name(EMBAG_DTYPE_INT8_ROWWISE), "int8_rowwise") == 0);
  CHECK(strcmp(embag_dtype_name(EMBAG_DTYPE_INT4_ROWWISE), "int4_rowwise") == 0);
  CHECK(embag_dtype_name(5) == NULL && embag_dtype_name(-1) == NULL);

  bytes = -1;
  EXPECT_STATUS(embag_row_bytes(5, qdim, &bytes), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("dtype = 5"));
  EXPECT_STATUS(embag_row_bytes(EMBAG_DTYPE_F16, 0, &bytes), EMBAG_ERR_INVALID_SHAPE);
  EXPECT_STATUS(embag_row_bytes(EMBAG_DTYPE_F16, INT64_MAX, &bytes), EMBAG_ERR_SIZE_OVERFLOW);
  CHECK(bytes == -1);
  EXPECT_STATUS(embag_row_bytes(EMBAG_DTYPE_F16, qdim, NULL), EMBAG_ERR_NULL_POINTER);
}

/* A table that should hold the rows of `file` (an .embag file of `size` bytes whose rows
 * dequantise to `back`): its dtype and shape, its values, and the file it writes, byte for byte. */
static void check_same_table(const embag_table* t, int32_t dtype, const float* back, const unsigned char* file,
                             long size) {
  float again[qrows * qdim];
  embag_matrix again_view = {again, qrows, qdim, 0};
  char path[256];
  unsigned char* copy;
  long copy_size = 0;
  int64_t r = 0, d = 0;
  int32_t got = -1;
  EXPECT_OK(embag_table_dtype(t, &got));
  EXPECT_OK(embag_table_shape(t, &r, &d));
  CHECK(got == dtype && r == qrows && d == qdim);
  fill(again, qrows * qdim, canary);
  EXPECT_OK(embag_dequantize(t, NULL, &again_view));
  CHECK(memcmp(back, again, sizeof again) == 0);
  temporary_path(path, sizeof path, "again.embag");
  EXPECT_OK(embag_table_write_embag(t, path)); /* packed, whatever the table's stride */
  copy = read_file(path, &copy_size);
  CHECK(copy != NULL && copy_size == size && memcmp(copy, file, (size_t)size) == 0);
  free(copy);
  remove(path);
}

/* For each dtype: quantize, dequantize within the bound, write_embag; then from_compressed_memory
 * over the file's rows (packed and padded) and open_embag (mapped and copied) hold the same table. */
static void test_quantize_round_trips(const embag_table* source) {
  int i;
  for (i = 0; i < num_dtypes; ++i) {
    const int32_t dtype = every_dtype[i];
    embag_table* q = NULL;
    embag_table* other = NULL;
    float back[qrows * qdim];
    embag_matrix back_view = {back, qrows, qdim, 0};
    embag_options o;
    char path[256];
    unsigned char* file;
    unsigned char* padded;
    long size = 0;
    int64_t r, row_bytes = 0;
    uint32_t how;

    fprintf(stderr, "c_api_test: %s\n", embag_dtype_name(dtype));
    EXPECT_OK(embag_options_init(&o));
    o.max_threads = 2;
    EXPECT_OK(embag_quantize(source, dtype, &o, &q));
    if (q == NULL) continue;
    EXPECT_OK(embag_row_bytes(dtype, qdim, &row_bytes));
    EXPECT_OK(embag_dequantize(q, NULL, &back_view));

    temporary_path(path, sizeof path, "q.embag");
    EXPECT_OK(embag_table_write_embag(q, path));
    file = read_file(path, &size);
    CHECK(file != NULL);
    if (file == NULL) continue;
    CHECK(memcmp(file, "EMBAGTBL", 8) == 0 && u64_at(file + 16) == qrows && u64_at(file + 24) == qdim &&
          u64_at(file + 32) == (uint64_t)row_bytes && u64_at(file + 40) == 64);
    CHECK(size == 64 + qrows * row_bytes);
    CHECK(within_bound(dtype, qtable, back, file + 64, row_bytes));
    if (dtype == EMBAG_DTYPE_F32) CHECK(memcmp(back, qtable, sizeof back) == 0);
    check_same_table(q, dtype, back, file, size);

    EXPECT_OK(embag_table_from_compressed_memory(file + 64, qrows, qdim, 0, dtype, &other));
    check_same_table(other, dtype, back, file, size);
    embag_table_destroy(other);
    other = NULL;
    padded = (unsigned char*)calloc(qrows, (size_t)row_bytes + 4);
    for (r = 0; r < qrows; ++r) memcpy(padded + r * (row_bytes + 4), file + 64 + r * row_bytes, (size_t)row_bytes);
    EXPECT_OK(embag_table_from_compressed_memory(padded, qrows, qdim, row_bytes + 4, dtype, &other));
    check_same_table(other, dtype, back, file, size);
    embag_table_destroy(other);
    free(padded);
    for (how = 0; how <= EMBAG_LOAD_COPY; how += EMBAG_LOAD_COPY) {
      other = NULL;
      EXPECT_OK(embag_table_open_embag(path, how, &other));
      check_same_table(other, dtype, back, file, size);
      embag_table_destroy(other);
    }
    remove(path);
    free(file);
    embag_table_destroy(q);
  }
}

static void test_compressed_errors(const embag_table* source) {
  static int sentinel;
  embag_table* untouched = (embag_table*)&sentinel;
  embag_table* q = NULL;
  unsigned char rows_bytes[qrows * 15];
  float out[qrows * qdim];
  embag_matrix out_view = {out, qrows, qdim, 0};
  char path[256];
  int32_t got = -7;

  memset(rows_bytes, 0, sizeof rows_bytes);
  EXPECT_OK(embag_quantize(source, EMBAG_DTYPE_INT8_ROWWISE, NULL, &q));

  /* quantize */
  EXPECT_STATUS(embag_quantize(source, 5, NULL, &untouched), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("dtype = 5"));
  EXPECT_STATUS(embag_quantize(source, -1, NULL, &untouched), EMBAG_ERR_INVALID_OPTION);
  EXPECT_STATUS(embag_quantize(NULL, EMBAG_DTYPE_F16, NULL, &untouched), EMBAG_ERR_NULL_POINTER);
  CHECK(error_mentions("source"));
  EXPECT_STATUS(embag_quantize(source, EMBAG_DTYPE_F16, NULL, NULL), EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_quantize(q, EMBAG_DTYPE_INT4_ROWWISE, NULL, &untouched), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("needs an f32 table; this one is int8_rowwise"));
  {
    float with_nan[2 * 3] = {1, 2, 3, 4, 0, 6};
    embag_table* nan_table = NULL;
    with_nan[4] = (float)NAN;
    EXPECT_OK(embag_table_from_memory(with_nan, 2, 3, 0, &nan_table));
    EXPECT_STATUS(embag_quantize(nan_table, EMBAG_DTYPE_INT8_ROWWISE, NULL, &untouched), EMBAG_ERR_INVALID_OPTION);
    CHECK(error_mentions("table[1][1]"));
    with_nan[4] = 1e6f; /* beyond fp16 */
    EXPECT_STATUS(embag_quantize(nan_table, EMBAG_DTYPE_F16, NULL, &untouched), EMBAG_ERR_INVALID_OPTION);
    CHECK(error_mentions("table[1][1]"));
    embag_table_destroy(nan_table);
  }
  {
    embag_options o;
    EXPECT_OK(embag_options_init(&o));
    o.max_threads = -3;
    EXPECT_STATUS(embag_quantize(source, EMBAG_DTYPE_F16, &o, &untouched), EMBAG_ERR_INVALID_OPTION);
  }
  CHECK(untouched == (embag_table*)&sentinel);

  /* from_compressed_memory */
  EXPECT_STATUS(embag_table_from_compressed_memory(rows_bytes, qrows, qdim, 0, 7, &untouched), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("dtype = 7"));
  EXPECT_STATUS(embag_table_from_compressed_memory(NULL, qrows, qdim, 0, EMBAG_DTYPE_INT8_ROWWISE, &untouched),
                EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_table_from_compressed_memory(rows_bytes, qrows, qdim, 14, EMBAG_DTYPE_INT8_ROWWISE, &untouched),
                EMBAG_ERR_INVALID_SHAPE);
  CHECK(error_mentions("row_stride 14 bytes, less than the 15 bytes of a int8_rowwise row of dim 7"));
  EXPECT_STATUS(embag_table_from_compressed_memory(rows_bytes, -1, qdim, 0, EMBAG_DTYPE_F16, &untouched),
                EMBAG_ERR_INVALID_SHAPE);
  EXPECT_STATUS(embag_table_from_compressed_memory(rows_bytes, qrows, 0, 0, EMBAG_DTYPE_F16, &untouched),
                EMBAG_ERR_INVALID_SHAPE);
  EXPECT_STATUS(embag_table_from_compressed_memory(rows_bytes, INT64_MAX / 2, qdim, 0, EMBAG_DTYPE_F16, &untouched),
                EMBAG_ERR_SIZE_OVERFLOW);
  EXPECT_STATUS(embag_table_from_compressed_memory(table_rows, 2, 3, 14, EMBAG_DTYPE_F32, &untouched),
                EMBAG_ERR_MISALIGNED);
  CHECK(error_mentions("row_stride 14 bytes, not a multiple of its 4-byte f32 elements"));
  EXPECT_STATUS(embag_table_from_compressed_memory((const char*)table_rows + 2, 2, 3, 0, EMBAG_DTYPE_F32, &untouched),
                EMBAG_ERR_MISALIGNED);
  EXPECT_STATUS(embag_table_from_compressed_memory(rows_bytes, qrows, qdim, 0, EMBAG_DTYPE_F16, NULL),
                EMBAG_ERR_NULL_POINTER);
  CHECK(untouched == (embag_table*)&sentinel);

  /* dtype, dequantize: nothing written on error */
  EXPECT_STATUS(embag_table_dtype(NULL, &got), EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_table_dtype(q, NULL), EMBAG_ERR_NULL_POINTER);
  CHECK(got == -7);
  fill(out, qrows * qdim, canary);
  EXPECT_STATUS(embag_dequantize(NULL, NULL, &out_view), EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_dequantize(q, NULL, NULL), EMBAG_ERR_NULL_POINTER);
  {
    embag_matrix short_view = {out, qrows - 1, qdim, 0};
    embag_matrix narrow_stride = {out, qrows, qdim, qdim - 1};
    EXPECT_STATUS(embag_dequantize(q, NULL, &short_view), EMBAG_ERR_SIZE_MISMATCH);
    CHECK(error_mentions("out is 11 x 7 but the table is 12 x 7"));
    EXPECT_STATUS(embag_dequantize(q, NULL, &narrow_stride), EMBAG_ERR_INVALID_SHAPE);
  }
  {
    /* out over the compressed rows themselves */
    embag_table* over = NULL;
    float* rows_as_floats = (float*)malloc(qrows * 15 + 64);
    embag_matrix overlapping = {rows_as_floats, 4, 7, 0};
    memset(rows_as_floats, 0, qrows * 15 + 64);
    EXPECT_OK(embag_table_from_compressed_memory(rows_as_floats, 4, 7, 0, EMBAG_DTYPE_INT8_ROWWISE, &over));
    EXPECT_STATUS(embag_dequantize(over, NULL, &overlapping), EMBAG_ERR_ALIASING);
    embag_table_destroy(over);
    free(rows_as_floats);
  }
  CHECK(all_equal(out, qrows * qdim, canary));

  /* the f32-only calls on a compressed table */
  {
    const float dy[2 * qdim] = {0};
    const float weights[] = {1, 1, 1, 1};
    float grad_weights[4];
    embag_const_matrix grad_output = {dy, 2, qdim, 0};
    embag_bags b = weighted_bags(weights);
    fill(grad_weights, 4, canary);
    EXPECT_STATUS(embag_per_sample_weights_grad(q, &b, NULL, &grad_output, grad_weights, 4), EMBAG_ERR_INVALID_OPTION);
    CHECK(error_mentions("embag_per_sample_weights_grad needs an f32 table; this one is int8_rowwise"));
    CHECK(all_equal(grad_weights, 4, canary));
  }

  /* files: missing, malformed, unknown flags, a write that cannot happen */
  temporary_path(path, sizeof path, "absent.embag");
  EXPECT_STATUS(embag_table_open_embag(path, 0, &untouched), EMBAG_ERR_IO);
  CHECK(error_mentions("absent.embag"));
  EXPECT_STATUS(embag_table_open_embag(path, EMBAG_LOAD_COPY, &untouched), EMBAG_ERR_IO);
  temporary_path(path, sizeof path, "malformed.embag");
  {
    FILE* f = fopen(path, "wb");
    static const unsigned char header[48] = {'E', 'M', 'B', 'A', 'G', 'T', 'B', 'L', 1, 0, 0, 0, 3, 0, 0, 0,
                                             2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0,
                                             15, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0};
    unsigned char data[16 + 29];
    memset(data, 0, sizeof data);
    CHECK(f != NULL);
    if (f != NULL) {
      fwrite(header, 1, sizeof header, f);
      fwrite(data, 1, sizeof data, f); /* 2 rows of 15 bytes need 30: one short */
      fclose(f);
    }
  }
  EXPECT_STATUS(embag_table_open_embag(path, 0, &untouched), EMBAG_ERR_BAD_FILE);
  CHECK(error_mentions("malformed.embag: truncated data"));
  EXPECT_STATUS(embag_table_open_embag(path, EMBAG_LOAD_COPY, &untouched), EMBAG_ERR_BAD_FILE);
  EXPECT_STATUS(embag_table_open_npy(path, 0, &untouched), EMBAG_ERR_BAD_FILE);
  EXPECT_STATUS(embag_table_open_embag(path, 0x2u, &untouched), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("flags"));
  remove(path);
  EXPECT_STATUS(embag_table_open_embag(NULL, 0, &untouched), EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_table_open_embag(path, 0, NULL), EMBAG_ERR_NULL_POINTER);
  CHECK(untouched == (embag_table*)&sentinel);

  temporary_path(path, sizeof path, "no/such/dir/q.embag");
  EXPECT_STATUS(embag_table_write_embag(q, path), EMBAG_ERR_IO);
  CHECK(!file_exists(path));
  EXPECT_STATUS(embag_table_write_embag(NULL, path), EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_table_write_embag(q, NULL), EMBAG_ERR_NULL_POINTER);
  embag_table_destroy(q);
}

/* One forward call on a compressed table and on the fp32 table of its dequantised rows: outputs and
 * argmax (mode max) the same bits. */
struct forward_case {
  const char* what;
  int32_t mode;
  uint32_t flags;
  int weighted;
};

static void check_forward_matches(const embag_table* compressed, const embag_table* plain, const embag_bags* b,
                                  const embag_options* o, const char* what, const char* dtype) {
  float out[2][8 * qdim];
  int64_t argmax[2][8 * qdim];
  int64_t out_rows = 0;
  embag_matrix views[2];
  const int max = o->mode == EMBAG_MODE_MAX;
  int k;
  EXPECT_OK(embag_output_rows(b, o, &out_rows));
  for (k = 0; k < 2; ++k) {
    embag_matrix v = {out[k], out_rows, qdim, 0};
    views[k] = v;
    fill(out[k], 8 * qdim, canary);
    memset(argmax[k], 0x5a, sizeof argmax[k]);
  }
  EXPECT_OK(embag_forward(compressed, b, o, &views[0], max ? argmax[0] : NULL, max ? out_rows * qdim : 0));
  EXPECT_OK(embag_forward(plain, b, o, &views[1], max ? argmax[1] : NULL, max ? out_rows * qdim : 0));
  ++checks;
  if (memcmp(out[0], out[1], sizeof out[0]) != 0 || memcmp(argmax[0], argmax[1], sizeof argmax[0]) != 0) {
    ++failures;
    fprintf(stderr, "c_api_test.c: forward %s on %s (isa %d, %d threads) differs from the dequantised table's\n", what,
            dtype, o->isa, o->max_threads);
  }
}

/* embag_forward on each dtype equals embag_forward on the dequantised fp32 table bit for bit: every
 * mode, weights, padding, every ISA of this CPU, inline and on two threads. max_norm is refused. */
static void test_compressed_forward(const embag_table* source) {
  static const int64_t indices[] = {1, 4, 4, 0, 11, 2, 7, 3};
  static const int64_t offsets[] = {0, 3, 3, 6}; /* four bags, the second empty */
  static const float weights[] = {0.5f, -2.0f, 1.25f, 3.0f, 1.0f, -0.75f, 2.0f, 0.125f};
  static const struct forward_case cases[] = {
      {"sum", EMBAG_MODE_SUM, 0, 0},
      {"mean", EMBAG_MODE_MEAN, 0, 0},
      {"max", EMBAG_MODE_MAX, 0, 0},
      {"none", EMBAG_MODE_NONE, 0, 0},
      {"sqrtn", EMBAG_MODE_SQRTN, 0, 0},
      {"weighted sum", EMBAG_MODE_SUM, 0, 1},
      {"weighted mean", EMBAG_MODE_MEAN, 0, 1},
      {"weighted sqrtn", EMBAG_MODE_SQRTN, 0, 1},
      {"sum with padding", EMBAG_MODE_SUM, EMBAG_HAS_PADDING_IDX, 0},
      {"mean with padding", EMBAG_MODE_MEAN, EMBAG_HAS_PADDING_IDX, 0},
      {"max with padding", EMBAG_MODE_MAX, EMBAG_HAS_PADDING_IDX, 0},
      {"weighted sqrtn with padding", EMBAG_MODE_SQRTN, EMBAG_HAS_PADDING_IDX, 1},
      {"weighted sum with padding", EMBAG_MODE_SUM, EMBAG_HAS_PADDING_IDX, 1},
  };
  int32_t isas[8], num_isas = 0;
  embag_bags b = offsets_bags();
  int i, c, k, threads;
  b.indices = indices;
  b.num_indices = 8;
  b.boundaries = offsets;
  b.num_boundaries = 4;
  EXPECT_OK(embag_available_isas(isas, 8, &num_isas));

  for (i = 0; i < num_dtypes; ++i) {
    embag_table* q = NULL;
    embag_table* plain = NULL;
    float back[qrows * qdim];
    embag_matrix back_view = {back, qrows, qdim, 0};
    EXPECT_OK(embag_quantize(source, every_dtype[i], NULL, &q));
    EXPECT_OK(embag_dequantize(q, NULL, &back_view));
    EXPECT_OK(embag_table_from_memory(back, qrows, qdim, 0, &plain));
    for (c = 0; c < (int)(sizeof cases / sizeof cases[0]); ++c)
      for (k = 0; k < num_isas && k < 8; ++k)
        for (threads = 1; threads <= 2; ++threads) {
          embag_options o;
          EXPECT_OK(embag_options_init(&o));
          o.mode = cases[c].mode;
          o.flags = cases[c].flags;
          o.padding_idx = 4;
          o.isa = isas[k];
          o.max_threads = threads;
          b.per_sample_weights = cases[c].weighted ? weights : NULL;
          b.num_weights = cases[c].weighted ? 8 : 0;
          check_forward_matches(q, plain, &b, &o, cases[c].what, embag_dtype_name(every_dtype[i]));
        }
    b.per_sample_weights = NULL;
    b.num_weights = 0;

    /* max_norm on a compressed table: refused, nothing written (an f32 table takes it) */
    if (every_dtype[i] != EMBAG_DTYPE_F32) {
      float out[4 * qdim];
      embag_matrix out_view = {out, 4, qdim, 0};
      embag_options o;
      EXPECT_OK(embag_options_init(&o));
      o.flags = EMBAG_HAS_MAX_NORM;
      o.max_norm = 1.0f;
      fill(out, 4 * qdim, canary);
      EXPECT_STATUS(embag_forward(q, &b, &o, &out_view, NULL, 0), EMBAG_ERR_INVALID_OPTION);
      CHECK(error_mentions("max_norm needs an f32 table; this one is"));
      CHECK(error_mentions(embag_dtype_name(every_dtype[i])));
      o.flags = EMBAG_HAS_MAX_NORM | EMBAG_MAX_NORM_IN_PLACE;
      EXPECT_STATUS(embag_forward(q, &b, &o, &out_view, NULL, 0), EMBAG_ERR_INVALID_OPTION);
      {
        const int64_t bad[] = {1, 4, 4, 12, 11, 2, 7, 3};
        b.indices = bad;
        EXPECT_STATUS(embag_forward(q, &b, NULL, &out_view, NULL, 0), EMBAG_ERR_INDEX_OUT_OF_RANGE);
        CHECK(error_mentions("indices[3] = 12"));
        b.indices = indices;
      }
      CHECK(all_equal(out, 4 * qdim, canary));
    }
    embag_table_destroy(plain);
    embag_table_destroy(q);
  }
}

/* A FIFO where a table file should be: open refuses it at once (a plain open(2) for reading would
 * wait for a writer forever), and write refuses to replace it. alarm: a hang fails the test. */
static void test_special_files(const embag_table* source) {
  static int sentinel;
  embag_table* untouched = (embag_table*)&sentinel;
  char path[4096];
  struct stat st;
  uint32_t how;
  snprintf(path, sizeof path, "%s/fifo", temporary_dir);
  CHECK(mkfifo(path, 0644) == 0);
  alarm(20);
  for (how = 0; how <= EMBAG_LOAD_COPY; how += EMBAG_LOAD_COPY) {
    EXPECT_STATUS(embag_table_open_npy(path, how, &untouched), EMBAG_ERR_IO);
    CHECK(error_mentions("fifo: a FIFO, not a regular file"));
    EXPECT_STATUS(embag_table_open_embag(path, how, &untouched), EMBAG_ERR_IO);
    CHECK(error_mentions("fifo: a FIFO, not a regular file"));
  }
  alarm(0);
  CHECK(untouched == (embag_table*)&sentinel);
  EXPECT_STATUS(embag_table_write_embag(source, path), EMBAG_ERR_IO);
  CHECK(error_mentions("is a FIFO, not a regular file"));
  CHECK(stat(path, &st) == 0 && S_ISFIFO(st.st_mode));
  CHECK(unlink(path) == 0);
}

static void test_compressed_tables(void) {
  embag_table* source = NULL;
  strcpy(temporary_dir, "/tmp/embag-c-api-XXXXXX");
  if (mkdtemp(temporary_dir) == NULL) {
    CHECK(!"mkdtemp");
    return;
  }
  fill_qtable();
  test_dtypes();
  EXPECT_OK(embag_table_from_memory(qtable, qrows, qdim, 0, &source));
  test_quantize_round_trips(source);
  test_compressed_errors(source);
  test_compressed_forward(source);
  test_special_files(source);
  embag_table_destroy(source);
  CHECK(rmdir(temporary_dir) == 0); /* every file removed */
}

/* Two tables in one call, side by side in one 2 x (4 + 4 + 1 pad) output: the table itself with
 * sum and a second view of its first 3 rows with mean; then refusals that name the table and
 * write nothing. */
/* Index policies: skip reports what it skipped; pruned ids (-1) and a remap; an embag_options of
 * 0.1's size (48 bytes, before the policies' fields) keeps their defaults. */
static void test_index_policies(const embag_table* t) {
  embag_options o;
  embag_index_report report;
  embag_bags b = offsets_bags();
  const int64_t damaged[] = {1, 99, -1, 7};          /* bags {1, 99, -1} and {7} */
  const int32_t remap[] = {-1, 7, 1, 1, 1, 1, 1, 1, 1, 1}; /* id 0 pruned, id 1 -> row 7, the rest -> row 1 */
  float out[2 * dim];
  embag_matrix two_rows = {out, 2, dim, 0};
  int col;
  b.indices = damaged;
  EXPECT_OK(embag_options_init(&o));
  o.bad_indices = EMBAG_BAD_INDICES_SKIP;
  o.flags = EMBAG_PRUNED_IDS;
  fill(out, 2 * dim, canary);
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("bad_indices = skip needs opts.report"));
  CHECK(all_equal(out, 2 * dim, canary));
  o.report = &report;
  memset(&report, 0xff, sizeof report);
  EXPECT_OK(embag_forward(t, &b, &o, &two_rows, NULL, 0));
  CHECK(report.skipped == 1 && report.first_position == 1 && report.first_value == 99 && report.pruned == 1);
  for (col = 0; col < dim; ++col) CHECK(out[col] == value(1, col) && out[dim + col] == value(7, col));
  /* under error, 99 is refused by name */
  o.bad_indices = EMBAG_BAD_INDICES_ERROR;
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INDEX_OUT_OF_RANGE);
  CHECK(error_mentions("indices[1] = 99 is out of range [0, 10)"));
  o.bad_indices = 2;
  EXPECT_STATUS(embag_forward(t, &b, &o, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("options.bad_indices = 2"));
  /* a remap: indices are ids; {1, 2, 2} -> rows {7, 1, 1}, {0} pruned */
  {
    const int64_t ids[] = {1, 2, 2, 0};
    b.indices = ids;
    EXPECT_OK(embag_options_init(&o));
    o.remap = remap;
    o.remap_size = 10;
    o.remap_type = EMBAG_INT32;
    o.report = &report;
    EXPECT_OK(embag_forward(t, &b, &o, &two_rows, NULL, 0));
    CHECK(report.skipped == 0 && report.first_position == -1 && report.pruned == 1);
    for (col = 0; col < dim; ++col)
      CHECK(out[col] == value(7, col) + value(1, col) + value(1, col) && out[dim + col] == 0.0f);
  }
  /* 0.1's options: 48 bytes, the policies' fields (here garbage past them) never read */
  {
    embag_options old;
    b = offsets_bags();
    EXPECT_OK(embag_options_init(&old));
    memset((char*)&old + 48, 0x7f, sizeof old - 48);
    old.struct_size = 48;
    EXPECT_OK(embag_forward(t, &b, &old, &two_rows, NULL, 0));
    old.struct_size = 52;
    EXPECT_STATUS(embag_forward(t, &b, &old, &two_rows, NULL, 0), EMBAG_ERR_INVALID_OPTION);
    CHECK(error_mentions("options.struct_size = 52 matches no version of options (48 or"));
  }
}

static void test_forward_batched(const embag_table* t) {
  enum { stride = 2 * dim + 1 };
  embag_table* head = NULL;
  embag_options mean;
  embag_bags b = offsets_bags(), small;
  const int64_t small_indices[] = {0, 2, 1};
  float out[2 * stride];
  embag_matrix left = {out, 2, dim, stride}, right = {out + dim, 2, dim, stride};
  embag_table_lookup lookups[2];
  int col;
  EXPECT_OK(embag_table_from_memory(table_rows, 3, dim, 0, &head));
  EXPECT_OK(embag_options_init(&mean));
  mean.mode = EMBAG_MODE_MEAN;
  small = offsets_bags();
  small.indices = small_indices;
  small.num_indices = 3;
  memset(lookups, 0, sizeof lookups);
  lookups[0].struct_size = lookups[1].struct_size = sizeof(embag_table_lookup);
  lookups[0].table = t;
  lookups[0].bags = &b;
  lookups[0].out = &left;
  lookups[1].table = head;
  lookups[1].bags = &small;
  lookups[1].options = &mean;
  lookups[1].out = &right;
  fill(out, 2 * stride, canary);
  EXPECT_OK(embag_forward_batched(lookups, 2, NULL));
  for (col = 0; col < dim; ++col) {
    /* table 0, sum: bag {1, 2, 2}, bag {7}; table 1, mean: bag {0, 2, 1}, bag {} */
    CHECK(out[col] == value(1, col) + value(2, col) + value(2, col));
    CHECK(out[stride + col] == value(7, col));
    CHECK(out[dim + col] == (value(0, col) + value(2, col) + value(1, col)) / 3.0f);
    CHECK(out[stride + dim + col] == 0.0f);
  }
  CHECK(out[2 * dim] == canary && out[stride + 2 * dim] == canary);

  /* table 1's index out of its 3 rows: refused by name, nothing written */
  fill(out, 2 * stride, canary);
  small.indices = indices64;
  small.num_indices = 4;
  EXPECT_STATUS(embag_forward_batched(lookups, 2, NULL), EMBAG_ERR_INDEX_OUT_OF_RANGE);
  CHECK(error_mentions("tables[1]: "));
  CHECK(all_equal(out, 2 * stride, canary));
  small.indices = small_indices;
  small.num_indices = 3;
  /* outputs sharing cells */
  right.data = out + 1;
  EXPECT_STATUS(embag_forward_batched(lookups, 2, NULL), EMBAG_ERR_ALIASING);
  CHECK(error_mentions("tables[0]'s out shares cells with tables[1]'s out"));
  right.data = out + dim;
  /* a table's own execution options */
  mean.max_threads = 1;
  EXPECT_STATUS(embag_forward_batched(lookups, 2, NULL), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("tables[1]: opts.execution is set"));
  mean.max_threads = 0;
  /* an f16 output, and an entry of 0.1's size (40 bytes, no out_type: f32) */
  {
    uint16_t halves[2 * dim];
    embag_matrix half_out = {(float*)halves, 2, dim, 0};
    lookups[1].out = &half_out;
    lookups[1].out_type = EMBAG_DTYPE_F16;
    EXPECT_OK(embag_forward_batched(lookups, 2, NULL));
    /* bag {0, 2, 1} mean: (c + 20 + c + 10 + c) / 3 = c + 10, exact in fp16 (col 0..3: 10..13) */
    CHECK(halves[0] == 0x4900 && halves[1] == 0x4980 && halves[2] == 0x4a00 && halves[3] == 0x4a80);
    CHECK(halves[dim] == 0 && halves[dim + 3] == 0);
    lookups[1].out_type = EMBAG_DTYPE_INT8_ROWWISE;
    EXPECT_STATUS(embag_forward_batched(lookups, 2, NULL), EMBAG_ERR_INVALID_OPTION);
    CHECK(error_mentions("tables[1]: out.type = int8_rowwise"));
    lookups[1].out_type = EMBAG_DTYPE_F32;
    lookups[1].out = &right;
    {
      /* 0.1's entries: 40 bytes apart, no out_type */
      uint64_t old[2][5];
      const uint32_t old_size = 40;
      memcpy(old[0], &lookups[0], 40);
      memcpy(old[1], &lookups[1], 40);
      memcpy(old[0], &old_size, sizeof old_size);
      memcpy(old[1], &old_size, sizeof old_size);
      fill(out, 2 * stride, canary);
      EXPECT_OK(embag_forward_batched((const embag_table_lookup*)(void*)old, 2, NULL));
      CHECK(out[stride] == value(7, 0) && out[dim] == 10.0f);
      fill(out, 2 * stride, canary);
    }
  }
  /* struct_size: too small, or entries of different sizes */
  lookups[1].struct_size = 8;
  EXPECT_STATUS(embag_forward_batched(lookups, 2, NULL), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("tables[1].struct_size = 8 differs"));
  lookups[0].struct_size = lookups[1].struct_size = 8;
  EXPECT_STATUS(embag_forward_batched(lookups, 2, NULL), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("tables[0].struct_size = 8 is smaller"));
  lookups[0].struct_size = lookups[1].struct_size = sizeof(embag_table_lookup);
  EXPECT_STATUS(embag_forward_batched(NULL, 2, NULL), EMBAG_ERR_NULL_POINTER);
  EXPECT_OK(embag_forward_batched(NULL, 0, NULL));
  CHECK(all_equal(out, 2 * stride, canary));
  embag_table_destroy(head);
}

/* The fused optimizers: a step by hand (bags {1, 2, 2} and {7}; dY rows {1, 1, 1, 1} and
 * {2, 2, 2, 2}), apply from sparse rows, bad calls that write nothing. */
static void test_optimizers(void) {
  float w[rows * dim], state[rows * dim], before[rows * dim];
  const float dy[2 * dim] = {1, 1, 1, 1, 2, 2, 2, 2};
  embag_trainable_table t;
  embag_optimizer sgd, adagrad;
  embag_update_summary summary;
  embag_const_matrix grad = {dy, 2, dim, 0};
  embag_matrix s = {state, rows, dim, 0};
  embag_bags b = offsets_bags();
  const int64_t sparse_rows[] = {2, 7};
  const float sparse_values[2 * dim] = {1, 1, 1, 1, 4, 4, 4, 4};
  int r, c;
  memcpy(w, table_rows, sizeof w);
  t.data = w;
  t.rows = rows;
  t.dim = dim;
  t.row_stride = 0;
  t.dtype = EMBAG_DTYPE_F32;
  EXPECT_OK(embag_optimizer_init(&sgd, EMBAG_OPTIMIZER_SGD));
  CHECK(sgd.learning_rate == 0.01f && sgd.eps == 1e-10f && sgd.weight_decay == 0 && sgd.rounding == EMBAG_ROUNDING_NEAREST);
  sgd.learning_rate = 0.5f;
  EXPECT_OK(embag_backward_update(&t, &b, NULL, &grad, NULL, 0, &sgd, NULL, &summary));
  CHECK(summary.rows_updated == 3 && summary.rows_not_finite == 0 && summary.first_not_finite_row == -1);
  /* row 1: g = 1; row 2: g = 2 (twice in bag 0); row 7: g = 2 */
  for (r = 0; r < rows; ++r)
    for (c = 0; c < dim; ++c) {
      const float g = r == 1 ? 1.0f : r == 2 || r == 7 ? 2.0f : 0.0f;
      CHECK(w[r * dim + c] == value(r, c) - 0.5f * g);
    }

  /* apply: adagrad from a zero state, eps 0: each touched element moves by lr exactly */
  memcpy(w, table_rows, sizeof w);
  fill(state, rows * dim, 0.0f);
  EXPECT_OK(embag_optimizer_init(&adagrad, EMBAG_OPTIMIZER_ADAGRAD));
  adagrad.learning_rate = 2;
  adagrad.eps = 0;
  EXPECT_OK(embag_apply_sparse_gradient(&t, sparse_rows, 2, sparse_values, &adagrad, &s, NULL, &summary));
  CHECK(summary.rows_updated == 2);
  CHECK(w[2 * dim] == value(2, 0) - 2 && w[7 * dim + 3] == value(7, 3) - 2 && w[3 * dim] == value(3, 0));
  CHECK(state[2 * dim] == 1 && state[7 * dim] == 16 && state[3 * dim] == 0);

  /* bad calls: status, message, and nothing written */
  memcpy(before, w, sizeof w);
  s.cols = 3;
  EXPECT_STATUS(embag_apply_sparse_gradient(&t, sparse_rows, 2, sparse_values, &adagrad, &s, NULL, &summary),
                EMBAG_ERR_SIZE_MISMATCH);
  CHECK(error_mentions("state is 10 x 3"));
  s.cols = dim;
  EXPECT_STATUS(embag_backward_update(&t, &b, NULL, &grad, NULL, 0, &adagrad, NULL, NULL), EMBAG_ERR_SIZE_MISMATCH);
  EXPECT_STATUS(embag_backward_update(&t, &b, NULL, &grad, NULL, 0, &sgd, &s, NULL), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("sgd keeps no state"));
  sgd.rounding = 7;
  EXPECT_STATUS(embag_backward_update(&t, &b, NULL, &grad, NULL, 0, &sgd, NULL, NULL), EMBAG_ERR_INVALID_OPTION);
  sgd.rounding = EMBAG_ROUNDING_NEAREST;
  sgd.struct_size = 3;
  EXPECT_STATUS(embag_backward_update(&t, &b, NULL, &grad, NULL, 0, &sgd, NULL, NULL), EMBAG_ERR_INVALID_OPTION);
  CHECK(error_mentions("embag_optimizer_init"));
  EXPECT_STATUS(embag_optimizer_init(&sgd, 9), EMBAG_ERR_INVALID_OPTION);
  EXPECT_OK(embag_optimizer_init(&sgd, EMBAG_OPTIMIZER_SGD));
  t.dtype = EMBAG_DTYPE_INT8_ROWWISE;
  EXPECT_STATUS(embag_backward_update(&t, &b, NULL, &grad, NULL, 0, &sgd, NULL, NULL), EMBAG_ERR_INVALID_OPTION);
  t.dtype = 99;
  EXPECT_STATUS(embag_backward_update(&t, &b, NULL, &grad, NULL, 0, &sgd, NULL, NULL), EMBAG_ERR_INVALID_OPTION);
  t.dtype = EMBAG_DTYPE_F32;
  EXPECT_STATUS(embag_backward_update(&t, &b, NULL, &grad, NULL, 0, &sgd, NULL, (embag_update_summary*)(void*)w),
                EMBAG_ERR_ALIASING);
  EXPECT_STATUS(embag_backward_update(NULL, &b, NULL, &grad, NULL, 0, &sgd, NULL, NULL), EMBAG_ERR_NULL_POINTER);
  EXPECT_STATUS(embag_apply_sparse_gradient(&t, sparse_rows, -1, sparse_values, &sgd, NULL, NULL, NULL),
                EMBAG_ERR_SIZE_MISMATCH);
  CHECK(memcmp(before, w, sizeof w) == 0);
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
  test_forward_batched(t);
  test_index_policies(t);
  test_max_norm_in_place();
  test_bad_input(t);
  test_backward(t);
  test_backward_sparse_buffers();
  test_weights_grad(t);
  test_optimizers();
  test_isas(t);
  embag_table_destroy(t);
  test_compressed_tables();

  printf("c_api_test: %d checks, %d passed, %d failed\n", checks, checks - failures, failures);
  return failures == 0 ? 0 : 1;
}
