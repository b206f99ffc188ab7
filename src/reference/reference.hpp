// The scalar reference: the oracle every kernel is tested against, and the "reference" ISA.
// Plain loops over plain arrays, no SIMD, no threads, no cleverness; it may allocate.
#pragma once

#include "request.hpp"

namespace embag::detail::reference {

void forward(const forward_request& req);
// Dense when req.grad_table is set; otherwise replaces sparse with the sorted unique rows.
void backward(const backward_request& req, sparse_gradient* sparse);
void weights_grad(const weights_grad_request& req);
// An optimizer's step on the rows req.gradient.transpose lists, from req.given_gradient.
void update(const update_request& req, update_tally& tally);

}  // namespace embag::detail::reference
