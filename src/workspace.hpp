// The scratch memory behind embag::workspace: the row transpose of backward, the distinct rows of
// in-place max_norm (plan.cpp), the indices index policies rewrite (validate.cpp), and a batched
// call's requests and blocks (call.cpp, plan.cpp), an optimizer's scratch rows (api.cpp).
// Vectors only grow, so a reused workspace stops allocating.
#pragma once

#include <cstdint>
#include <vector>

#include "embag/embag.hpp"
#include "plan.hpp"
#include "request.hpp"
#include "validate.hpp"

namespace embag {

struct workspace::impl {
  detail::transpose_buffers transpose;                    // a single call's row transpose
  std::vector<std::int64_t> keys;                         // in-place max_norm's distinct rows
  std::vector<std::int64_t> rewritten_indices;  // a single call's, under index policies
  std::vector<detail::forward_request> batched_requests;
  std::vector<detail::index_census> batched_censuses;
  std::vector<std::vector<std::int64_t>> batched_indices;  // each table's rewritten indices
  std::vector<detail::backward_request> batched_gradients;
  std::vector<detail::transpose_buffers> table_transposes;  // a call's, one per table, built at once
  std::vector<detail::table_rows_block> table_row_blocks;
  std::vector<detail::weights_grad_request> batched_weights_grads;
  std::vector<detail::update_request> batched_updates;
  std::vector<detail::table_block> batched_blocks;
  std::vector<double> batched_block_seconds;  // prefetch trials' block times
  std::vector<detail::table_range> batched_reads, batched_writes;  // checked across a batch's tables
  std::vector<float> update_scratch;  // an optimizer's scratch rows, update_scratch_floats per block
  std::vector<detail::update_tally> update_tallies;  // ... and its tally per block
};

}  // namespace embag
