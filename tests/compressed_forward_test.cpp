// Forward on compressed tables (fp16, bf16, 8-bit and 4-bit rowwise): every mode, dtype and ISA
// against "dequantise with the reference, then run the fp32 reference", bit for bit; every stored
// bit pattern of each element type through each ISA's widening; bad calls that write nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <random>

#include "embag/quantize.hpp"
#include "embag/roofline.hpp"
#include "support/cases.hpp"

namespace embag::test {
namespace {

constexpr dtype compressed_types[] = {dtype::f16, dtype::bf16, dtype::int8_rowwise, dtype::int4_rowwise};

int cases_per_dtype() {
  const char* env = std::getenv("EMBAG_TEST_CASES");
  return std::max(1, (env ? std::atoi(env) : 2000) / 8);
}

// The fp32 values of a compressed table, as dequantize (the scalar decode) gives them.
std::vector<float> dequantised(compressed_table_view t) {
  std::vector<float> values(static_cast<std::size_t>(t.rows * t.dim));
  dequantize(t, {values.data(), t.rows, t.dim, 0});
  return values;
}

// The same rows copied to a stride of row_bytes + pad bytes: rows no longer aligned to anything.
struct padded_rows {
  std::vector<std::byte> bytes;
  compressed_table_view view;
  padded_rows(compressed_table_view packed, std::int64_t pad) {
    const std::int64_t row = row_bytes(packed.element_type, packed.dim), stride = row + pad;
    bytes.resize(static_cast<std::size_t>(packed.rows * stride + 1));
    for (std::int64_t r = 0; r < packed.rows; ++r)
      std::memcpy(bytes.data() + 1 + r * stride, packed.data + r * packed.row_stride, static_cast<std::size_t>(row));
    view = {bytes.data() + 1, packed.rows, packed.dim, stride, packed.element_type};
  }
};

struct forward_result {
  std::vector<float> out;
  std::vector<std::int64_t> argmax;
};

// forward on either kind of table into a canary-filled output.
template <class Table>
forward_result run_forward(Table table, const call_case& c, const execution& how) {
  forward_result r{canary_buffer(c.out_rows(), c.out_stride), {}};
  if (c.opts.mode == mode::max) r.argmax.assign(static_cast<std::size_t>(c.out_rows() * c.dim), -7);
  options opts = c.opts;
  opts.execution = how;
  forward(table, c.batch(), opts, {r.out.data(), c.out_rows(), c.dim, c.out_stride}, r.argmax);
  return r;
}

TEST(CompressedForward, EveryDtypeModeAndIsaMatchesTheReferenceOnTheDequantisedTable) {
  const int n = cases_per_dtype();
  constexpr std::uint64_t seed0 = 61123;
  std::printf("%d cases per dtype, seeds %llu..%llu, ISAs:", n, (unsigned long long)seed0,
              (unsigned long long)(seed0 + n - 1));
  for (isa which : available_isas()) std::printf(" %s", std::string(to_string(which)).c_str());
  std::printf("\n");
  int modes_seen[std::size(all_modes)] = {}, fixed_dims = 0, weighted = 0;
  for (int i = 0; i < n; ++i) {
    call_limits limits;
    limits.allow_max_norm = false;  // an error on compressed tables (tested below)
    const call_case c = random_call(seed0 + i, limits);
    ++modes_seen[static_cast<int>(c.opts.mode)];
    fixed_dims += c.dim == 16 || c.dim == 32 || c.dim == 64 || c.dim == 128 || c.dim == 256;
    weighted += !c.weights.empty();
    for (dtype type : compressed_types) {
      SCOPED_TRACE(c.describe() + " dtype=" + std::string(to_string(type)));
      const compressed_table q = quantize(c.view(), type);
      // The oracle: the reference decode, then the fp32 reference forward.
      const std::vector<float> plain = dequantised(q.view());
      execution reference;
      reference.isa = isa::reference;
      const forward_result want = run_forward(table_view<const float>{plain.data(), c.rows, c.dim, 0}, c, reference);
      const padded_rows padded(q.view(), 1 + i % 5);
      for (isa which : available_isas()) {
        execution how;
        how.isa = which;
        how.max_threads = 1 + i % 3;
        const forward_result packed_got = run_forward(q.view(), c, how);
        ASSERT_TRUE(same_bits(want.out, packed_got.out, c.out_rows(), c.dim, c.out_stride)) << to_string(which);
        ASSERT_TRUE(gaps_untouched(canary_buffer(c.out_rows(), c.out_stride), packed_got.out, c.out_rows(), c.dim,
                                   c.out_stride));
        ASSERT_EQ(want.argmax, packed_got.argmax) << to_string(which);
        const forward_result padded_got = run_forward(padded.view, c, how);
        ASSERT_TRUE(same_bits(want.out, padded_got.out, c.out_rows(), c.dim, c.out_stride))
            << to_string(which) << " with row stride " << padded.view.row_stride;
      }
    }
  }
  // The draw must have reached what the test claims to cover.
  if (n >= 100) {
    for (const mode m : all_modes) EXPECT_GT(modes_seen[static_cast<int>(m)], 0) << "mode " << to_string(m);
    EXPECT_GT(fixed_dims, 0);
    EXPECT_GT(weighted, 0);
  }
}

// Every fp16 / bf16 bit pattern, every byte and every nibble at every position of a batch, through
// mode none (a plain copy of each row) on every ISA: the widening itself, with and without a tail.
class EveryPattern : public ::testing::TestWithParam<std::int64_t> {};

std::vector<std::byte> pattern_rows(dtype type, std::int64_t dim, std::int64_t& rows) {
  const std::int64_t bytes = row_bytes(type, dim);
  std::mt19937 rng(static_cast<unsigned>(dim));
  std::vector<std::byte> data;
  if (type == dtype::f16 || type == dtype::bf16) {  // all 65536 patterns, in order, spread over rows
    rows = (65536 + dim - 1) / dim;
    data.resize(static_cast<std::size_t>(rows * bytes));
    for (std::int64_t k = 0; k < rows * dim; ++k) {
      const auto bits = static_cast<std::uint16_t>(k);
      std::memcpy(data.data() + 2 * k, &bits, 2);
    }
    return data;
  }
  // rowwise: each row a random scale and bias (fp32 or fp16 bits of ordinary numbers), its levels
  // cycling through every value at every position
  const std::int64_t levels = type == dtype::int8_rowwise ? 256 : 16;
  rows = 2 * levels;
  data.resize(static_cast<std::size_t>(rows * bytes));
  std::uniform_real_distribution<float> scale(-3.0f, 3.0f);
  for (std::int64_t r = 0; r < rows; ++r) {
    std::byte* row = data.data() + r * bytes;
    for (std::int64_t d = 0; d < dim; ++d) {
      const auto q = static_cast<unsigned>((r + d * 7) % levels);
      if (type == dtype::int8_rowwise) row[d] = std::byte(q);
      else row[d / 2] |= std::byte(q << (4 * (d % 2)));
    }
    if (type == dtype::int8_rowwise) {
      const float sb[2] = {scale(rng), scale(rng)};
      std::memcpy(row + dim, sb, 8);
    } else {  // fp16 1.0 + k/1024 style values: exponent 14-16, any fraction
      const std::uint16_t sb[2] = {static_cast<std::uint16_t>(0x3800 + rng() % 0x0c00),
                                   static_cast<std::uint16_t>(0xb800 + rng() % 0x0c00)};
      std::memcpy(row + (dim + 1) / 2, sb, 4);
    }
  }
  return data;
}

TEST_P(EveryPattern, WideningMatchesTheScalarDecodeOnEveryIsa) {
  const std::int64_t dim = GetParam();
  for (dtype type : compressed_types) {
    SCOPED_TRACE(std::string(to_string(type)) + " dim " + std::to_string(dim));
    std::int64_t rows = 0;
    const std::vector<std::byte> data = pattern_rows(type, dim, rows);
    const compressed_table_view view{data.data(), rows, dim, 0, type};
    const std::vector<float> want = dequantised(view);
    std::vector<std::int64_t> all(static_cast<std::size_t>(rows));
    for (std::int64_t r = 0; r < rows; ++r) all[static_cast<std::size_t>(r)] = r;
    options opts;
    opts.mode = mode::none;
    for (isa which : available_isas()) {
      opts.execution.isa = which;
      std::vector<float> got(want.size(), -1.0f);
      forward(view, bags::fixed(all, 1), opts, {got.data(), rows, dim, 0});
      ASSERT_TRUE(same_bits(want, got, rows, dim, dim)) << to_string(which);
    }
  }
}

// 16 and 64: whole batches of every ISA; 17 and 67: a scalar tail after them.
INSTANTIATE_TEST_SUITE_P(Dims, EveryPattern, ::testing::Values(16, 17, 64, 67));

TEST(CompressedForward, ScalarDecodeIsTheDocumentedLayout) {
  // one row per type, written by hand from quantize.hpp's layout table
  const std::byte f16_row[4] = {std::byte{0x00}, std::byte{0x3c}, std::byte{0x00}, std::byte{0xc0}};  // 1, -2
  const std::byte bf16_row[4] = {std::byte{0x80}, std::byte{0x3f}, std::byte{0x40}, std::byte{0xc0}};  // 1, -3
  std::byte int8_row[10] = {std::byte{3}, std::byte{250}};
  const float int8_sb[2] = {0.5f, -1.0f};
  std::memcpy(int8_row + 2, int8_sb, 8);
  // q * scale + bias rounded once: 3 (1 + 2^-23) - 3 is 3 x 2^-23, where a product rounded first
  // (3 + 2^-21, a tie to even) would leave 2^-21.
  std::byte int8_fused_row[10] = {std::byte{3}, std::byte{1}};
  const float int8_fused_sb[2] = {1 + 0x1p-23f, -3.0f};
  std::memcpy(int8_fused_row + 2, int8_fused_sb, 8);
  std::byte int4_row[6] = {std::byte{0xa3}};                // element 0 = 3 (low nibble), element 1 = 10
  const std::uint16_t int4_sb[2] = {0x3400, 0xbc00};        // scale 0.25, bias -1
  std::memcpy(int4_row + 1, int4_sb, 4);
  const struct {
    dtype type;
    const std::byte* row;
    float first, second;
  } rows[] = {{dtype::f16, f16_row, 1.0f, -2.0f},
              {dtype::bf16, bf16_row, 1.0f, -3.0f},
              {dtype::int8_rowwise, int8_row, 3 * 0.5f - 1.0f, 250 * 0.5f - 1.0f},
              {dtype::int8_rowwise, int8_fused_row, 0x3p-23f, -2 + 0x1p-23f},
              {dtype::int4_rowwise, int4_row, 3 * 0.25f - 1.0f, 10 * 0.25f - 1.0f}};
  for (const auto& r : rows) {
    const std::vector<std::int64_t> index = {0};
    for (isa which : available_isas()) {
      options opts;
      opts.mode = mode::none;
      opts.execution.isa = which;
      float out[2] = {};
      forward(compressed_table_view{r.row, 1, 2, 0, r.type}, bags::fixed(index, 1), opts, {out, 1, 2, 0});
      EXPECT_EQ(out[0], r.first) << to_string(r.type) << " on " << to_string(which);
      EXPECT_EQ(out[1], r.second) << to_string(r.type) << " on " << to_string(which);
    }
  }
}

// A one-index bag's sum (and mean, sqrtn) is 0 + its row, so a -0 element comes out +0, where a
// lookup copies it; on every ISA and compressed dtype, at the specialised widths (the one-index
// loop, which adds that 0 to a rowwise bias once per row: rows.hpp, load_plus_zero) and another.
// The rowwise rows decode to -0 as code 0 times a negative scale, or any code times a -0 scale,
// plus a -0 bias; and to +0 where either is +0.
TEST(CompressedForward, OneIndexSumsMakeNegativeZerosPositive) {
  static constexpr std::uint16_t f16_bits[] = {0x8000, 0x0000, 0x3c00, 0xc000};  // -0, +0, 1, -2
  static constexpr std::uint16_t bf16_bits[] = {0x8000, 0x0000, 0x3f80, 0xc000};
  // (scale, bias) per row, and each row's codes alternating 0 and 3
  constexpr float int8_scale_bias[][2] = {{-1.0f, -0.0f}, {-0.0f, -0.0f}, {-1.0f, 0.0f}, {0.5f, -0.0f}};
  constexpr std::uint16_t int4_scale_bias[][2] = {{0xbc00, 0x8000}, {0x8000, 0x8000}, {0xbc00, 0x0000}, {0x3800, 0x8000}};
  constexpr std::int64_t rows = 4;
  const std::vector<std::int64_t> indices = {0, 1, 2, 3, 3, 1, 0};
  const auto bag_count = static_cast<std::int64_t>(indices.size());
  for (dtype type : compressed_types) {
    for (std::int64_t dim : {16, 32, 64, 128, 256, 67}) {
      SCOPED_TRACE(std::string(to_string(type)) + " D=" + std::to_string(dim));
      const std::int64_t bytes = row_bytes(type, dim);
      // (chosen here: GCC 12 at -O1 under AddressSanitizer wrote zeros for bf16 from
      // `&(f16 ? f16_bits : bf16_bits)[i]` inside the loop)
      const std::uint16_t* const halves = type == dtype::f16 ? f16_bits : bf16_bits;
      std::vector<std::byte> table(static_cast<std::size_t>(rows * bytes));
      for (std::int64_t r = 0; r < rows; ++r) {
        std::byte* row = table.data() + r * bytes;
        for (std::int64_t d = 0; d < dim; ++d) {
          const auto code = static_cast<unsigned>(d % 2 == 0 ? 0 : 3);
          if (type == dtype::f16 || type == dtype::bf16)
            std::memcpy(row + 2 * d, halves + (r + d) % 4, 2);
          else if (type == dtype::int8_rowwise)
            row[d] = std::byte(code);
          else
            row[d / 2] |= std::byte(code << (4 * (d % 2)));
        }
        if (type == dtype::int8_rowwise) std::memcpy(row + dim, int8_scale_bias[r], 8);
        if (type == dtype::int4_rowwise) std::memcpy(row + (dim + 1) / 2, int4_scale_bias[r], 4);
      }
      const compressed_table_view view{table.data(), rows, dim, 0, type};
      const std::vector<float> plain = dequantised(view);
      ASSERT_GT(std::count_if(plain.begin(), plain.end(), [](float v) { return v == 0 && std::signbit(v); }), 0)
          << "the table holds no -0 to turn";
      for (const mode m : {mode::sum, mode::mean, mode::sqrtn, mode::none}) {
        const auto run = [&](auto table_view, isa which) {
          options opts;
          opts.mode = m;
          opts.execution.isa = which;
          opts.execution.max_threads = 1;
          std::vector<float> out(static_cast<std::size_t>(bag_count * dim), 7.0f);
          forward(table_view, bags::fixed(indices, 1), opts, {out.data(), bag_count, dim, 0});
          return out;
        };
        const std::vector<float> want = run(table_view<const float>{plain.data(), rows, dim, 0}, isa::reference);
        const auto negative_zeros = std::count_if(want.begin(), want.end(), [](float v) { return v == 0 && std::signbit(v); });
        if (m == mode::none)
          EXPECT_GT(negative_zeros, 0) << "a lookup copies -0";
        else
          EXPECT_EQ(negative_zeros, 0) << "the reference's " << to_string(m) << " of one row is 0 + the row";
        for (isa which : available_isas())
          EXPECT_TRUE(same_bits(want, run(view, which), bag_count, dim, dim)) << to_string(m) << " on " << to_string(which);
      }
    }
  }
}

// A bad call on a compressed table is the same clear error as on an fp32 one, and writes nothing.
TEST(CompressedForward, BadCallsAreErrorsThatWriteNothing) {
  call_case c = make_case(10, 32, {1, 2, 3, 4}, {0, 2});
  const compressed_table q = quantize(c.view(), dtype::int8_rowwise);
  const auto expect_error = [&](const options& opts, const std::vector<std::int64_t>& indices, compressed_table_view t,
                                errc code, const std::string& fragment) {
    std::vector<float> out = canary_buffer(2, 32);
    const std::vector<float> before = out;
    try {
      forward(t, bags::from_offsets(indices, c.boundaries), opts, {out.data(), 2, 32, 0});
      ADD_FAILURE() << "no error for " << fragment;
    } catch (const error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
    EXPECT_EQ(std::memcmp(out.data(), before.data(), out.size() * 4), 0) << fragment;
  };
  options clip;
  clip.max_norm = 1.0f;
  expect_error(clip, c.indices, q.view(), errc::invalid_option, "max_norm needs an f32 table; this one is int8_rowwise");
  expect_error({}, {1, 2, 10, 4}, q.view(), errc::index_out_of_range, "indices[2] = 10");
  compressed_table_view narrow = q.view();
  narrow.row_stride = row_bytes(dtype::int8_rowwise, 32) - 1;
  expect_error({}, c.indices, narrow, errc::invalid_shape, "row_stride");
  compressed_table_view unknown = q.view();
  unknown.element_type = static_cast<dtype>(9);
  expect_error({}, c.indices, unknown, errc::invalid_option, "is not a dtype");
  compressed_table_view misaligned_f32{q.view().data + 1, 10, 32, 128, dtype::f32};
  expect_error({}, c.indices, misaligned_f32, errc::misaligned, "misaligned");
}

TEST(CompressedForward, F32ViewsAreTheFp32Path) {
  const call_case c = make_case(20, 48, {1, 5, 7, 19, 0}, {0, 3});
  const std::vector<float> want = run_forward(c.view(), c, {}).out;
  const compressed_table_view as_bytes{reinterpret_cast<const std::byte*>(c.table.data()), c.rows, c.dim,
                                       c.row_stride * 4, dtype::f32};
  EXPECT_TRUE(same_bits(want, run_forward(as_bytes, c, {}).out, c.out_rows(), c.dim, c.out_stride));
}

// The roofline is the minimal gather: its output is forward's unweighted sum, bit for bit, on every
// ISA, element type, width (the specialised ones and others), index type and prefetch level, with
// empty bags, one-index bags and a last bag that ends the stream; and on a batch whose every bag
// holds one index, where it copies each row (the loop of its own that forward's sum and lookups
// take then), forward's lookup of those indices (the sum's differs where a row holds -0).
TEST(Roofline, GatherEqualsForwardSum) {
  std::mt19937_64 rng(7);
  for (const bool one_index_each : {false, true})
  for (std::int64_t dim : {16, 32, 64, 128, 256, 3, 17, 48, 99, 100, 200}) {
    const std::int64_t rows = 97, num_bags = 23;
    std::vector<std::int64_t> indices, offsets;
    for (std::int64_t b = 0; b < num_bags; ++b) {
      offsets.push_back(static_cast<std::int64_t>(indices.size()));
      const std::int64_t length =
          one_index_each ? 1 : b % 5 == 0 ? 0 : b % 3 == 0 ? 1 : static_cast<std::int64_t>(rng() % 9);
      for (std::int64_t j = 0; j < length; ++j) indices.push_back(static_cast<std::int64_t>(rng() % rows));
    }
    if (!one_index_each) indices.push_back(rows - 1);  // the last bag ends the stream
    const call_case c = make_case(rows, dim, indices, offsets);
    const std::vector<std::int32_t> indices32(indices.begin(), indices.end()), offsets32(offsets.begin(), offsets.end());
    for (dtype type : {dtype::f32, dtype::f16, dtype::bf16, dtype::int8_rowwise, dtype::int4_rowwise}) {
      const compressed_table q = quantize(c.view(), type);
      std::vector<float> want(static_cast<std::size_t>(num_bags * dim));
      options reference;
      reference.execution.isa = isa::reference;
      if (one_index_each) {
        reference.mode = mode::none;
        forward(q.view(), bags::fixed(indices, num_bags), reference, {want.data(), num_bags, dim, 0});
      } else {
        forward(q.view(), bags::from_offsets(indices, offsets), reference, {want.data(), num_bags, dim, 0});
      }
      for (isa which : available_isas()) {
        if (which == isa::reference) continue;
        for (prefetch_setting prefetch : {prefetch_setting{prefetch_level::none, 0}, prefetch_setting{prefetch_level::l1, 2},
                                          prefetch_setting{prefetch_level::l2, 5}, prefetch_setting{prefetch_level::l2_one_pass, 7}}) {
          for (bool int32 : {false, true}) {
            execution how;
            how.isa = which;
            how.prefetch = prefetch;
            std::vector<float> got = canary_buffer(num_bags, dim);
            const bags batch = int32 ? bags::from_offsets(indices32, offsets32) : bags::from_offsets(indices, offsets);
            const gather_roofline roofline(q.view(), batch, {got.data(), num_bags, dim, 0}, how);
            EXPECT_EQ(roofline.prefetch().level, prefetch.level);
            roofline.run();
            EXPECT_TRUE(same_bits(want, got, num_bags, dim, dim))
                << to_string(which) << " " << to_string(type) << " D=" << dim << (int32 ? " int32" : " int64")
                << (one_index_each ? " one index each" : "")
                << " prefetch level " << static_cast<int>(prefetch.level);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace embag::test
