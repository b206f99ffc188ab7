// `embag forward`, `embag backward`, `embag quantize` and `embag dequantize`, run as a user would (EMBAG_TOOL, set by tests/meson.build)
// on .npy files written with write_npy: their outputs are bit for bit the library's own on the
// same inputs (the tool inherits EMBAG_ISA, so both run on the same ISA), and a failed run exits 2
// with one "embag: " line and leaves no output file created or changed.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "embag/embag.hpp"
#include "embag/npy.hpp"
#include "embag/optim.hpp"
#include "embag/quantize.hpp"
#include "support/temporary_directory.hpp"

namespace embag {
namespace {

struct tool_run {
  int status = -1;
  std::string output;  // stdout and stderr
};

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::getenv("EMBAG_TOOL") == nullptr) GTEST_SKIP() << "EMBAG_TOOL not set (meson sets it)";
    for (std::size_t i = 0; i < weights_.size(); ++i) weights_[i] = static_cast<float>((i * 37) % 23) * 0.125f - 1.3f;
    write_npy(in("w.npy"), npy_dtype::f32, std::vector<std::int64_t>{rows, dim}, weights_.data());
    write_npy(in("i.npy"), npy_dtype::i64, std::vector<std::int64_t>{nnz}, indices_.data());
    write_npy(in("o.npy"), npy_dtype::i32, std::vector<std::int64_t>{4}, offsets_.data());
    write_npy(in("l.npy"), npy_dtype::i32, std::vector<std::int64_t>{4}, lengths_.data());
    write_npy(in("p.npy"), npy_dtype::f32, std::vector<std::int64_t>{nnz}, per_sample_weights_.data());
  }

  std::string in(const std::string& name) const { return dir_.path(name); }

  tool_run embag(const std::string& arguments) const { return shell(tool() + " " + arguments); }
  static std::string tool() { return "'" + std::string(std::getenv("EMBAG_TOOL")) + "'"; }
  // A shell command line run in the test's directory, stdout and stderr together.
  tool_run shell(const std::string& line) const {
    const std::string command = "cd '" + dir_.path() + "' && " + line + " 2>&1";
    tool_run r;
    FILE* p = popen(command.c_str(), "r");
    char buffer[512];
    while (p && fgets(buffer, sizeof buffer, p)) r.output += buffer;
    const int status = p ? pclose(p) : -1;
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
  }

  std::vector<float> floats(const std::string& name) const {
    const npy_array a = npy_array::open(in(name));
    const std::span<const float> v = a.as_floats();
    return {v.begin(), v.end()};
  }
  std::vector<std::int64_t> int64s(const std::string& name) const {
    const npy_array a = npy_array::open(in(name));
    EXPECT_EQ(a.dtype(), npy_dtype::i64);
    const auto* v = static_cast<const std::int64_t*>(a.data());
    return {v, v + a.elements()};
  }
  table_view<const float> table() const { return {weights_.data(), rows, dim, dim}; }
  bags by_offsets(bool weighted = false) const {
    return bags::from_offsets(indices_, offsets_, weighted ? std::span<const float>(per_sample_weights_) : std::span<const float>());
  }

  static constexpr std::int64_t rows = 20, dim = 5, nnz = 9;
  std::vector<float> weights_ = std::vector<float>(rows * dim);
  // bags {3, 7, 7}, {}, {19, 0, 5}, {3, 12, 12}; lengths describe the same bags
  std::vector<std::int64_t> indices_ = {3, 7, 7, 19, 0, 5, 3, 12, 12};
  std::vector<std::int32_t> offsets_ = {0, 3, 3, 6};
  std::vector<std::int32_t> lengths_ = {3, 0, 3, 3};
  std::vector<float> per_sample_weights_ = {0.5f, 2.0f, -1.0f, 1.0f, 0.25f, 3.0f, 1.0f, 1.0f, 0.0f};
  test::temporary_directory dir_;
};

TEST_F(Cli, ForwardMatchesTheLibraryInEveryMode) {
  struct variant {
    std::string flags;
    options opts;
    bool weighted = false;
  };
  std::vector<variant> variants;
  for (mode m : {mode::sum, mode::mean, mode::max, mode::none, mode::sqrtn}) {
    options o;
    o.mode = m;
    const std::string name(to_string(m));
    variants.push_back({std::string("--mode ") + name, o});
    o.padding_idx = -8;  // row 12
    variants.push_back({std::string("--mode ") + name + " --padding-idx -8", o});
    o.padding_idx.reset();
    o.max_norm = 1.5f;
    o.norm_type = 1.0f;
    variants.push_back({std::string("--mode ") + name + " --max-norm 1.5 --norm-type 1 --threads 1", o});
  }
  options weighted;
  weighted.mode = mode::mean;
  variants.push_back({"--mode mean --per-sample-weights p.npy", weighted, true});
  weighted.mode = mode::sqrtn;
  variants.push_back({"--mode sqrtn --per-sample-weights p.npy", weighted, true});

  for (const variant& v : variants) {
    SCOPED_TRACE(v.flags);
    const std::int64_t out_rows = output_rows(by_offsets(), v.opts);
    std::vector<float> want(out_rows * dim);
    forward(table(), by_offsets(v.weighted), v.opts, {want.data(), out_rows, dim});
    for (const std::string bags_flag : {"--offsets o.npy", "--lengths l.npy"}) {
      const tool_run r = embag("forward --weight w.npy --indices i.npy " + bags_flag + " " + v.flags + " --out y.npy");
      ASSERT_EQ(r.status, 0) << r.output;
      EXPECT_EQ(r.output, "");
      EXPECT_EQ(npy_array::open(in("y.npy")).shape(), (std::vector<std::int64_t>{out_rows, dim}));
      EXPECT_EQ(floats("y.npy"), want);
    }
  }
}

// forward-batched: the spec's tables side by side, each column block its own `embag forward`'s
// output; a table the spec gets wrong is named and no output is written.
TEST_F(Cli, ForwardBatchedAsTheSingleCalls) {
  write_embag(in("w.embag"), quantize(table(), dtype::int8_rowwise).view());
  std::ofstream(in("spec.json")) << R"({"tables": [
      {"weight": "w.npy", "indices": "i.npy", "offsets": "o.npy", "mode": "mean", "padding_idx": 7},
      {"weight": "w.embag", "indices": "i.npy", "lengths": "l.npy", "per_sample_weights": "p.npy"}]})";
  const tool_run r = embag("forward-batched --tables spec.json --out y.npy --threads 1");
  ASSERT_EQ(r.status, 0) << r.output;
  ASSERT_EQ(embag("forward --weight w.npy --indices i.npy --offsets o.npy --mode mean --padding-idx 7 --out y0.npy").status, 0);
  const compressed_table int8 = compressed_table::open(in("w.embag"));
  std::vector<float> y1(4 * dim);
  forward(int8.view(), by_offsets(true), {}, {y1.data(), 4, dim});
  const std::vector<float> y = floats("y.npy"), y0 = floats("y0.npy");
  EXPECT_EQ(npy_array::open(in("y.npy")).shape(), (std::vector<std::int64_t>{4, 2 * dim}));
  for (std::int64_t b = 0; b < 4; ++b)
    for (std::int64_t d = 0; d < dim; ++d) {
      EXPECT_EQ(y[b * 2 * dim + d], y0[b * dim + d]) << b << " " << d;
      EXPECT_EQ(y[b * 2 * dim + dim + d], y1[b * dim + d]) << b << " " << d;
    }

  // --out-dtype f16: the f32 output rounded once (the library's fp16 codec, through quantize)
  const tool_run half = embag("forward-batched --tables spec.json --out y16.npy --out-dtype f16");
  ASSERT_EQ(half.status, 0) << half.output;
  const npy_array y16 = npy_array::open(in("y16.npy"));
  ASSERT_EQ(y16.dtype(), npy_dtype::f16);
  ASSERT_EQ(y16.shape(), (std::vector<std::int64_t>{4, 2 * dim}));
  const compressed_table want16 = quantize(table_view<const float>{y.data(), 4, 2 * dim, 2 * dim}, dtype::f16);
  for (std::int64_t b = 0; b < 4; ++b)
    EXPECT_EQ(std::memcmp(static_cast<const std::byte*>(y16.data()) + b * 4 * dim,
                          want16.view().data + b * want16.view().row_stride, std::size_t(4 * dim)),
              0)
        << "row " << b;
  EXPECT_NE(embag("forward-batched --tables spec.json --out z.npy --out-dtype bf16").output.find(".npy has no bf16"),
            std::string::npos);

  std::ofstream(in("typo.json")) << R"({"tables": [{"weight": "w.npy", "indices": "i.npy", "offset": "o.npy"}]})";
  const tool_run typo = embag("forward-batched --tables typo.json --out z.npy");
  EXPECT_NE(typo.status, 0);
  EXPECT_NE(typo.output.find("typo.json: tables[0] has the unknown key 'offset'"), std::string::npos) << typo.output;
  std::ofstream(in("bad.json")) << R"({"tables": [{"weight": "w.npy", "indices": "i.npy", "offsets": "o.npy"},
      {"weight": "w.npy", "indices": "i.npy", "offsets": "o.npy", "padding_idx": 20}]})";
  const tool_run bad = embag("forward-batched --tables bad.json --out z.npy");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.output.find("tables[1]: padding_idx = 20"), std::string::npos) << bad.output;
  EXPECT_NE(embag("forward-batched --tables nothing.json --out z.npy").status, 0);
  EXPECT_FALSE(std::ifstream(in("z.npy")).good()) << "a failed call wrote its output";
}

TEST_F(Cli, IncludeLastOffsetAndIsa) {
  const std::vector<std::int32_t> offsets = {0, 3, 3, 6, 9};
  write_npy(in("o5.npy"), npy_dtype::i32, std::vector<std::int64_t>{5}, offsets.data());
  const tool_run r = embag("forward --weight w.npy --indices i.npy --offsets o5.npy --include-last-offset --isa reference --out y.npy");
  ASSERT_EQ(r.status, 0) << r.output;
  options o;
  o.include_last_offset = true;
  std::vector<float> want(4 * dim);
  forward(table(), bags::from_offsets(indices_, offsets), o, {want.data(), 4, dim});
  EXPECT_EQ(floats("y.npy"), want);
}

TEST_F(Cli, MaxForwardThenBackwardDenseAndSparse) {
  options o;
  o.mode = mode::max;
  std::vector<float> y(4 * dim);
  std::vector<std::int64_t> argmax(4 * dim);
  forward(table(), by_offsets(), o, {y.data(), 4, dim}, argmax);
  ASSERT_EQ(embag("forward --weight w.npy --indices i.npy --offsets o.npy --mode max --out y.npy --argmax-out a.npy").status, 0);
  EXPECT_EQ(floats("y.npy"), y);
  EXPECT_EQ(int64s("a.npy"), argmax);

  // the gradient flowing back is the output itself: any values do
  std::vector<float> dense(rows * dim);
  backward_dense(by_offsets(), o, {y.data(), 4, dim}, {dense.data(), rows, dim}, argmax);
  tool_run r = embag("backward --weight w.npy --indices i.npy --offsets o.npy --mode max --grad-output y.npy "
                     "--argmax a.npy --out dw.npy");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(npy_array::open(in("dw.npy")).shape(), (std::vector<std::int64_t>{rows, dim}));
  EXPECT_EQ(floats("dw.npy"), dense);

  sparse_gradient sparse;
  backward_sparse(rows, by_offsets(), o, {y.data(), 4, dim}, sparse, argmax);
  r = embag("backward --weight w.npy --indices i.npy --offsets o.npy --mode max --grad-output y.npy "
            "--argmax a.npy --sparse --out-rows r.npy --out dws.npy");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(int64s("r.npy"), sparse.rows);
  EXPECT_EQ(floats("dws.npy"), sparse.values);
}

TEST_F(Cli, BackwardWithPerSampleWeightsGradient) {
  options o;  // sum
  std::vector<float> grad(4 * dim);
  for (std::size_t i = 0; i < grad.size(); ++i) grad[i] = static_cast<float>(i % 7) - 2.5f;
  write_npy(in("g.npy"), npy_dtype::f32, std::vector<std::int64_t>{4, dim}, grad.data());
  std::vector<float> dense(rows * dim), weights_grad(nnz);
  backward_dense(by_offsets(true), o, {grad.data(), 4, dim}, {dense.data(), rows, dim});
  per_sample_weights_grad(table(), by_offsets(true), o, {grad.data(), 4, dim}, weights_grad);
  const tool_run r = embag("backward --weight w.npy --indices i.npy --offsets o.npy --per-sample-weights p.npy "
                           "--grad-output g.npy --out dw.npy --per-sample-weights-grad-out pg.npy");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(floats("dw.npy"), dense);
  EXPECT_EQ(floats("pg.npy"), weights_grad);
}

// `embag update`: the library's backward_update on the files, the table and state written whole;
// steps chained through --state; bad calls refused with no output written.
TEST_F(Cli, UpdateIsTheLibrarysStepOnFiles) {
  std::vector<float> grad(4 * dim);
  for (std::size_t i = 0; i < grad.size(); ++i) grad[i] = static_cast<float>(i % 7) - 2.5f;
  write_npy(in("g.npy"), npy_dtype::f32, std::vector<std::int64_t>{4, dim}, grad.data());
  const optimizer opt{.kind = optimizer_kind::adagrad, .learning_rate = 0.25f, .eps = 1e-6f};
  std::vector<float> w = weights_, state(rows * dim, 0.5f);
  for (int step = 0; step < 2; ++step)
    backward_update(table_view<float>{w.data(), rows, dim, 0}, by_offsets(true), {}, {grad.data(), 4, dim}, opt,
                    {state.data(), rows, dim, 0});
  tool_run r = embag("update --weight w.npy --indices i.npy --offsets o.npy --per-sample-weights p.npy --grad-output g.npy "
                     "--optimizer adagrad --lr 0.25 --eps 1e-6 --initial-accumulator-value 0.5 --weight-out w1.npy "
                     "--state-out s1.npy");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output, "embag: adagrad updated 6 rows\n");
  r = embag("update --weight w1.npy --indices i.npy --offsets o.npy --per-sample-weights p.npy --grad-output g.npy "
            "--optimizer adagrad --lr 0.25 --eps 1e-6 --state s1.npy --weight-out w2.npy --state-out s2.npy");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(floats("w2.npy"), w);
  EXPECT_EQ(floats("s2.npy"), state);

  // refused, nothing written: a state of the wrong shape, sgd with a state, one output over an input
  for (const std::string flags :
       {"--optimizer rowwise_adagrad --state s1.npy --state-out s3.npy", "--optimizer sgd --state-out s3.npy",
        "--optimizer adagrad --state s1.npy --state-out w.npy", "--optimizer adam --state-out s3.npy"}) {
    r = embag("update --weight w.npy --indices i.npy --offsets o.npy --grad-output g.npy " + flags + " --weight-out w3.npy");
    EXPECT_EQ(r.status, 2) << flags << ": " << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_FALSE(std::filesystem::exists(in("w3.npy"))) << flags;
    EXPECT_FALSE(std::filesystem::exists(in("s3.npy"))) << flags;
  }
  EXPECT_EQ(floats("w.npy"), weights_);
}

TEST_F(Cli, InPlaceMaxNormWritesTheRenormedCopy) {
  const std::string before = dir_.read("w.npy");
  options o;
  o.max_norm = 1.0f;
  o.max_norm_mode = max_norm_flavour::in_place;
  std::vector<float> renormed = weights_, y(4 * dim);
  forward(table_view<float>{renormed.data(), rows, dim, dim}, by_offsets(), o, {y.data(), 4, dim});
  const tool_run r = embag("forward --weight w.npy --indices i.npy --offsets o.npy --max-norm 1 --max-norm-inplace "
                           "--weight-out w2.npy --out y.npy");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(floats("y.npy"), y);
  EXPECT_EQ(floats("w2.npy"), renormed);
  EXPECT_NE(renormed, weights_) << "the case must renorm some row";
  EXPECT_EQ(dir_.read("w.npy"), before) << "the input table is read-only";
}

// ---------------------------------------------------------------------------------------------
// Failures: exit status 2, one "embag: " line, no output created or changed.

void expect_one_line_error(const tool_run& r, const std::string& fragment) {
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_EQ(r.output.rfind("embag: ", 0), 0u) << r.output;
  ASSERT_FALSE(r.output.empty());
  EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << "one line: " << r.output;
  EXPECT_NE(r.output.find(fragment), std::string::npos) << r.output;
}

TEST_F(Cli, BadIndexNamesItAndWritesNothing) {
  std::vector<std::int64_t> bad = indices_;
  bad[4] = 99;
  write_npy(in("bad.npy"), npy_dtype::i64, std::vector<std::int64_t>{nnz}, bad.data());
  const std::set<std::string> files = dir_.listing();
  expect_one_line_error(embag("forward --weight w.npy --indices bad.npy --offsets o.npy --out y.npy --mode max "
                              "--argmax-out a.npy"),
                        "indices[4] = 99 is out of range [0, 20)");
  EXPECT_EQ(dir_.listing(), files) << "no output file, no temporary file";

  dir_.write("y.npy", "an earlier result");
  expect_one_line_error(embag("forward --weight w.npy --indices bad.npy --offsets o.npy --out y.npy"), "indices[4] = 99");
  EXPECT_EQ(dir_.read("y.npy"), "an earlier result");
  const std::vector<float> grad(4 * dim, 1.0f);
  write_npy(in("g.npy"), npy_dtype::f32, std::vector<std::int64_t>{4, dim}, grad.data());
  expect_one_line_error(embag("backward --weight w.npy --indices bad.npy --offsets o.npy --grad-output g.npy --out y.npy"),
                        "indices[4] = 99");
  EXPECT_EQ(dir_.read("y.npy"), "an earlier result");
}

// --bad-indices skip, --pruned-ids and --remap: the library's output, the report on stderr; the
// same keys in a forward-batched spec, each table's report named.
TEST_F(Cli, IndexPoliciesSkipReportAndRemap) {
  std::vector<std::int64_t> damaged = indices_;
  damaged[4] = 99;
  damaged[7] = -1;
  write_npy(in("d.npy"), npy_dtype::i64, std::vector<std::int64_t>{nnz}, damaged.data());
  index_report report;
  options opts;
  opts.bad_indices = bad_index_policy::skip;
  opts.pruned_ids = true;
  opts.report = &report;
  std::vector<float> want(4 * dim);
  forward(table(), bags::from_offsets(damaged, offsets_), opts, {want.data(), 4, dim});
  const std::string said = "index policies skipped 1 bad indices (the first indices[4] = 99) and 1 pruned\n";
  const tool_run r = embag("forward --weight w.npy --indices d.npy --offsets o.npy --bad-indices skip --pruned-ids --out y.npy");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output, "embag: " + said);
  EXPECT_EQ(floats("y.npy"), want);
  expect_one_line_error(embag("forward --weight w.npy --indices d.npy --offsets o.npy --pruned-ids --out z.npy"),
                        "indices[4] = 99 is out of range [0, 20)");
  expect_one_line_error(embag("forward --weight w.npy --indices d.npy --offsets o.npy --bad-indices drop --out z.npy"),
                        "unknown policy 'drop' (error, skip)");

  // ids 10.. are rows 0..; ids below 10 pruned
  std::vector<std::int64_t> remap(rows + 10, -1), ids = indices_;
  for (std::int64_t r = 0; r < rows; ++r) remap[std::size_t(r + 10)] = r;
  for (std::int64_t& id : ids) id += 10;
  ids[0] = 3;  // pruned
  write_npy(in("m.npy"), npy_dtype::i64, std::vector<std::int64_t>{rows + 10}, remap.data());
  write_npy(in("ids.npy"), npy_dtype::i64, std::vector<std::int64_t>{nnz}, ids.data());
  std::vector<std::int64_t> rows_read = indices_;
  rows_read[0] = 12;  // padding below: the pruned position reads nothing either way
  options padded;
  padded.padding_idx = 12;
  std::vector<float> want_remapped(4 * dim);
  forward(table(), bags::from_offsets(rows_read, offsets_), padded, {want_remapped.data(), 4, dim});
  const tool_run m = embag("forward --weight w.npy --indices ids.npy --offsets o.npy --remap m.npy --padding-idx 12 --out y.npy");
  ASSERT_EQ(m.status, 0) << m.output;
  EXPECT_EQ(m.output, "embag: index policies skipped 0 bad indices and 1 pruned\n");
  EXPECT_EQ(floats("y.npy"), want_remapped);

  std::ofstream(in("spec.json")) << R"({"tables": [
      {"weight": "w.npy", "indices": "ids.npy", "offsets": "o.npy", "remap": "m.npy", "padding_idx": 12},
      {"weight": "w.npy", "indices": "d.npy", "offsets": "o.npy", "bad_indices": "skip", "pruned_ids": true}]})";
  const tool_run b = embag("forward-batched --tables spec.json --out yb.npy");
  ASSERT_EQ(b.status, 0) << b.output;
  EXPECT_EQ(b.output, "embag: tables[0]: index policies skipped 0 bad indices and 1 pruned\nembag: tables[1]: " + said);
  const std::vector<float> yb = floats("yb.npy");
  for (std::int64_t row = 0; row < 4; ++row)
    for (std::int64_t d = 0; d < dim; ++d) {
      EXPECT_EQ(yb[std::size_t(row * 2 * dim + d)], want_remapped[std::size_t(row * dim + d)]);
      EXPECT_EQ(yb[std::size_t(row * 2 * dim + dim + d)], want[std::size_t(row * dim + d)]);
    }
}

TEST_F(Cli, MissingOrMalformedFilesAndBadFlags) {
  dir_.write("junk.npy", "not numpy at all");
  const std::set<std::string> files = dir_.listing();
  expect_one_line_error(embag("forward --weight absent.npy --indices i.npy --offsets o.npy --out y.npy"),
                        "absent.npy: cannot open: No such file or directory");
  expect_one_line_error(embag("forward --weight w.npy --indices junk.npy --offsets o.npy --out y.npy"),
                        "junk.npy: not a .npy file");
  expect_one_line_error(embag("forward --weight i.npy --indices i.npy --offsets o.npy --out y.npy"),
                        "i.npy: expected a 2-D <f4 table");
  expect_one_line_error(embag("forward --weight w.npy --indices i.npy --offsets o.npy --out y.npy --bogus"),
                        "unknown option '--bogus'");
  expect_one_line_error(embag("forward --weight w.npy --indices i.npy --out y.npy"), "exactly one of --offsets and --lengths");
  expect_one_line_error(embag("forward --weight w.npy --indices i.npy --offsets o.npy --out y.npy --mode median"),
                        "forward: --mode: unknown mode 'median' (sum, mean, max, none, sqrtn)");
  expect_one_line_error(embag("forward --weight w.npy --indices i.npy --offsets o.npy --out y.npy --max-norm 1 --max-norm-inplace"),
                        "--max-norm-inplace and --weight-out go together");
  expect_one_line_error(embag("forward --weight w.npy --indices i.npy --offsets o.npy --out y.npy --isa avx1024"),
                        "unknown ISA 'avx1024'");
  expect_one_line_error(embag("forward --weight w.npy --indices i.npy --offsets o.npy --out y.npy --padding-idx 20"),
                        "padding_idx");
  expect_one_line_error(embag("backward --weight w.npy --indices i.npy --offsets o.npy --mode max --grad-output w.npy --out y.npy"),
                        "mode max needs --argmax");
  expect_one_line_error(embag("backward --weight w.npy --indices i.npy --offsets o.npy --grad-output w.npy --out y.npy"),
                        "w.npy: the gradient has 20 rows, forward's output has 4");
  EXPECT_EQ(dir_.listing(), files);
}

// Numbers are read whole and in base 10: CLI11 2.1 alone would read "020" as 16 (octal), "0x10" as
// 16 and an empty value as 0, all of which pass here.
TEST_F(Cli, NumbersAreReadWholeAndInBaseTen) {
  const std::set<std::string> files = dir_.listing();
  const std::string forward = "forward --weight w.npy --indices i.npy --offsets o.npy --out y.npy ";
  expect_one_line_error(embag(forward + "--padding-idx 020"), "padding_idx = 20 is out of range [-20, 20)");
  expect_one_line_error(embag(forward + "--threads 0x10"), "forward: --threads: wants 0 (all) or a positive count, got '0x10'");
  expect_one_line_error(embag(forward + "--threads ''"), "forward: --threads: wants 0 (all) or a positive count, got ''");
  expect_one_line_error(embag(forward + "--max-norm ''"), "forward: --max-norm: wants a number, got ''");
  expect_one_line_error(embag("quantize --in w.npy --to int8 --out t.embag --threads -1"),
                        "quantize: --threads: wants 0 (all) or a positive count, got '-1'");
  EXPECT_EQ(dir_.listing(), files);
}

// An unknown flag is named before the errors it may cause (a flag misspelt is a required flag
// missing); a flag given again overrides its value, except a file flag; --help wins over errors.
TEST_F(Cli, UnknownFlagsRepeatedFlagsAndHelp) {
  const std::set<std::string> files = dir_.listing();
  expect_one_line_error(embag("forward --weight w.npy --indice i.npy --offsets o.npy --out y.npy"),
                        "forward: unknown option '--indice'");
  expect_one_line_error(embag("frobnicate --weight w.npy"), "embag: unknown command 'frobnicate'");
  expect_one_line_error(embag("forward --weight w.npy --weight i.npy --indices i.npy --offsets o.npy --out y.npy"),
                        "forward: --weight: At Most 1 required but received 2");
  EXPECT_EQ(dir_.listing(), files);
  const tool_run overridden = embag("forward --weight w.npy --indices i.npy --offsets o.npy --mode max --mode sum --out y.npy");
  ASSERT_EQ(overridden.status, 0) << overridden.output;
  std::vector<float> sum(4 * dim);
  forward(table(), by_offsets(), options{}, {sum.data(), 4, dim});
  EXPECT_EQ(floats("y.npy"), sum);

  const tool_run help = embag("forward --mode median --help");
  EXPECT_EQ(help.status, 0) << help.output;
  for (const char* flag : {"--weight W.npy REQUIRED", "--offsets O.npy", "--mode MODE", "sum, mean, max, none", "--out Y.npy"})
    EXPECT_NE(help.output.find(flag), std::string::npos) << flag << "\n" << help.output;
  const tool_run quantize_help = embag("quantize --help");
  EXPECT_EQ(quantize_help.status, 0) << quantize_help.output;
  EXPECT_NE(quantize_help.output.find("f32, f16, bf16, int8_rowwise, int4_rowwise; or the short forms fp32, fp16, int8, int4"),
            std::string::npos)
      << quantize_help.output;
  const tool_run tool_help = embag("--help");
  EXPECT_EQ(tool_help.status, 0) << tool_help.output;
  for (const char* command : {"info", "bench", "fuzz", "forward", "backward", "quantize", "dequantize"})
    EXPECT_NE(tool_help.output.find(std::string("\n  ") + command + " "), std::string::npos) << command << "\n" << tool_help.output;
  EXPECT_EQ(embag("").status, 2) << "no command is a usage error";
}

// The last output failing (a missing directory) leaves the first one unwritten too.
TEST_F(Cli, AFailedOutputLeavesNoOtherOutput) {
  expect_one_line_error(embag("forward --weight w.npy --indices i.npy --offsets o.npy --mode max --out y.npy "
                              "--argmax-out missing/a.npy"),
                        "missing/a.npy: cannot write in its directory missing: No such file or directory");
  EXPECT_FALSE(dir_.listing().count("y.npy"));
}

// quantize then dequantize: the .embag file holds the library's own rows, and dequantize gives
// the library's own fp32 values, for every format; an fp16 .npy is read as its exact values.
TEST_F(Cli, QuantizeAndDequantizeMatchTheLibrary) {
  const std::pair<const char*, dtype> formats[] = {{"fp32", dtype::f32}, {"fp16", dtype::f16}, {"bf16", dtype::bf16},
                                                   {"int8", dtype::int8_rowwise}, {"int4", dtype::int4_rowwise}};
  for (const auto& [name, type] : formats) {
    SCOPED_TRACE(name);
    const tool_run q = embag(std::string("quantize --in w.npy --to ") + name + " --out t.embag --threads 2");
    ASSERT_EQ(q.status, 0) << q.output;
    EXPECT_EQ(q.output, "");
    const compressed_table want = quantize(table(), type);
    const compressed_table got = compressed_table::open(in("t.embag"));
    ASSERT_EQ(got.element_type(), type);
    ASSERT_EQ(got.rows(), rows);
    ASSERT_EQ(got.dim(), dim);
    EXPECT_EQ(std::memcmp(got.view().data, want.view().data, static_cast<std::size_t>(rows * want.row_bytes())), 0);

    const tool_run d = embag("dequantize --in t.embag --out back.npy");
    ASSERT_EQ(d.status, 0) << d.output;
    std::vector<float> values(rows * dim);
    dequantize(want.view(), {values.data(), rows, dim, dim});
    EXPECT_EQ(floats("back.npy"), values);
  }

  std::vector<std::uint16_t> halves(rows * dim);
  for (std::size_t i = 0; i < halves.size(); ++i) halves[i] = static_cast<std::uint16_t>(0x3c00 + 37 * i);  // 1.0 up
  write_npy(in("w16.npy"), npy_dtype::f16, std::vector<std::int64_t>{rows, dim}, halves.data());
  ASSERT_EQ(embag("quantize --in w16.npy --to fp16 --out t16.embag").status, 0);
  const compressed_table t16 = compressed_table::open(in("t16.embag"));
  EXPECT_EQ(std::memcmp(t16.view().data, halves.data(), halves.size() * 2), 0) << "fp16 -> fp32 -> fp16 is exact";
}

TEST_F(Cli, QuantizeErrorsWriteNothing) {
  std::vector<float> with_nan = weights_;
  with_nan[2 * dim + 3] = std::numeric_limits<float>::quiet_NaN();
  write_npy(in("nan.npy"), npy_dtype::f32, std::vector<std::int64_t>{rows, dim}, with_nan.data());
  dir_.write("junk.embag", "EMBAGTBL but nothing else");
  const std::set<std::string> files = dir_.listing();
  expect_one_line_error(embag("quantize --in nan.npy --to int8 --out t.embag"), "table[2][3] = nan is not finite");
  expect_one_line_error(embag("quantize --in w.npy --to int3 --out t.embag"),
                        "quantize: --to: unknown dtype 'int3' (f32, f16, bf16, int8_rowwise, int4_rowwise; or the short "
                        "forms fp32, fp16, int8, int4)");
  expect_one_line_error(embag("quantize --in w.npy --out t.embag"), "--to is required");
  expect_one_line_error(embag("quantize --in i.npy --to int4 --out t.embag"), "i.npy: expected a 2-D <f4 table");
  expect_one_line_error(embag("quantize --in absent.npy --to int4 --out t.embag"), "absent.npy: cannot open");
  expect_one_line_error(embag("quantize --in w.npy --to int4 --out no/such/dir/t.embag"), "no/such/dir/t.embag: cannot write in its directory");
  expect_one_line_error(embag("dequantize --in junk.embag --out w2.npy"), "junk.embag: truncated");
  expect_one_line_error(embag("dequantize --in w.npy --out w2.npy"), "w.npy: not an .embag file");
  expect_one_line_error(embag("dequantize --in junk.embag"), "--out is required");
  EXPECT_EQ(dir_.listing(), files) << "no output file, no temporary file";

  dir_.write("t.embag", "an earlier table");
  expect_one_line_error(embag("quantize --in nan.npy --to int4 --out t.embag"), "table[2][3] = nan");
  EXPECT_EQ(dir_.read("t.embag"), "an earlier table");
}

// ---------------------------------------------------------------------------------------------
// A hostile environment around the files: outputs that are directories, FIFOs, devices or links,
// outputs that are the same file as another output or an input, FIFOs as inputs, memory running
// out. Each is refused with one "embag: " line, and no output is created or changed.

struct stat_of {
  explicit stat_of(const std::string& path) { exists = ::lstat(path.c_str(), &st) == 0; }
  bool exists = false;
  struct stat st {};
};

TEST_F(Cli, AnOutputThatCannotBeWrittenLeavesEveryOtherOutputAsItWas) {
  ASSERT_EQ(::mkdir(in("adir").c_str(), 0755), 0);
  const std::set<std::string> files = dir_.listing();
  expect_one_line_error(embag("forward --weight w.npy --indices i.npy --offsets o.npy --mode max --out y.npy --argmax-out adir"),
                        "adir: is a directory, not a regular file");
  EXPECT_EQ(dir_.listing(), files) << "y.npy is not written when --argmax-out cannot be";

  dir_.write("y.npy", "an earlier result");
  dir_.write("r.npy", "earlier rows");
  const std::vector<float> grad(4 * dim, 1.0f);
  write_npy(in("g.npy"), npy_dtype::f32, std::vector<std::int64_t>{4, dim}, grad.data());
  expect_one_line_error(embag("forward --weight w.npy --indices i.npy --offsets o.npy --mode max --out y.npy --argmax-out adir"),
                        "adir: is a directory");
  expect_one_line_error(embag("backward --weight w.npy --indices i.npy --offsets o.npy --grad-output g.npy --sparse "
                              "--out-rows r.npy --out adir"),
                        "adir: is a directory");
  EXPECT_EQ(dir_.read("y.npy"), "an earlier result");
  EXPECT_EQ(dir_.read("r.npy"), "earlier rows");
}

// In a sticky directory (/tmp) a file of another user cannot be replaced: the rename would fail
// after the outputs before it were in place. Run as `nobody` against a root-owned target.
TEST_F(Cli, AnotherUsersFileInAStickyDirectoryIsRefusedBeforeAnyOutputIsWritten) {
  if (::geteuid() != 0 || std::system("command -v setpriv > /dev/null") != 0)
    GTEST_SKIP() << "needs root and setpriv, to run the tool as another user";
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  if (shell("setpriv --reuid=65534 --regid=65534 --clear-groups " + tool() + " info").status != 0)
    GTEST_SKIP() << "nobody cannot run the tool from where it was built (a private build directory)";
  ASSERT_EQ(::mkdir(in("sticky").c_str(), 0755), 0);
  ASSERT_EQ(::chmod(in("sticky").c_str(), 01777), 0);
  dir_.write("sticky/y.npy", "root's result");
  const tool_run r = shell("setpriv --reuid=65534 --regid=65534 --clear-groups " + tool() +
                           " forward --weight w.npy --indices i.npy --offsets o.npy --mode max --out sticky/a_mine.npy "
                           "--argmax-out sticky/y.npy");
  expect_one_line_error(r, "sticky/y.npy: belongs to another user in a sticky directory");
  EXPECT_EQ(dir_.read("sticky/y.npy"), "root's result");
  std::set<std::string> left;
  for (const auto& e : std::filesystem::directory_iterator(in("sticky"))) left.insert(e.path().filename().string());
  EXPECT_EQ(left, std::set<std::string>{"y.npy"}) << "the first output is not written either";
}

TEST_F(Cli, OutputsThatAreTheSameFileAsAnotherOutputOrAnInputAreRefused) {
  const std::vector<float> grad(4 * dim, 1.0f);
  write_npy(in("g.npy"), npy_dtype::f32, std::vector<std::int64_t>{4, dim}, grad.data());
  ASSERT_EQ(::mkdir(in("sub").c_str(), 0755), 0);
  ASSERT_EQ(::symlink("w.npy", in("w_link.npy").c_str()), 0);
  ASSERT_EQ(::link(in("w.npy").c_str(), in("w_hard.npy").c_str()), 0);
  const std::string table_before = dir_.read("w.npy");
  const std::set<std::string> files = dir_.listing();
  const std::string forward = "forward --weight w.npy --indices i.npy --offsets o.npy --mode max ";
  expect_one_line_error(embag(forward + "--out y.npy --argmax-out y.npy"),
                        "y.npy: the output --argmax-out is the same file as the output --out y.npy");
  expect_one_line_error(embag(forward + "--out y.npy --argmax-out ./sub/../y.npy"), "is the same file as the output --out y.npy");
  expect_one_line_error(embag(forward + "--out w.npy"), "w.npy: the output --out is the same file as the input --weight w.npy");
  expect_one_line_error(embag(forward + "--out w_link.npy"), "is the same file as the input --weight w.npy");
  expect_one_line_error(embag(forward + "--out w_hard.npy"), "is the same file as the input --weight w.npy");
  expect_one_line_error(embag(forward + "--out y.npy --argmax-out i.npy"), "the same file as the input --indices i.npy");
  expect_one_line_error(embag("forward --weight w.npy --indices i.npy --offsets o.npy --max-norm 1 --max-norm-inplace "
                              "--weight-out w.npy --out y.npy"),
                        "the output --weight-out is the same file as the input --weight w.npy");
  expect_one_line_error(embag("backward --weight w.npy --indices i.npy --offsets o.npy --grad-output g.npy --sparse "
                              "--out-rows x.npy --out x.npy"),
                        "x.npy: the output --out is the same file as the output --out-rows x.npy");
  expect_one_line_error(embag("backward --weight w.npy --indices i.npy --offsets o.npy --grad-output g.npy --out g.npy"),
                        "the same file as the input --grad-output g.npy");
  expect_one_line_error(embag("quantize --in w.npy --to int8 --out w.npy"), "the output --out is the same file as the input --in w.npy");
  EXPECT_EQ(dir_.listing(), files);
  EXPECT_EQ(dir_.read("w.npy"), table_before);
}

TEST_F(Cli, AFifoAsAnInputIsRefusedWithoutWaitingForAWriter) {
  ASSERT_EQ(::mkfifo(in("fifo.npy").c_str(), 0644), 0);
  // `timeout` turns a hang into a failure (status 124) rather than a stuck suite
  const tool_run r = shell("timeout 10 " + tool() + " forward --weight fifo.npy --indices i.npy --offsets o.npy --out y.npy");
  expect_one_line_error(r, "fifo.npy: a FIFO, not a regular file");
  EXPECT_FALSE(dir_.listing().count("y.npy"));
}

TEST_F(Cli, OutputsThatAreSpecialFilesAreRefusedAndSymbolicLinksAreWrittenThrough) {
  ASSERT_EQ(::mkfifo(in("fifo.npy").c_str(), 0644), 0);
  const std::string forward_y = "forward --weight w.npy --indices i.npy --offsets o.npy ";
  expect_one_line_error(embag(forward_y + "--out fifo.npy"), "fifo.npy: is a FIFO, not a regular file");
  EXPECT_TRUE(S_ISFIFO(stat_of(in("fifo.npy")).st.st_mode)) << "the FIFO is still there";
  if (::geteuid() == 0) {  // a device node like /dev/null, made where replacing it harms nothing
    ASSERT_EQ(::mknod(in("null").c_str(), S_IFCHR | 0666, makedev(1, 3)), 0);
    expect_one_line_error(embag(forward_y + "--out null"), "null: is a character device, not a regular file");
    EXPECT_TRUE(S_ISCHR(stat_of(in("null")).st.st_mode));
  }
  ASSERT_EQ(::symlink("nowhere.npy", in("dangling.npy").c_str()), 0);
  expect_one_line_error(embag(forward_y + "--out dangling.npy"), "dangling.npy: a symbolic link to a missing file");

  // through a link: the link stays, the file it names (in another directory) gets the output
  std::vector<float> want(4 * dim);
  forward(table(), by_offsets(), options{}, {want.data(), 4, dim});
  ASSERT_EQ(::mkdir(in("real").c_str(), 0755), 0);
  dir_.write("real/y.npy", "an earlier result");
  ASSERT_EQ(::symlink("real/y.npy", in("y_link.npy").c_str()), 0);
  const tool_run r = embag(forward_y + "--out y_link.npy");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(S_ISLNK(stat_of(in("y_link.npy")).st.st_mode)) << "the link is kept";
  EXPECT_EQ(floats("real/y.npy"), want);
  std::set<std::string> files = {"w.npy", "i.npy", "o.npy", "l.npy", "p.npy", "fifo.npy", "dangling.npy", "real", "y_link.npy"};
  if (::geteuid() == 0) files.insert("null");
  EXPECT_EQ(dir_.listing(), files) << "no file beside the link";
  std::set<std::string> beside_target;
  for (const auto& e : std::filesystem::directory_iterator(in("real"))) beside_target.insert(e.path().filename().string());
  EXPECT_EQ(beside_target, std::set<std::string>{"y.npy"}) << "no temporary or old copy left beside the target";

  // an existing output keeps its permission bits
  dir_.write("y.npy", "an earlier result");
  ASSERT_EQ(::chmod(in("y.npy").c_str(), 0640), 0);
  ASSERT_EQ(embag(forward_y + "--out y.npy").status, 0);
  EXPECT_EQ(stat_of(in("y.npy")).st.st_mode & 07777, 0640u);
  EXPECT_EQ(floats("y.npy"), want);
}

TEST_F(Cli, OutOfMemoryIsAnErrorNamingWhatWasBeingAllocated) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer reserves terabytes of address space: a ulimit -v cannot apply";
#else
  // 4M indices into a 100k x 16 table: backward's row transpose needs 6 x 32 MB, far past the
  // 150 MB of address space the tool is given (it starts in about 40 MB).
  constexpr std::int64_t big_rows = 100'000, big_nnz = 4'000'000, big_bags = 1000;
  std::vector<float> big_table(big_rows * 16, 0.5f);
  std::vector<std::int64_t> big_indices(big_nnz), big_offsets(big_bags);
  for (std::int64_t j = 0; j < big_nnz; ++j) big_indices[j] = (j * 7919) % big_rows;
  for (std::int64_t b = 0; b < big_bags; ++b) big_offsets[b] = b * (big_nnz / big_bags);
  const std::vector<float> grad(big_bags * 16, 1.0f);
  write_npy(in("bw.npy"), npy_dtype::f32, std::vector<std::int64_t>{big_rows, 16}, big_table.data());
  write_npy(in("bi.npy"), npy_dtype::i64, std::vector<std::int64_t>{big_nnz}, big_indices.data());
  write_npy(in("bo.npy"), npy_dtype::i64, std::vector<std::int64_t>{big_bags}, big_offsets.data());
  write_npy(in("bg.npy"), npy_dtype::f32, std::vector<std::int64_t>{big_bags, 16}, grad.data());
  const std::set<std::string> files = dir_.listing();
  const std::string backward = "backward --weight bw.npy --indices bi.npy --offsets bo.npy --grad-output bg.npy --threads 1 ";
  // on the ISA dispatch picks, whatever the suite forces: the reference's backward differs. The
  // sparse gradient needs the row transpose; the dense sum goes straight from the bags and fits.
  // A soft limit, which is the one enforced: a cross build's tool wrapper (tests/support/cross_tool.sh.in)
  // hands it to the emulated program alone.
  const std::string limited = "ulimit -S -v 150000 && env -u EMBAG_ISA " + tool() + " " + backward;
  expect_one_line_error(shell(limited + "--sparse --out-rows r.npy --out dw.npy"),
                        "out of memory: backward's row transpose of 4000000 indices");
  EXPECT_EQ(dir_.listing(), files);
  const tool_run dense = shell(limited + "--out dw.npy");
  EXPECT_EQ(dense.status, 0) << dense.output;
  EXPECT_EQ(floats("dw.npy").size(), static_cast<std::size_t>(big_rows * 16));
#endif
}

TEST_F(Cli, ArgmaxOfTheRightCountButTheWrongShapeIsRefused) {
  std::vector<std::int64_t> argmax(4 * dim, 0);
  write_npy(in("a.npy"), npy_dtype::i64, std::vector<std::int64_t>{dim, 4}, argmax.data());
  const std::vector<float> grad(4 * dim, 1.0f);
  write_npy(in("g.npy"), npy_dtype::f32, std::vector<std::int64_t>{4, dim}, grad.data());
  expect_one_line_error(embag("backward --weight w.npy --indices i.npy --offsets o.npy --mode max --grad-output g.npy "
                              "--argmax a.npy --out dw.npy"),
                        "a.npy: the argmax must be <i8 of shape (4, 5) (forward's output), as forward's --argmax-out "
                        "writes it; found <i8 array of shape (5, 4)");
}

TEST_F(Cli, ATableWithNoColumnsNamesItsFile) {
  write_npy(in("d0.npy"), npy_dtype::f32, std::vector<std::int64_t>{rows, 0}, weights_.data());
  expect_one_line_error(embag("forward --weight d0.npy --indices i.npy --offsets o.npy --out y.npy"),
                        "d0.npy: a table of shape (20, 0) has no columns");
  expect_one_line_error(embag("quantize --in d0.npy --to int8 --out t.embag"), "d0.npy: a table of shape (20, 0)");
}

TEST_F(Cli, FuzzRefusesSeedsOutOfRange) {
  for (const char* seed : {"-1", "18446744073709551616", "99999999999999999999999", "0x10", ""}) {
    SCOPED_TRACE(seed);
    const tool_run r = embag(std::string("fuzz --cases 1 --seed '") + seed + "'");
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find(std::string("fuzz: --seed: wants an integer from 0 to 2^64 - 1, got '") + seed + "'"),
              std::string::npos)
        << r.output;
  }
  EXPECT_EQ(embag("fuzz --cases 1 --seed 18446744073709551615").status, 0);
}

}  // namespace
}  // namespace embag

namespace embag {
namespace {

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// The suite (here its cache class only, briefly): verified first, one summary line per
// distribution and bag length, then the full table.
TEST_F(Cli, BenchSuiteOpensWithItsSummaryOnEveryIsa) {
  const tool_run r = embag("bench --classes cache --threads 1 --seconds 0.005");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("verified: 40 kernel results match the reference bit for bit"), std::string::npos) << r.output;
  const std::size_t summary = r.output.find("summary, 1 thread"), table = r.output.find("\nthreads: 1 ");
  ASSERT_NE(summary, std::string::npos) << r.output;
  ASSERT_NE(table, std::string::npos) << r.output;
  EXPECT_LT(summary, table);
  for (const char* row : {"cache uniform  40 ", "cache uniform  1 ", "cache zipf     40 ", "cache zipf     1 "})
    EXPECT_EQ(count_of(r.output.substr(summary, table - summary), row), 1u) << row << "\n" << r.output;
  // every fp32 operation and every element type's sum, on four workloads, and the reference's sum
  EXPECT_EQ(count_of(r.output.substr(table), " avx512 ") + count_of(r.output.substr(table), " avx2 ") +
                count_of(r.output.substr(table), " sse2 ") + count_of(r.output.substr(table), " neon "),
            40u)
      << r.output;
  EXPECT_EQ(count_of(r.output.substr(table), " reference "), 4u) << r.output;
}

// The table-batched report: 26 DLRM tables (capped to a few rows here), the batched call checked
// against the single calls, one row per element type and thread count.
TEST_F(Cli, BenchDlrmWorkload) {
  const tool_run r = embag("bench --workload dlrm --scale 0.0002 --bags 64 --threads 1 --seconds 0.002 --json dlrm.json");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("26 tables (MLPerf DLRM-DCNv2), rows capped at 200 "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("verified: the batched call's outputs match the single calls' bit for bit"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("\nfp32  1 "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\nint8  1 "), std::string::npos) << r.output;
  std::ifstream json(in("dlrm.json"));
  const std::string text((std::istreambuf_iterator<char>(json)), std::istreambuf_iterator<char>());
  // batched, single calls, ideal, batched into f16 and bf16: fp32 and int8; backward_sparse_batched: fp32 only
  EXPECT_EQ(count_of(text, "\"name\": \"dlrm/"), 11u) << text;
  EXPECT_EQ(count_of(text, "\"name\": \"dlrm/batched_f16_out/"), 2u) << text;
  const tool_run mixed = embag("bench --workload dlrm --rows 10");
  EXPECT_EQ(mixed.status, 2) << mixed.output;
  EXPECT_NE(mixed.output.find("only --bags applies"), std::string::npos) << mixed.output;
  EXPECT_EQ(embag("bench --workload criteo").status, 2);
}

// A workload option runs that one workload on every ISA; --json writes every result.
TEST_F(Cli, BenchOneWorkloadOnEveryIsaWithJson) {
  const tool_run r = embag("bench --rows 300 --dim 16 --bags 16 --pooling 3 --mode sum,max --dtype fp32,int8 "
                           "--threads 1 --seconds 0.005 --json out.json");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("summary"), std::string::npos) << r.output;
  const std::size_t isas = available_isas().size();
  EXPECT_NE(r.output.find("verified: " + std::to_string(4 * (isas - 1)) + " kernel results"), std::string::npos) << r.output;
  std::ifstream json(in("out.json"));
  const std::string text((std::istreambuf_iterator<char>(json)), std::istreambuf_iterator<char>());
  EXPECT_EQ(count_of(text, "\"name\": \"forward/"), 4 * isas) << text;
  EXPECT_EQ(count_of(text, "R:300/D:16/L:3/uniform/threads:1"), 2 * 4 * isas) << text;  // name and run_name
  // valid JSON, with the fields tools/plot_bench.py and Google Benchmark's readers look for, in order
  const tool_run fields = shell("python3 -c \"import json; d = json.load(open('out.json')); b = d['benchmarks']; "
                                "print(len(b), d['context']['executable'], *d['context'], *b[0])\"");
  EXPECT_EQ(fields.output, std::to_string(4 * isas) +
                               " embag bench executable host_name cpu_model num_cpus caches library_build_type "
                               "embag_version sequential_read_bytes_per_second name run_name run_type iterations "
                               "repetitions real_time cpu_time time_unit bytes_per_second "
                               "f32_equivalent_bytes_per_second speedup_vs_f32 items_per_second roofline_fraction "
                               "roofline_bytes_per_second speedup_vs_reference roofline_prefetch size_class table_bytes\n");
}

TEST_F(Cli, BenchRefusesUnknownClassesAndOptions) {
  tool_run r = embag("bench --classes cache,L4");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("unknown table class 'L4' (cache, LLC, DRAM)"), std::string::npos) << r.output;
  r = embag("bench --frobnicate");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("unknown option '--frobnicate'"), std::string::npos) << r.output;
  // an output it cannot write is refused before minutes of measuring
  r = embag("bench --rows 300 --dim 16 --json missing/out.json");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("missing/out.json: cannot write in its directory"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("verified"), std::string::npos) << r.output;
}

// --mode with optimizers: the training-step report, fused checked against unfused.
TEST_F(Cli, BenchOptimizers) {
  const tool_run r = embag("bench --mode sgd,rowwise_adagrad --rows 500 --dim 16 --bags 32 --pooling 4 --threads 1 "
                           "--seconds 0.002 --json optim.json");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("verified: each fused step leaves the table and state of backward_sparse + "
                          "apply_sparse_gradient, bit for bit"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("\nuniform  1       sgd "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\nuniform  1       rowwise_adagrad "), std::string::npos) << r.output;
  std::ifstream json(in("optim.json"));
  const std::string text((std::istreambuf_iterator<char>(json)), std::istreambuf_iterator<char>());
  EXPECT_EQ(count_of(text, "\"name\": \"optim/fused/"), 2u) << text;
  const tool_run mixed = embag("bench --mode sum,sgd --rows 500");
  EXPECT_EQ(mixed.status, 2) << mixed.output;
  EXPECT_NE(mixed.output.find("optimizers run their own report"), std::string::npos) << mixed.output;
}

}  // namespace
}  // namespace embag
