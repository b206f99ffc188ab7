// embag: many tables in one call (table-batched embedding bags: FBGEMM's TBE, TorchRec's
// EmbeddingBagCollection). A recommender looks up tens to hundreds of tables per request, of very
// different sizes, bag lengths and widths; one call per table serialises calls that are each too
// small to thread. A batched call validates every table first (nothing is written unless all of
// them pass), then runs one parallel loop over (table, block of bags) pairs sized by work, so a
// table of 3 rows and one of 40M share the threads. Every table's output is bitwise what its own
// single call writes, whatever the thread count.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "embag/embag.hpp"
#include "embag/quantize.hpp"

namespace embag {

// One table of a batched forward: its rows (any dtype; an f32 table as a compressed_table_view
// of dtype::f32), its bags and options, and where its pooled rows go. opts.execution must be left
// at its defaults: the batched call's own execution runs every table. max_norm may only clip (in
// place would write a table other tables' lookups may read at the same time).
struct table_lookup {
  compressed_table_view table;
  bags batch;
  options opts;
  // output_rows(batch, opts) x table.dim: f32, or f16 / bf16 (accumulated in fp32 and rounded once
  // to nearest even, whatever the table's dtype and mode)
  output_view out;
};

// Points each table's `out` at its columns of `out`, side by side in order, as TorchRec's
// KeyedTensor lays a batch out: table t at column sum(dim of tables before t), out.rows rows, of
// out's element type. Throws errc::invalid_shape unless out.cols is the sum of the tables' dims.
void concatenate_outputs(std::span<table_lookup> tables, output_view out);

// Forward of every table: tables[t].out = A_t . W_t. An error names the table ("tables[3]: ...");
// outputs may share a buffer (concatenate_outputs) but no cell, nor any input's bytes. A workspace
// (embag.hpp) reused per thread makes the call allocation-free once it has grown. One table alone
// is a single forward, with any output type.
void forward_batched(std::span<const table_lookup> tables, const execution& how = {}, workspace* scratch = nullptr);

// One table of a batched backward: its forward's bags and options (argmax too, for mode max), the
// gradient of its output, and its row count.
struct table_gradient {
  std::int64_t table_rows = 0;
  bags batch;
  options opts;                           // opts.execution left at its defaults, as in forward_batched
  matrix_view<const float> grad_output;   // output_rows x the table's dim
  std::span<const std::int64_t> argmax;   // mode max: what forward produced
};

// grad_tables[t] (table_rows x dim) += A_t^T . dY_t for every table, each bitwise its own
// backward_dense. Every table is checked first (an error names it); no gradient may overlap
// another's, nor any table's inputs.
void backward_dense_batched(std::span<const table_gradient> tables, std::span<const matrix_view<float>> grad_tables,
                            const execution& how = {}, workspace* scratch = nullptr);

// The same gradients as sparse rows, grads[t] replaced as backward_sparse replaces its one.
void backward_sparse_batched(std::span<const table_gradient> tables, std::span<sparse_gradient> grads,
                             const execution& how = {}, workspace* scratch = nullptr);

// One table of a batched per-sample-weights gradient: its f32 rows, its forward's (weighted) bags
// and options, the gradient of its output, and where the weights' gradient goes (one per index).
struct table_weights_gradient {
  table_view<const float> table;
  bags batch;
  options opts;  // opts.execution left at its defaults, as in forward_batched
  matrix_view<const float> grad_output;
  std::span<float> grad_weights;
};

// Every table's per_sample_weights_grad in one parallel loop over (table, block of bags), each
// bitwise its own call's. Every table is checked first (an error names it); no gradient may
// overlap another's, nor any table's inputs.
void per_sample_weights_grad_batched(std::span<const table_weights_gradient> tables, const execution& how = {},
                                     workspace* scratch = nullptr);

}  // namespace embag
