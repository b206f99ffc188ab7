#include "reference/reference.hpp"

#include "formats/codecs.hpp"
#include "formats/formats.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>

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

  if (r.reduce.pool == pooling::lookup) {
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
    bag_tally tally;
    for (std::int64_t j = bags.begin[b]; j < bags.begin[b + 1]; ++j) {
      const std::int64_t index = bags.indices[j];
      if (index == r.padding_idx) continue;
      const row_reader x(r, index);
      const float w = weighted ? r.bags.weights[j] : 1.0f;
      for (std::int64_t d = 0; d < r.dim; ++d) {
        if (r.reduce.pool == pooling::max) {
          if (tally.count == 0 || max_takes(x[d], acc[d])) {
            acc[d] = x[d];
            winner[d] = index;
          }
        } else {
          acc[d] = weighted ? std::fma(w, x[d], acc[d]) : acc[d] + x[d];  // the weighted term rounded once
        }
      }
      tally_row(tally, w);
    }
    if (r.reduce.scaling != bag_scaling::none) {
      const float divisor = bag_divisor(r.reduce.scaling, weighted, tally);
      for (float& a : acc) a = divided(a, divisor);
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

  const bool lookup = r.reduce.pool == pooling::lookup;
  for (std::int64_t b = 0; b < (lookup ? r.bags.nnz : r.bags.num_bags); ++b) {
    const float* dy = r.grad_output + b * r.grad_output_stride;
    if (r.reduce.pool == pooling::max) {
      for (std::int64_t d = 0; d < r.dim; ++d) {
        const std::int64_t row = r.argmax[b * r.dim + d];
        if (row < 0) continue;
        const float c = r.scale_grad_by_freq ? 1.0f / static_cast<float>(count[row]) : 1.0f;
        float& g = grad_row(row)[d];
        g = std::fma(c, dy[d], g);
      }
      continue;
    }
    const std::int64_t first = lookup ? b : bags.begin[b];
    const std::int64_t last = lookup ? b + 1 : bags.begin[b + 1];
    // the divisor as forward computes it
    bag_tally tally;
    for (std::int64_t j = first; j < last; ++j)
      if (bags.indices[j] != r.padding_idx) tally_row(tally, weighted ? r.bags.weights[j] : 1.0f);
    const float divisor = bag_divisor(r.reduce.scaling, weighted, tally);
    for (std::int64_t j = first; j < last; ++j) {
      const std::int64_t row = bags.indices[j];
      if (row == r.padding_idx) continue;
      float c = weighted ? r.bags.weights[j] : 1.0f;
      if (r.reduce.scaling != bag_scaling::none) c = divided(c, divisor);
      if (r.scale_grad_by_freq) c = c / static_cast<float>(count[row]);
      float* g = grad_row(row);
      for (std::int64_t d = 0; d < r.dim; ++d) g[d] = std::fma(c, dy[d], g[d]);  // rounded once, as forward's weighted terms
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
    float weighted_sum = 0.0f;
    bag_tally tally;
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
      tally_row(tally, r.bags.weights[j]);
    }
    if (r.reduce.scaling == bag_scaling::none) continue;
    const float divisor = bag_divisor(r.reduce.scaling, true, tally);
    for (std::int64_t j = bags.begin[b]; j < bags.begin[b + 1]; ++j) {
      if (bags.indices[j] == r.padding_idx) continue;
      w.grad_weights[j] = scaled_weight_gradient(r.reduce.scaling, w.grad_weights[j], r.bags.weights[j], weighted_sum, divisor);
    }
  }
}

// The optimizers of embag/optim.hpp as their formulas, one row at a time.
void update(const update_request& q, update_tally& tally) {
  const std::int64_t dim = q.gradient.dim;
  const std::int64_t element_bytes = q.table_type == dtype::f32 ? 4 : 2;
  const float limit = q.table_type == dtype::f16 ? 65504.0f : q.table_type == dtype::bf16 ? 0x1.fep127f : FLT_MAX;
  const float lr = q.learning_rate, eps = q.eps;
  std::vector<float> w(static_cast<std::size_t>(dim)), g(w.size()), new_w(w.size()), new_s(w.size());
  for (std::int64_t u = 0; u < q.gradient.transpose.num_unique; ++u) {
    const std::int64_t row = q.gradient.transpose.unique_rows[u];
    std::byte* stored = q.table + row * q.table_stride * element_bytes;
    decode_row(q.table_type, stored, dim, w.data());
    for (std::int64_t d = 0; d < dim; ++d) {
      g[d] = q.given_gradient[u * dim + d];
      if (q.weight_decay != 0.0f) g[d] = g[d] + q.weight_decay * w[d];
    }
    float* s = q.state == nullptr ? nullptr : q.state + row * q.state_stride;
    float row_state = 0.0f, row_step = 0.0f;
    bool finite = true;
    if (q.kind == optimizer_kind::rowwise_adagrad) {
      float lane[16] = {};
      for (std::int64_t d = 0; d < dim; ++d) lane[d % 16] += g[d] * g[d];
      for (int width = 8; width >= 1; width /= 2)
        for (int i = 0; i < width; ++i) lane[i] += lane[i + width];
      row_state = s[0] + lane[0] / static_cast<float>(dim);
      row_step = lr / (std::sqrt(row_state) + eps);
      finite = std::fabs(row_state) <= FLT_MAX;
    }
    for (std::int64_t d = 0; d < dim; ++d) {
      switch (q.kind) {
        case optimizer_kind::sgd: new_w[d] = w[d] - lr * g[d]; break;
        case optimizer_kind::adagrad:
          new_s[d] = s[d] + g[d] * g[d];
          finite = finite && std::fabs(new_s[d]) <= FLT_MAX;
          new_w[d] = w[d] - lr * (g[d] / (std::sqrt(new_s[d]) + eps));
          break;
        case optimizer_kind::rowwise_adagrad: new_w[d] = w[d] - row_step * g[d]; break;
      }
      finite = finite && std::fabs(new_w[d]) <= limit;
    }
    if (!finite) {
      if (tally.not_finite++ == 0) tally.first_not_finite = row;
      continue;
    }
    ++tally.updated;
    if (q.kind == optimizer_kind::adagrad) std::copy(new_s.begin(), new_s.end(), s);
    if (q.kind == optimizer_kind::rowwise_adagrad) s[0] = row_state;
    for (std::int64_t d = 0; d < dim; ++d) {
      if (q.table_type == dtype::f32) {
        store(stored + 4 * d, new_w[d]);
        continue;
      }
      const std::uint16_t h = q.rounding == rounding_mode::stochastic
                                  ? stochastic_round(new_w[d], q.table_type, rounding_bits(q.seed, row + q.hashed_row_offset, d))
                                  : q.table_type == dtype::f16 ? f16_from_float(new_w[d]) : bf16_from_float(new_w[d]);
      store(stored + 2 * d, h);
    }
  }
}

}  // namespace embag::detail::reference
