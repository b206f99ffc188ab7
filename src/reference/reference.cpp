#include "reference/reference.hpp"

#include "rows.hpp"

#include <map>
#include <vector>

namespace embag::detail::reference {
namespace {

// The bags as plain int64 arrays: bag b is indices[begin[b] .. begin[b+1]).
struct plain_bags {
  std::vector<std::int64_t> indices;
  std::vector<std::int64_t> begin;
};

std::int64_t read(const void* data, index_type type, std::int64_t i) {
  if (type == index_type::i32) return static_cast<const std::int32_t*>(data)[i];
  return static_cast<const std::int64_t*>(data)[i];
}

plain_bags plain(const bag_source& s) {
  plain_bags p;
  for (std::int64_t j = 0; j < s.nnz; ++j) p.indices.push_back(read(s.indices, s.index_kind, j));
  p.begin.push_back(0);
  for (std::int64_t b = 0; b < s.num_bags; ++b) {
    std::int64_t end = 0;
    if (s.layout == bag_layout::offsets) {
      end = b + 1 < s.num_boundaries ? read(s.boundaries, s.boundary_kind, b + 1) : s.nnz;
    } else if (s.layout == bag_layout::lengths) {
      end = p.begin.back() + read(s.boundaries, s.boundary_kind, b);
    } else {
      end = p.begin.back() + s.fixed_length;
    }
    p.begin.push_back(end);
  }
  return p;
}

// Element d of a table row as forward sees it: the row decoded to fp32, clipped by max_norm when
// asked.
struct row_reader {
  const forward_request& r;
  std::vector<float> decoded;  // compressed rows only: f32 rows are read in place
  const float* x;
  float scale = 1.0f;
  row_reader(const forward_request& req, std::int64_t index) : r(req) {
    const std::byte* row = req.table + index * req.row_stride;
    if (req.element_type == dtype::f32) {
      x = reinterpret_cast<const float*>(row);
    } else {
      decoded.resize(static_cast<std::size_t>(req.dim));
      decode_row(req.element_type, row, req.dim, decoded.data());
      x = decoded.data();
    }
    if (req.clip_max_norm) scale = max_norm_scale(x, req.dim, req.max_norm, req.norm_type);
  }
  float operator[](std::int64_t d) const { return r.clip_max_norm ? x[d] * scale : x[d]; }
};

bool max_takes(float x, float m) { return x > m || (x != x && m == m); }

}  // namespace

void forward(const forward_request& r) {
  const plain_bags bags = plain(r.bags);
  const bool weighted = r.bags.weights != nullptr;

  if (r.mode == mode::none) {
    for (std::int64_t j = 0; j < r.bags.nnz; ++j) {
      float* out = r.out + j * r.out_stride;
      const std::int64_t index = bags.indices[j];
      if (index == r.padding_idx) {
        for (std::int64_t d = 0; d < r.dim; ++d) out[d] = 0.0f;
        continue;
      }
      const row_reader x(r, index);
      for (std::int64_t d = 0; d < r.dim; ++d) out[d] = x[d];
    }
    return;
  }

  for (std::int64_t b = 0; b < r.bags.num_bags; ++b) {
    std::vector<float> acc(r.dim, 0.0f);
    std::vector<std::int64_t> winner(r.dim, -1);
    std::int64_t count = 0;
    float weight_sum = 0.0f;
    for (std::int64_t j = bags.begin[b]; j < bags.begin[b + 1]; ++j) {
      const std::int64_t index = bags.indices[j];
      if (index == r.padding_idx) continue;
      const row_reader x(r, index);
      const float w = weighted ? r.bags.weights[j] : 1.0f;
      for (std::int64_t d = 0; d < r.dim; ++d) {
        if (r.mode == mode::max) {
          if (count == 0 || max_takes(x[d], acc[d])) {
            acc[d] = x[d];
            winner[d] = index;
          }
        } else {
          acc[d] = weighted ? acc[d] + w * x[d] : acc[d] + x[d];
        }
      }
      weight_sum += w;
      ++count;
    }
    if (r.mode == mode::mean) {
      const float divisor = weighted ? weight_sum : static_cast<float>(count);
      for (float& a : acc) a = divisor == 0.0f ? 0.0f : a / divisor;
    }
    float* out = r.out + b * r.out_stride;
    for (std::int64_t d = 0; d < r.dim; ++d) out[d] = acc[d];
    if (r.argmax)
      for (std::int64_t d = 0; d < r.dim; ++d) r.argmax[b * r.dim + d] = winner[d];
  }
}

void backward(const backward_request& r, sparse_gradient* sparse) {
  const plain_bags bags = plain(r.bags);
  const bool weighted = r.bags.weights != nullptr;
  std::map<std::int64_t, std::int64_t> count;  // non-padding occurrences of each row
  for (std::int64_t index : bags.indices)
    if (index != r.padding_idx) ++count[index];

  // Gradient rows, kept apart from the output until the end (sparse) or written in place (dense).
  std::map<std::int64_t, std::vector<float>> rows;
  const auto grad_row = [&](std::int64_t row) -> float* {
    if (!sparse) return r.grad_table + row * r.grad_table_stride;
    auto [it, fresh] = rows.try_emplace(row, r.dim, 0.0f);
    return it->second.data();
  };
  for (const auto& [row, n] : count) grad_row(row);

  for (std::int64_t b = 0; b < (r.mode == mode::none ? r.bags.nnz : r.bags.num_bags); ++b) {
    const float* dy = r.grad_output + b * r.grad_output_stride;
    if (r.mode == mode::max) {
      for (std::int64_t d = 0; d < r.dim; ++d) {
        const std::int64_t row = r.argmax[b * r.dim + d];
        if (row < 0) continue;
        const float c = r.scale_grad_by_freq ? 1.0f / static_cast<float>(count[row]) : 1.0f;
        grad_row(row)[d] += c * dy[d];
      }
      continue;
    }
    const std::int64_t first = r.mode == mode::none ? b : bags.begin[b];
    const std::int64_t last = r.mode == mode::none ? b + 1 : bags.begin[b + 1];
    // the mean's divisor as forward computes it: the count, or the sum of the weights
    std::int64_t in_bag = 0;
    float weight_sum = 0.0f;
    for (std::int64_t j = first; j < last; ++j) {
      if (bags.indices[j] == r.padding_idx) continue;
      ++in_bag;
      if (weighted) weight_sum += r.bags.weights[j];
    }
    const float divisor = weighted ? weight_sum : static_cast<float>(in_bag);
    for (std::int64_t j = first; j < last; ++j) {
      const std::int64_t row = bags.indices[j];
      if (row == r.padding_idx) continue;
      float c = weighted ? r.bags.weights[j] : 1.0f;
      if (r.mode == mode::mean) c = divisor == 0.0f ? 0.0f : c / divisor;
      if (r.scale_grad_by_freq) c = c / static_cast<float>(count[row]);
      float* g = grad_row(row);
      for (std::int64_t d = 0; d < r.dim; ++d) g[d] += c * dy[d];
    }
  }

  if (!sparse) return;
  sparse->rows.clear();
  sparse->values.clear();
  sparse->dim = r.dim;
  for (const auto& [row, values] : rows) {
    sparse->rows.push_back(row);
    sparse->values.insert(sparse->values.end(), values.begin(), values.end());
  }
}

void weights_grad(const weights_grad_request& w) {
  const forward_request& r = w.forward;
  const plain_bags bags = plain(r.bags);
  for (std::int64_t b = 0; b < r.bags.num_bags; ++b) {
    const float* dy = w.grad_output + b * w.grad_output_stride;
    float weighted_sum = 0.0f, weight_sum = 0.0f;
    for (std::int64_t j = bags.begin[b]; j < bags.begin[b + 1]; ++j) {
      const std::int64_t index = bags.indices[j];
      if (index == r.padding_idx) {
        w.grad_weights[j] = 0.0f;
        continue;
      }
      const row_reader x(r, index);
      float g = 0.0f;
      for (std::int64_t d = 0; d < r.dim; ++d) g += dy[d] * x[d];
      w.grad_weights[j] = g;
      weighted_sum += r.bags.weights[j] * g;
      weight_sum += r.bags.weights[j];
    }
    if (r.mode != mode::mean) continue;
    for (std::int64_t j = bags.begin[b]; j < bags.begin[b + 1]; ++j) {
      if (bags.indices[j] == r.padding_idx) continue;
      w.grad_weights[j] = weight_sum == 0.0f ? 0.0f : (w.grad_weights[j] - weighted_sum / weight_sum) / weight_sum;
    }
  }
}

}  // namespace embag::detail::reference
