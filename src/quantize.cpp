// The owning compressed table, and quantize / dequantize over blocks of rows through each
// format's scalar codec (src/formats/); the .embag file is src/formats/embag_file.cpp.
#include "embag/quantize.hpp"

#include <array>
#include <cstdio>
#include <optional>
#include <string>

#include "allocation.hpp"
#include "formats/formats.hpp"
#include "formats/table_storage.hpp"
#include "parallel.hpp"
#include "plan.hpp"
#include "validate.hpp"

namespace embag {
namespace {

std::string str(std::int64_t v) { return std::to_string(v); }
std::string str(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", v);
  return text;
}

}  // namespace

compressed_table::compressed_table(std::unique_ptr<impl> p) noexcept : impl_(std::move(p)) {}
compressed_table::compressed_table(compressed_table&&) noexcept = default;
compressed_table& compressed_table::operator=(compressed_table&&) noexcept = default;
compressed_table::~compressed_table() = default;

compressed_table_view compressed_table::view() const noexcept { return impl_->view; }
std::int64_t compressed_table::rows() const noexcept { return impl_->view.rows; }
std::int64_t compressed_table::dim() const noexcept { return impl_->view.dim; }
dtype compressed_table::element_type() const noexcept { return impl_->view.element_type; }
std::int64_t compressed_table::row_bytes() const noexcept { return impl_->view.row_stride; }
bool compressed_table::mapped() const noexcept { return impl_->owned == nullptr; }

compressed_table quantize(table_view<const float> table, dtype to, const execution& how) {
  const std::int64_t stride = detail::validate_matrix("table", table.data, table.rows, table.dim, table.row_stride);
  const detail::format* format = detail::format_of(to);
  if (format == nullptr) throw error(errc::invalid_option, "quantize to dtype " + str(std::int64_t(to)) + ": not a dtype");
  const std::int64_t bytes = row_bytes(to, table.dim);
  const std::optional<std::int64_t> total = detail::span_bytes(table.rows, bytes, bytes, 1);
  if (!total)
    throw error(errc::size_overflow, "quantize: " + str(table.rows) + " rows of " + str(bytes) + " bytes overflow the address space");

  auto p = std::make_unique<compressed_table::impl>();
  p->owned = detail::allocate_bytes(static_cast<std::size_t>(*total),
                                    "the " + std::string(to_string(to)) + " table of " + str(table.rows) + " rows");
  p->view = {p->owned.get(), table.rows, table.dim, bytes, to};
  detail::range_blocks blocks;
  detail::plan_even_blocks(table.rows, table.dim, detail::threads_for(how), blocks);
  // Each block stops at its first bad row; the error reported is the first of the whole table.
  struct block_problem {
    std::int64_t row = -1;
    detail::row_problem problem;
  };
  std::array<block_problem, detail::max_blocks> problems;
  detail::run_blocks(blocks.count, how, [&](std::int64_t i) {
    for (std::int64_t r = blocks.blocks[i].begin; r < blocks.blocks[i].end; ++r) {
      if (auto problem = format->encode(table.data + r * stride, table.dim, p->owned.get() + r * bytes)) {
        problems[i] = {r, *problem};
        return;
      }
    }
  });
  for (int i = 0; i < blocks.count; ++i) {
    if (problems[i].row < 0) continue;
    const std::int64_t r = problems[i].row, c = problems[i].problem.column;
    throw error(errc::invalid_option, "quantize to " + std::string(to_string(to)) + ": table[" + str(r) + "][" + str(c) +
                                          "] = " + str(double(table.data[r * stride + c])) + " " + problems[i].problem.reason);
  }
  return compressed_table(std::move(p));
}

void dequantize(compressed_table_view table, table_view<float> out, const execution& how) {
  const std::int64_t stride = detail::validate_compressed("table", table);
  const std::int64_t out_stride = detail::validate_matrix("out", out.data, out.rows, out.dim, out.row_stride);
  if (out.rows != table.rows || out.dim != table.dim)
    throw error(errc::size_mismatch, "out is " + str(out.rows) + " x " + str(out.dim) + " but the table is " +
                                         str(table.rows) + " x " + str(table.dim));
  const detail::format& format = *detail::format_of(table.element_type);  // validated
  const std::int64_t bytes = row_bytes(table.element_type, table.dim);
  const detail::byte_range written[] = {detail::matrix_bytes("out", out.data, out.rows, out.dim, out_stride)};
  const detail::byte_range read[] = {{"table", table.data, table.rows == 0 ? 0 : (table.rows - 1) * stride + bytes}};
  detail::validate_disjoint(written, read);
  detail::range_blocks blocks;
  detail::plan_even_blocks(table.rows, table.dim, detail::threads_for(how), blocks);
  detail::run_blocks(blocks.count, how, [&](std::int64_t i) {
    for (std::int64_t r = blocks.blocks[i].begin; r < blocks.blocks[i].end; ++r)
      format.decode(table.data + r * stride, table.dim, out.data + r * out_stride);
  });
}

}  // namespace embag
