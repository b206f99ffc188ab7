// A matrix's rows, each times its weight (none: copied), into out, by the library's threads: the
// values of torch's sparse gradient of one-index bags (embag._torch_nn, EmbeddingBag) and of
// lookups (embag._embag, Embedding). Done as a forward over bags of one index each, bag b being
// row b: a torch copy_ there woke torch's OpenMP threads, whose spinning then held the core
// embag's second thread wanted (0.26 ms on 2 threads for 2,048 rows of 128).
#pragma once

#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "embag/embag.hpp"

namespace embag_python {

// Called without the GIL where the caller released it; the positions 0, 1, ... are the thread's.
inline void scaled_rows(const float* rows, std::int64_t count, std::int64_t dim, std::span<const float> weights,
                        embag::matrix_view<float> out, const embag::options& sum, embag::workspace* scratch) {
  thread_local std::vector<std::int64_t> positions;
  if (static_cast<std::int64_t>(positions.size()) < count) {
    positions.resize(static_cast<std::size_t>(count));
    std::iota(positions.begin(), positions.end(), std::int64_t{0});
  }
  embag::forward(embag::table_view<const float>{rows, count, dim, 0},
                 embag::bags::fixed(std::span<const std::int64_t>(positions.data(), static_cast<std::size_t>(count)), 1,
                                    weights),
                 sum, out, {}, scratch);
}

}  // namespace embag_python
