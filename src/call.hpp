// The validated call as a value. validate_forward, validate_backward and validate_weights_grad run
// every check a call needs (validate.hpp's) and return what planning and the kernels take: the
// request, the ISA it runs on and how it runs. Nothing before them writes; nothing after them
// throws a validation error. The C++ entry points (api.cpp) and the C ABI (c_api.cpp) both build
// calls here and run them with execute(), so a C call is checked exactly as a C++ one.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "embag/batched.hpp"
#include "embag/embag.hpp"
#include "embag/optim.hpp"
#include "embag/quantize.hpp"
#include "request.hpp"
#include "validate.hpp"
#include "workspace.hpp"

namespace embag::detail {

// A validated table: where its rows are and how they are stored (f32 rows, however they were
// given, are read as floats).
struct stored_table {
  const std::byte* data = nullptr;
  dtype type = dtype::f32;
  std::int64_t rows = 0, dim = 0, stride = 0, row_bytes = 0;  // stride and row_bytes in bytes
  float* writable = nullptr;  // the same rows, when the caller lets max_norm in place rescale them

  byte_range bytes() const { return {"table", data, rows == 0 ? 0 : (rows - 1) * stride + row_bytes}; }
  table_view<const float> floats() const;  // the rows as floats: f32 tables only
  compressed_table_view view() const { return {data, rows, dim, stride, type}; }
};

stored_table stored(table_view<const float> t);
stored_table stored(table_view<float> t);  // writable
stored_table stored(compressed_table_view t);

// A forward over table t's rows of validated bags, as opts asks (padding: the validated padding_idx
// or no_padding); its output, prefetch and argmax are the caller's to set.
forward_request forward_request_for(const stored_table& t, const bag_source& bags, const options& opts,
                                    std::int64_t padding);

// The caller's read-only arrays of a call, which no output may overlap.
class call_inputs {
 public:
  call_inputs(const bags& batch, const options& opts, byte_range table_or_grad);
  void add(byte_range r) { ranges_[count_++] = r; }
  std::span<const byte_range> span() const { return {ranges_.data(), static_cast<std::size_t>(count_)}; }
  static constexpr std::size_t most = 6;  // the five ranges of every call, and one added

 private:
  std::array<byte_range, most> ranges_;
  int count_ = 0;
};

// Each call's validation takes `rewritten`, where its indices go if its index policies rewrite them
// (validate_bags), which must outlive the call; and returns the census execute() publishes.
template <class Request>
struct validated_call {
  Request req;
  index_census census;
  isa which = isa::reference;
  execution how;
};

struct forward_call : validated_call<forward_request> {
  // max_norm in place: the referenced rows of the table (stored.writable) are rescaled first
  float* renorm_table = nullptr;
};

forward_call validate_forward(const stored_table& t, const bags& batch, const options& opts, const output_view& out,
                              std::span<std::int64_t> argmax, std::vector<std::int64_t>& rewritten);

// A batched call (embag/batched.hpp): every table's request and census, in table order.
template <class Request>
struct batched_call {
  std::span<Request> tables;
  std::span<const index_census> censuses;
  isa which = isa::reference;
  execution how;
};
using batched_forward_call = batched_call<forward_request>;

// Each table checked as its own forward would be (an error names it: "tables[3]: ..."), with
// its execution left at the defaults and max_norm clipping only; then every output against every
// other table's inputs and output (outputs side by side in one buffer, with one row stride, share
// no cell), and every report against the others. The requests, censuses and rewritten indices
// go in the workspace, grown as needed.
batched_forward_call validate_forward_batched(std::span<const table_lookup> tables, const execution& how,
                                              workspace::impl& ws);

struct backward_call : validated_call<backward_request> {
  call_inputs inputs;  // what the gradient output must not overlap
};

// backward_dense: grad_table (whose shape is the table's) checked first, then the call.
backward_call validate_backward_dense(const bags& batch, const options& opts, matrix_view<const float> grad_output,
                                      matrix_view<float> grad_table, std::span<const std::int64_t> argmax,
                                      std::vector<std::int64_t>& rewritten);
// The sparse forms: the inputs only; the entry point checks its outputs against call.inputs.
backward_call validate_backward_sparse(std::int64_t table_rows, const bags& batch, const options& opts,
                                       matrix_view<const float> grad_output, std::span<const std::int64_t> argmax,
                                       std::vector<std::int64_t>& rewritten);

// A batched backward. Dense: each request's grad_table set; sparse: the entry point fills each
// table's gradient in turn.
using batched_backward_call = batched_call<backward_request>;

// Each table checked as its own backward would be (an error names it), then every gradient output
// against the other tables' inputs and gradients: `grad_tables` for the dense form, or the storage
// `grads` may reuse for the sparse form (one of the two is empty).
batched_backward_call validate_backward_batched(std::span<const table_gradient> tables,
                                                std::span<const matrix_view<float>> grad_tables,
                                                std::span<const sparse_gradient> grads, const execution& how,
                                                workspace::impl& ws);

using weights_grad_call = validated_call<weights_grad_request>;

using batched_weights_grad_call = batched_call<weights_grad_request>;

// t: an f32 table.
weights_grad_call validate_weights_grad(const stored_table& t, const bags& batch, const options& opts,
                                        matrix_view<const float> grad_output, std::span<float> grad_weights,
                                        std::vector<std::int64_t>& rewritten);

// Each table checked as its own per_sample_weights_grad would be (an error names it), then every
// table's grad_weights against the other tables' inputs and gradients. Requests, censuses and
// rewritten indices go in the workspace.
batched_weights_grad_call validate_weights_grad_batched(std::span<const table_weights_gradient> tables,
                                                        const execution& how, workspace::impl& ws);

// An optimizer's step (embag/optim.hpp). Both forms check the table (f32, f16 or bf16), the
// optimizer's parameters and the state's shape against the optimizer first; the fused form then
// the call's backward against the table's rows (the request's gradient), the other the sparse
// gradient's rows (sorted, unique, in the table), which become the request's row list. Table and
// state may overlap no input nor each other.
using update_call = validated_call<update_request>;
update_call validate_backward_update(const trainable_table_view& table, const bags& batch, const options& opts,
                                     matrix_view<const float> grad_output, const optimizer& opt,
                                     const optimizer_state& state, std::span<const std::int64_t> argmax,
                                     std::vector<std::int64_t>& rewritten);
// The sparse gradient as arrays (embag.hpp's sparse_gradient, or a C caller's): rows, and
// values of rows.size() x dim floats, dense.
update_call validate_apply_sparse_gradient(const trainable_table_view& table, std::span<const std::int64_t> rows,
                                           std::span<const float> values, std::int64_t dim, const optimizer& opt,
                                           const optimizer_state& state, const execution& how);

// Running validated calls (api.cpp): plan, then the reference's whole-call algorithm or the ISA's
// kernels block by block. Backward's sparse forms run in api.cpp's entry points, which own their
// outputs.
void execute(forward_call& call, workspace* scratch);
void execute(const batched_forward_call& call, workspace::impl& ws);
void execute(backward_call& call, workspace* scratch);  // dense
void execute(const weights_grad_call& call);
void execute(const batched_weights_grad_call& call, workspace::impl& ws);
// A validated sparse backward's gradient into grad, replacing its contents (its outputs checked
// by the caller), and a validated update's step.
void execute(backward_call& call, sparse_gradient& grad, workspace* scratch);
update_summary execute(update_call& call, workspace* scratch);

// backward_sparse into fixed buffers the caller owns, for the C ABI (embag.hpp's form grows vectors
// of its own, which a C caller would then have to have copied into its buffers).
struct sparse_gradient_buffers {
  std::span<std::int64_t> rows;  // its size is the capacity, in rows
  float* values = nullptr;       // capacity x dim (grad_output's cols) floats, dense
};

// backward_sparse's gradient into `out`. Every argument is checked first, the buffers as any
// output (aligned, disjoint from every input, from each other and from num_rows); then num_rows
// receives the gradient's row count, and the rows are written only if they fit in the capacity
// (errc::size_mismatch otherwise, the buffers untouched).
void backward_sparse_into(std::int64_t table_rows, const bags& batch, const options& opts,
                          matrix_view<const float> grad_output, std::span<const std::int64_t> argmax,
                          const sparse_gradient_buffers& out, std::int64_t& num_rows);

// A batched step: each table checked as its own backward_update would be (an error names it), then
// every table and state it writes against the other tables' inputs and writes, and the summaries
// against all of them. Requests and rewritten indices go in the workspace.
using batched_update_call = batched_call<update_request>;
batched_update_call validate_backward_update_batched(std::span<const table_update> tables,
                                                     std::span<const update_summary> summaries, const execution& how,
                                                     workspace::impl& ws);

// apply_sparse_gradient on a gradient as arrays (the C ABI's, which embag.hpp's sparse_gradient
// would have to copy into vectors).
update_summary apply_gradient_rows(const trainable_table_view& table, std::span<const std::int64_t> rows,
                                   std::span<const float> values, std::int64_t dim, const optimizer& opt,
                                   const optimizer_state& state, const execution& how, workspace* scratch);

// The vector a call's rewritten indices go in: the workspace's, or `own` (allocated only if the
// call rewrites) when the caller gave none.
std::vector<std::int64_t>& index_storage(workspace* scratch, std::vector<std::int64_t>& own);

}  // namespace embag::detail
