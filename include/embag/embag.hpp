// embag: SIMD embedding-bag forward and backward on the CPU.
//
// The whole public C++ API: value types describing a table, a batch of bags, options and output
// buffers, a handful of free functions, and one error type. Nothing here owns caller memory except
// `table`, `workspace` and `sparse_gradient`.
//
// An embedding bag is Y = A.W: A is the B x R bag-incidence matrix given in CSR form by indices,
// offsets (or lengths) and optional per-sample weights; W is the R x D table. Its gradient is
// dW = A^T.dY. Every function validates all of its arguments before it writes a single byte: on
// error, outputs and table are untouched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "embag/enums.h"

namespace embag {

inline constexpr int version_major = 0;
inline constexpr int version_minor = 2;
inline constexpr int version_patch = 0;
std::string_view version() noexcept;

// ---------------------------------------------------------------------------------------------
// Errors: one type, a code to branch on and a message naming argument, position and value.

enum class errc : int {
  index_out_of_range = 1,  // an index < 0 or >= rows
  bad_offsets,             // offsets not starting at 0, decreasing, past the end, wrong last value
  bad_lengths,             // a negative length, or lengths not summing to len(indices)
  size_mismatch,           // an array of the wrong length (weights, argmax, grad_output, output)
  null_pointer,            // a null pointer with a non-zero size
  invalid_shape,           // dim 0, negative rows, row stride smaller than dim
  size_overflow,           // a byte count that does not fit in the address space
  invalid_option,          // padding_idx out of range, max_norm <= 0 or NaN, norm_type <= 0, ...
  aliasing,                // an output overlapping an input
  unsupported_isa,         // an instruction set this CPU (or build) lacks
  misaligned,              // a pointer not aligned to its element type (reading through it is UB)
  io_error,                // a file that cannot be opened, mapped, read, written or renamed
  bad_file,                // a file whose contents are malformed: header, dtype, shape, truncated data
  out_of_memory = 100,     // an allocation failed (the message says what was being allocated)
};

std::string_view to_string(errc code) noexcept;

class error : public std::runtime_error {
 public:
  error(errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
  errc code() const noexcept { return code_; }

 private:
  errc code_;
};

// ---------------------------------------------------------------------------------------------
// Tables and matrices.

// Element types of table rows: f32 is embag::table's; the others are the compressed row formats of
// embag/quantize.hpp, which describes their bytes. The values are the .embag file's dtype codes.
// embag/enums.h lists them (with their bytes).
#define EMBAG_ENUMERATOR_(name, NAME, value) name = value,
#define EMBAG_DTYPE_ITEM_(name, NAME, value) dtype::name,
enum class dtype : std::uint8_t { EMBAG_FOR_EACH_DTYPE(EMBAG_ENUMERATOR_) };
inline constexpr dtype all_dtypes[] = {EMBAG_FOR_EACH_DTYPE(EMBAG_DTYPE_ITEM_)};
#undef EMBAG_DTYPE_ITEM_

// A non-owning view of a rows x dim table whose row r starts at data + r * row_stride elements.
// The element type is part of the type: `table_view<const float>` is read-only, `table_view<float>`
// may be written (in-place max_norm, renorm_rows).
template <class Element>
struct table_view {
  Element* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t dim = 0;
  std::int64_t row_stride = 0;  // in elements; 0 means dim (dense rows)

  operator table_view<const Element>() const noexcept { return {data, rows, dim, row_stride}; }
};

// A view of a rows x cols matrix of floats with a row stride: outputs, gradients. A stride larger
// than cols lets several tables write side by side into one concatenated output.
template <class T>
struct matrix_view {
  T* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;  // in elements; 0 means cols

  operator matrix_view<const T>() const noexcept { return {data, rows, cols, row_stride}; }
};

// An output matrix of f32, or of 16-bit floats (dtype::f16, dtype::bf16: each element the fp32
// result rounded once to nearest even, for serving paths that hand fp16/bf16 features on).
// row_stride in elements; 0 means cols. Where a call takes one, a matrix_view<float> is one.
struct output_view {
  void* data = nullptr;
  std::int64_t rows = 0, cols = 0, row_stride = 0;
  dtype type = dtype::f32;  // f32, f16 or bf16

  output_view() = default;
  output_view(matrix_view<float> m) noexcept : data(m.data), rows(m.rows), cols(m.cols), row_stride(m.row_stride) {}
  output_view(float* d, std::int64_t r, std::int64_t c, std::int64_t stride = 0) noexcept
      : data(d), rows(r), cols(c), row_stride(stride) {}
  output_view(void* d, std::int64_t r, std::int64_t c, std::int64_t stride, dtype t) noexcept
      : data(d), rows(r), cols(c), row_stride(stride), type(t) {}
};

// An owning fp32 table: rows padded to whole cache lines, the block 2 MiB aligned and advised to
// use transparent huge pages (random row reads lose up to 2.6x on 4 KiB pages). Contents start at 0.
class table {
 public:
  table(std::int64_t rows, std::int64_t dim);
  table(table&&) noexcept;
  table& operator=(table&&) noexcept;
  table(const table&) = delete;
  table& operator=(const table&) = delete;
  ~table();

  table_view<float> view() noexcept { return {data_, rows_, dim_, row_stride_}; }
  table_view<const float> view() const noexcept { return {data_, rows_, dim_, row_stride_}; }
  float* row(std::int64_t r) noexcept { return data_ + r * row_stride_; }
  const float* row(std::int64_t r) const noexcept { return data_ + r * row_stride_; }
  std::int64_t rows() const noexcept { return rows_; }
  std::int64_t dim() const noexcept { return dim_; }
  std::int64_t row_stride() const noexcept { return row_stride_; }

 private:
  float* data_ = nullptr;
  std::int64_t rows_ = 0, dim_ = 0, row_stride_ = 0;
  std::size_t bytes_ = 0;
};

// ---------------------------------------------------------------------------------------------
// A batch of bags: the sparse matrix A in CSR form.

enum class index_type : std::uint8_t { i32, i64 };

// A read-only array of int32 or int64 values.
struct index_span {
  const void* data = nullptr;
  std::int64_t size = 0;
  index_type type = index_type::i64;

  index_span() = default;
  index_span(std::span<const std::int32_t> s) noexcept
      : data(s.data()), size(static_cast<std::int64_t>(s.size())), type(index_type::i32) {}
  index_span(std::span<const std::int64_t> s) noexcept
      : data(s.data()), size(static_cast<std::int64_t>(s.size())), type(index_type::i64) {}
  index_span(const std::vector<std::int32_t>& v) noexcept : index_span(std::span<const std::int32_t>(v)) {}
  index_span(const std::vector<std::int64_t>& v) noexcept : index_span(std::span<const std::int64_t>(v)) {}
  index_span(const void* p, std::int64_t n, index_type t) noexcept : data(p), size(n), type(t) {}
};

enum class bag_layout : std::uint8_t {
  offsets,       // bag b is indices[offsets[b] .. offsets[b+1]) (the last bag ends at len(indices))
  lengths,       // bag b has lengths[b] indices, bags back to back
  fixed_length,  // indices is a B x L array: bag b is indices[b*L .. (b+1)*L)
};

struct bags {
  index_span indices;
  index_span boundaries;  // offsets or lengths, per layout
  bag_layout layout = bag_layout::offsets;
  std::int64_t fixed_length = 0;            // L, for bag_layout::fixed_length
  std::span<const float> per_sample_weights;  // empty: no weights

  static bags from_offsets(index_span indices, index_span offsets, std::span<const float> weights = {}) {
    return {indices, offsets, bag_layout::offsets, 0, weights};
  }
  static bags from_lengths(index_span indices, index_span lengths, std::span<const float> weights = {}) {
    return {indices, lengths, bag_layout::lengths, 0, weights};
  }
  static bags fixed(index_span indices, std::int64_t length, std::span<const float> weights = {}) {
    return {indices, {}, bag_layout::fixed_length, length, weights};
  }
};

// ---------------------------------------------------------------------------------------------
// Options.

// sum, mean, max, none (plain lookup, nn.Embedding: one output row per index; bag boundaries are
// validated only), sqrtn (TensorFlow's combiner: sum(w x) / sqrt(sum w^2), unweighted
// sum(x) / sqrt(count); 0 when that is 0). embag/enums.h lists them.
#define EMBAG_MODE_ITEM_(name, NAME, value) mode::name,
enum class mode : std::uint8_t { EMBAG_FOR_EACH_MODE(EMBAG_ENUMERATOR_) };
inline constexpr mode all_modes[] = {EMBAG_FOR_EACH_MODE(EMBAG_MODE_ITEM_)};
#undef EMBAG_MODE_ITEM_
std::string_view to_string(mode which) noexcept;  // "sum", "mean", "max", "none", "sqrtn"
std::optional<mode> mode_from_string(std::string_view name) noexcept;

enum class max_norm_flavour : std::uint8_t {
  clip,      // scale the gathered copy; the table is never written (safe under concurrent readers)
  in_place,  // torch's behaviour: rescale the table rows before the gather (needs a mutable table);
             // not safe while any other call reads those rows
};

// Instruction sets, lowest first (embag/enums.h lists them). `reference` is the scalar oracle:
// plain loops, one thread.
#define EMBAG_ISA_ITEM_(name, NAME, value) isa::name,
enum class isa : std::uint8_t { EMBAG_FOR_EACH_ISA(EMBAG_ENUMERATOR_) };
inline constexpr isa all_isas[] = {EMBAG_FOR_EACH_ISA(EMBAG_ISA_ITEM_)};
#undef EMBAG_ISA_ITEM_
#undef EMBAG_ENUMERATOR_

std::string_view to_string(isa which) noexcept;
std::optional<isa> isa_from_string(std::string_view name) noexcept;

// Software prefetch of the rows a few positions ahead in the index stream: the biggest lever on
// tables larger than the caches. `automatic` prefetches nothing for a table within half of L2, and
// for a larger one learns from the first calls the fastest of l1, l2 and l2_one_pass (and of none,
// while the table fits the LLC), per table size class, row size and bag length (or
// EMBAG_PREFETCH=none|l1:N|l2:N|l2-one-pass:N); the others force them. l2 reads the rows of the
// register-resident widths in passes of at most 256 bytes of each row, l2_one_pass whole.
enum class prefetch_level : std::uint8_t { automatic, none, l1, l2, l2_one_pass };
struct prefetch_setting {
  prefetch_level level = prefetch_level::automatic;
  int rows = 0;  // how far ahead; 0: from the bytes to keep in flight and the row size
};

// How a call runs. A server that already parallelises across requests should use max_threads = 1.
struct execution {
  int max_threads = 0;           // 0: every thread of the current TBB arena; 1: inline, no TBB
  std::optional<embag::isa> isa;  // this call only; default: the process-wide choice
  prefetch_setting prefetch;
  // A tbb::task_arena* the call runs its blocks in (arena->execute), using all of its threads;
  // max_threads must then be 0. void* so that this header needs no TBB headers: oneTBB declares
  // task_arena in a versioned internal namespace (tbb::detail::d1), which a forward declaration
  // here would have to name and would break with the next TBB ABI version.
  void* arena = nullptr;
};

// Serving policies for indices a table cannot serve (one bad id from one client must not fail a
// whole request, nor pass unseen). FBGEMM's bounds-check modes are FATAL (our error), WARNING and
// IGNORE (both read row 0 instead: a wrong row in the output); skip reads no row at all.
enum class bad_index_policy : std::uint8_t {
  error,  // errc::index_out_of_range naming the first bad index; nothing is written (the default)
  skip,   // an index outside the table is treated like padding: no row read, not in a mean's divisor,
          // a zero row for mode none; counted in options.report, which is then required
};
inline constexpr bad_index_policy all_bad_index_policies[] = {bad_index_policy::error, bad_index_policy::skip};
std::string_view to_string(bad_index_policy which) noexcept;  // "error", "skip"
std::optional<bad_index_policy> bad_index_policy_from_string(std::string_view name) noexcept;

// What a call's index policies skipped, written once the whole call is valid (before any output).
struct index_report {
  std::int64_t skipped = 0;         // indices outside the table (or the remap) skipped by skip
  std::int64_t first_position = -1;  // the first of them: its position in indices, -1 when none
  std::int64_t first_value = 0;      // and its value
  std::int64_t pruned = 0;           // indices skipped as pruned rows: -1 with pruned_ids, or remapped to -1
};

struct options {
  embag::mode mode = mode::sum;
  std::optional<std::int64_t> padding_idx;  // negative counts from the end, as in torch
  bool include_last_offset = false;         // offsets has B+1 entries, the last == len(indices)
  std::optional<float> max_norm;            // rescale referenced rows whose norm exceeds this
  float norm_type = 2.0f;                   // p of the p-norm (inf allowed)
  max_norm_flavour max_norm_mode = max_norm_flavour::clip;
  bool scale_grad_by_freq = false;  // backward: divide each row's gradient by its count in the call
  embag::execution execution;
  // Index policies (forward, backward and the weights' gradient alike). A call with none of them
  // reads the caller's indices in place; one that has something to skip or remap reads a rewritten
  // copy (in the workspace when one is given), bad and pruned positions turned into padding.
  // max_norm in place takes none of them (it would rescale the rows the rewrite stands in).
  bad_index_policy bad_indices = bad_index_policy::error;
  bool pruned_ids = false;  // index -1 is a pruned row (FBGEMM's convention): skipped like padding
  // For a table whose unused rows were removed: indices are original ids in [0, remap.size), and
  // the row read is remap[id] (-1: pruned, skipped). Empty: ids are rows. Its values are checked as
  // they are used: one outside [-1, rows) is errc::invalid_option, whatever bad_indices says.
  index_span remap;
  index_report* report = nullptr;  // where the policies report what they skipped; skip needs one
};

// ---------------------------------------------------------------------------------------------
// Reusable scratch memory for backward, in-place max_norm and the indices that index policies
// rewrite. A caller that reuses one workspace per thread makes those calls allocation-free once it
// has grown. Not shared between threads.
class workspace {
 public:
  workspace();
  workspace(workspace&&) noexcept;
  workspace& operator=(workspace&&) noexcept;
  ~workspace();
  struct impl;
  impl& get() noexcept { return *impl_; }

 private:
  std::unique_ptr<impl> impl_;
};

// A coalesced sparse gradient: rows sorted ascending, unique; values is rows.size() x dim.
// Reused across calls, its vectors only grow.
struct sparse_gradient {
  std::vector<std::int64_t> rows;
  std::vector<float> values;
  std::int64_t dim = 0;
};

// ---------------------------------------------------------------------------------------------
// Entry points.

// Number of output rows a call produces: B bags, or len(indices) with mode none.
std::int64_t output_rows(const bags& batch, const options& opts);

// Y = A.W into out (output_rows x dim). For mode max, argmax (output_rows x dim, optional) receives
// the table row each maximum came from, -1 for an empty bag: it is what backward needs for max.
void forward(table_view<const float> table, const bags& batch, const options& opts,
             matrix_view<float> out, std::span<std::int64_t> argmax = {}, workspace* scratch = nullptr);
// The same, allowing max_norm_flavour::in_place to rescale rows of the table first.
void forward(table_view<float> table, const bags& batch, const options& opts, matrix_view<float> out,
             std::span<std::int64_t> argmax = {}, workspace* scratch = nullptr);

// grad_table (rows x dim) += A^T.dY. For mode max, argmax is the one forward produced.
void backward_dense(const bags& batch, const options& opts, matrix_view<const float> grad_output,
                    matrix_view<float> grad_table, std::span<const std::int64_t> argmax = {},
                    workspace* scratch = nullptr);

// The same gradient, as sorted unique rows (every non-padding row the call references) and their
// gradient rows, replacing grad's contents.
void backward_sparse(std::int64_t table_rows, const bags& batch, const options& opts,
                     matrix_view<const float> grad_output, sparse_gradient& grad,
                     std::span<const std::int64_t> argmax = {}, workspace* scratch = nullptr);

// Gradient of the per-sample weights: for sum, <dY[bag(j)], W[indices[j]]>; for weighted mean,
// the derivative of sum(w x)/sum(w). 0 for padding entries.
void per_sample_weights_grad(table_view<const float> table, const bags& batch, const options& opts,
                             matrix_view<const float> grad_output, std::span<float> grad_weights);

// Rescales each listed row whose norm_type-norm exceeds max_norm to max_norm / (norm + 1e-7)
// times itself, once per distinct row (torch.embedding_renorm_).
void renorm_rows(table_view<float> table, index_span rows, float max_norm, float norm_type = 2.0f);

// ---------------------------------------------------------------------------------------------
// Instruction sets and threads.

// The instruction sets this CPU and this build support, best last; always starts with reference.
std::vector<isa> available_isas();
// The one calls use unless they ask otherwise: the best available, or EMBAG_ISA, or force_isa().
isa active_isa();
// Forces the process-wide choice; throws errc::unsupported_isa naming what the CPU has.
void force_isa(isa which);
// Threads a call with max_threads = 0 may use, as seen from the calling thread.
int default_threads() noexcept;

// This machine's data caches in bytes (per core for L1 and L2), as the OS reports them; what the
// prefetch choice classifies tables by. 0 where unknown.
struct cache_sizes {
  std::int64_t l1d = 0, l2 = 0, llc = 0;
};
cache_sizes caches() noexcept;

}  // namespace embag
