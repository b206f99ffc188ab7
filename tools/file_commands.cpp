// `embag forward` and `embag backward`: one call of the library on .npy files, e.g. to check embag
// against another framework's dump; `embag quantize` and `embag dequantize`: a .npy table to an
// .embag compressed table and back. Inputs are mapped read-only; every output is computed first
// and then written through a temporary file renamed into place, so an error (a bad flag, file or
// index) leaves no output file created or changed.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "commands.hpp"
#include "embag/embag.hpp"
#include "embag/npy.hpp"
#include "embag/quantize.hpp"

namespace embag::tool {
namespace {

const char* forward_help =
    "usage: embag forward --weight W.npy --indices I.npy (--offsets O.npy | --lengths L.npy)\n"
    "         [--per-sample-weights P.npy] [--mode sum|mean|max|none|sqrtn] [--padding-idx N]\n"
    "         [--include-last-offset] [--max-norm X [--norm-type P] [--max-norm-inplace --weight-out W2.npy]]\n"
    "         [--isa NAME] [--threads N] --out Y.npy [--argmax-out A.npy]\n"
    "  W is a 2-D <f4 table; I, O, L 1-D <i4 or <i8; P 1-D <f4. Y is B x D <f4 (len(I) x D with mode none),\n"
    "  A the B x D <i8 argmax of mode max. --max-norm-inplace renorms a copy of W and writes it to W2.\n";

const char* backward_help =
    "usage: embag backward --weight W.npy --indices I.npy (--offsets O.npy | --lengths L.npy)\n"
    "         [--per-sample-weights P.npy] [--mode sum|mean|max|none|sqrtn] [--padding-idx N]\n"
    "         [--include-last-offset] [--max-norm X [--norm-type P]] [--isa NAME] [--threads N]\n"
    "         --grad-output G.npy [--argmax A.npy] (--out dW.npy | --sparse --out-rows R.npy --out dW.npy)\n"
    "         [--per-sample-weights-grad-out PG.npy]\n"
    "  G is the gradient of forward's output; mode max needs the argmax forward wrote (--argmax-out).\n"
    "  Dense: dW is W's shape, from zero. Sparse: R the sorted unique rows (<i8), dW their gradient rows.\n";

const char* quantize_help =
    "usage: embag quantize --in W.npy --to fp32|fp16|bf16|int8|int4 --out T.embag [--threads N]\n"
    "  W is a 2-D <f4 (or <f2) table. int8 and int4 are FBGEMM's fused rowwise layouts (per row: the\n"
    "  quantised values, then scale and bias); rows with NaN or Inf, or out of the format's range, are errors.\n";

const char* dequantize_help =
    "usage: embag dequantize --in T.embag --out W.npy [--threads N]\n"
    "  W is T's table as a 2-D <f4 array.\n";

struct command_line {
  bool backward = false;
  std::string weight, indices, offsets, lengths, per_sample_weights, out;
  options opts;
  // forward
  bool max_norm_inplace = false;
  std::string weight_out, argmax_out;
  // backward
  bool sparse = false;
  std::string grad_output, argmax, out_rows, per_sample_weights_grad_out;
};

class flag_parser {
 public:
  flag_parser(const char* command, int argc, char** argv) : command_(command), argc_(argc), argv_(argv) {}

  [[noreturn]] void bad(const std::string& message) const {
    throw error(errc::invalid_option, std::string(command_) + ": " + message + " (see embag " + command_ + " --help)");
  }
  bool next() {
    if (++i_ >= argc_) return false;
    flag_ = argv_[i_];
    return true;
  }
  const std::string& flag() const { return flag_; }
  std::string value() {
    if (i_ + 1 >= argc_) bad(flag_ + " needs a value");
    return argv_[++i_];
  }
  void file(std::string& into) {
    if (!into.empty()) bad(flag_ + " is given twice");
    into = value();
    if (into.empty()) bad(flag_ + " needs a file name");
  }
  int threads() {
    const std::int64_t n = integer();
    if (n < 0 || n > std::numeric_limits<int>::max()) bad("--threads wants 0 (all) or a positive count");
    return static_cast<int>(n);
  }
  std::int64_t integer() {
    const std::string text = value();
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno == ERANGE) bad(flag_ + " wants an integer, got '" + text + "'");
    return v;
  }
  float real() {
    const std::string text = value();
    char* end = nullptr;
    const float v = std::strtof(text.c_str(), &end);
    if (text.empty() || *end != '\0') bad(flag_ + " wants a number, got '" + text + "'");
    return v;
  }

 private:
  const char* command_;
  int argc_;
  char** argv_;
  int i_ = -1;
  std::string flag_;
};

mode parse_mode(flag_parser& p) {
  const std::string m = p.value();
  if (const std::optional<mode> named = mode_from_string(m)) return *named;
  p.bad("--mode is sum, mean, max, none or sqrtn, got '" + m + "'");
}

// The flags, and which of them go together; the library checks the values themselves.
command_line parse(bool backward, int argc, char** argv) {
  command_line c;
  c.backward = backward;
  flag_parser p(backward ? "backward" : "forward", argc, argv);
  bool norm_type_given = false;
  while (p.next()) {
    const std::string& f = p.flag();
    if (f == "--weight") p.file(c.weight);
    else if (f == "--indices") p.file(c.indices);
    else if (f == "--offsets") p.file(c.offsets);
    else if (f == "--lengths") p.file(c.lengths);
    else if (f == "--per-sample-weights") p.file(c.per_sample_weights);
    else if (f == "--out") p.file(c.out);
    else if (f == "--mode") c.opts.mode = parse_mode(p);
    else if (f == "--padding-idx") c.opts.padding_idx = p.integer();
    else if (f == "--include-last-offset") c.opts.include_last_offset = true;
    else if (f == "--max-norm") c.opts.max_norm = p.real();
    else if (f == "--norm-type") {
      c.opts.norm_type = p.real();
      norm_type_given = true;
    } else if (f == "--isa") {
      const std::string name = p.value();
      c.opts.execution.isa = isa_from_string(name);
      if (!c.opts.execution.isa) p.bad("unknown ISA '" + name + "' (reference, sse2, avx2, avx512, neon)");
    } else if (f == "--threads") {
      c.opts.execution.max_threads = p.threads();
    } else if (!backward && f == "--max-norm-inplace") c.max_norm_inplace = true;
    else if (!backward && f == "--weight-out") p.file(c.weight_out);
    else if (!backward && f == "--argmax-out") p.file(c.argmax_out);
    else if (backward && f == "--grad-output") p.file(c.grad_output);
    else if (backward && f == "--argmax") p.file(c.argmax);
    else if (backward && f == "--sparse") c.sparse = true;
    else if (backward && f == "--out-rows") p.file(c.out_rows);
    else if (backward && f == "--per-sample-weights-grad-out") p.file(c.per_sample_weights_grad_out);
    else p.bad("unknown option '" + f + "'");
  }
  if (c.weight.empty()) p.bad("--weight is required");
  if (c.indices.empty()) p.bad("--indices is required");
  if (c.offsets.empty() == c.lengths.empty()) p.bad("give exactly one of --offsets and --lengths");
  if (c.out.empty()) p.bad("--out is required");
  if (norm_type_given && !c.opts.max_norm) p.bad("--norm-type needs --max-norm");
  if (c.max_norm_inplace && !c.opts.max_norm) p.bad("--max-norm-inplace needs --max-norm");
  if (c.max_norm_inplace != !c.weight_out.empty())
    p.bad("--max-norm-inplace and --weight-out go together (the input table is mapped read-only: the renormed copy "
          "goes to --weight-out)");
  if (c.max_norm_inplace) c.opts.max_norm_mode = max_norm_flavour::in_place;
  if (backward) {
    if (c.grad_output.empty()) p.bad("--grad-output is required");
    if (c.sparse == c.out_rows.empty()) p.bad("--sparse and --out-rows go together");
    if (c.opts.mode == mode::max && c.argmax.empty()) p.bad("mode max needs --argmax (forward's --argmax-out)");
    if (!c.per_sample_weights_grad_out.empty() && c.per_sample_weights.empty())
      p.bad("--per-sample-weights-grad-out needs --per-sample-weights");
  }
  return c;
}

// The input files, mapped, and the batch of bags viewing them.
struct bag_files {
  npy_array indices, boundaries;
  std::optional<npy_array> weights;
  bags batch;

  explicit bag_files(const command_line& c)
      : indices(npy_array::open(c.indices)), boundaries(npy_array::open(c.offsets.empty() ? c.lengths : c.offsets)) {
    if (!c.per_sample_weights.empty()) weights = npy_array::open(c.per_sample_weights);
    const std::span<const float> w = weights ? weights->as_floats() : std::span<const float>();
    batch = c.offsets.empty() ? bags::from_lengths(indices.as_indices(), boundaries.as_indices(), w)
                              : bags::from_offsets(indices.as_indices(), boundaries.as_indices(), w);
  }
};

// A zero-filled buffer for an output of rows x cols, or an error naming it when it cannot exist.
template <class T>
std::vector<T> zeros(const std::string& name, std::int64_t rows, std::int64_t cols) {
  const std::string what = name + " of " + std::to_string(rows) + " x " + std::to_string(cols) + " elements";
  std::int64_t count = 0;
  if (rows < 0 || cols < 0 || __builtin_mul_overflow(rows, cols, &count) ||
      count > std::numeric_limits<std::int64_t>::max() / static_cast<std::int64_t>(sizeof(T)))
    throw error(errc::size_overflow, what + " overflows the address space");
  try {
    return std::vector<T>(static_cast<std::size_t>(count));
  } catch (const std::bad_alloc&) {
    throw error(errc::out_of_memory, "out of memory: " + what + " (" +
                                         std::to_string(static_cast<std::uint64_t>(count) * sizeof(T)) + " bytes)");
  }
}

// The files of a command, declared before any is opened: an output that cannot be written, or that
// is the same file as another output or an input, fails here, before any work.
output_group declared_files(const std::vector<std::pair<std::string, std::string>>& inputs,
                            const std::vector<std::pair<std::string, std::string>>& outputs) {
  output_group files;
  for (const auto& [flag, path] : inputs)
    if (!path.empty()) files.reads(path, flag);
  for (const auto& [flag, path] : outputs)
    if (!path.empty()) files.writes(path, flag);
  return files;
}

using shape = std::vector<std::int64_t>;


// Every file the command reads, with its flag.
std::vector<std::pair<std::string, std::string>> inputs_of(const command_line& c) {
  return {{"--weight", c.weight},
          {"--indices", c.indices},
          {"--offsets", c.offsets},
          {"--lengths", c.lengths},
          {"--per-sample-weights", c.per_sample_weights},
          {"--grad-output", c.grad_output},
          {"--argmax", c.argmax}};
}

int run_forward(const command_line& c) {
  output_group outputs = declared_files(inputs_of(c), {{"--out", c.out}, {"--argmax-out", c.argmax_out}, {"--weight-out", c.weight_out}});
  const npy_array weight = npy_array::open(c.weight);
  const table_view<const float> table = weight.as_table();
  const bag_files in(c);
  // output_rows is -1 for an empty offsets array with include_last_offset, which the library rejects
  const std::int64_t out_rows = std::max<std::int64_t>(0, output_rows(in.batch, c.opts));
  std::vector<float> out = zeros<float>("the output", out_rows, table.dim);
  std::vector<std::int64_t> argmax = zeros<std::int64_t>("the argmax", c.argmax_out.empty() ? 0 : out_rows, table.dim);
  std::vector<float> renormed;
  const matrix_view<float> out_view{out.data(), out_rows, table.dim};
  if (c.max_norm_inplace) {
    renormed = zeros<float>("the renormed copy of the table", table.rows, table.dim);
    std::copy(table.data, table.data + table.rows * table.dim, renormed.begin());
    forward(table_view<float>{renormed.data(), table.rows, table.dim, table.dim}, in.batch, c.opts, out_view, argmax);
  } else {
    forward(table, in.batch, c.opts, out_view, argmax);
  }
  outputs.stage(c.out, npy_dtype::f32, shape{out_rows, table.dim}, out.data());
  if (!c.argmax_out.empty()) outputs.stage(c.argmax_out, npy_dtype::i64, shape{out_rows, table.dim}, argmax.data());
  if (c.max_norm_inplace) outputs.stage(c.weight_out, npy_dtype::f32, shape{table.rows, table.dim}, renormed.data());
  outputs.commit();
  return 0;
}

int run_backward(const command_line& c) {
  output_group outputs = declared_files(inputs_of(c), {{"--out-rows", c.out_rows}, {"--out", c.out},
                                                       {"--per-sample-weights-grad-out", c.per_sample_weights_grad_out}});
  const npy_array weight = npy_array::open(c.weight);
  const table_view<const float> table = weight.as_table();
  const bag_files in(c);
  const npy_array grad_file = npy_array::open(c.grad_output);
  const table_view<const float> grad = grad_file.as_table();
  // the library accepts a taller gradient (a slice of a larger buffer); a file is the whole gradient
  const std::int64_t out_rows = std::max<std::int64_t>(0, output_rows(in.batch, c.opts));
  if (grad.rows != out_rows)
    throw error(errc::size_mismatch, c.grad_output + ": the gradient has " + std::to_string(grad.rows) +
                                         " rows, forward's output has " + std::to_string(out_rows));
  const matrix_view<const float> grad_output{grad.data, grad.rows, grad.dim};
  std::optional<npy_array> argmax_file;
  std::span<const std::int64_t> argmax;
  if (!c.argmax.empty()) {
    argmax_file = npy_array::open(c.argmax);
    if (argmax_file->dtype() != npy_dtype::i64 || argmax_file->shape() != shape{out_rows, table.dim})
      throw error(errc::bad_file, c.argmax + ": the argmax must be <i8 of shape (" + std::to_string(out_rows) + ", " +
                                      std::to_string(table.dim) + ") (forward's output), as forward's --argmax-out " +
                                      "writes it; found " + argmax_file->describe());
    argmax = {static_cast<const std::int64_t*>(argmax_file->data()), static_cast<std::size_t>(argmax_file->elements())};
  }

  std::vector<float> dense;
  sparse_gradient sparse;
  if (c.sparse) {
    backward_sparse(table.rows, in.batch, c.opts, grad_output, sparse, argmax);
  } else {
    dense = zeros<float>("the table gradient", table.rows, table.dim);
    backward_dense(in.batch, c.opts, grad_output, {dense.data(), table.rows, table.dim}, argmax);
  }
  std::vector<float> weights_grad;
  if (!c.per_sample_weights_grad_out.empty()) {
    weights_grad = zeros<float>("the per-sample-weights gradient", 1, in.batch.indices.size);
    per_sample_weights_grad(table, in.batch, c.opts, grad_output, weights_grad);
  }
  if (c.sparse) {
    const auto unique_rows = static_cast<std::int64_t>(sparse.rows.size());
    outputs.stage(c.out_rows, npy_dtype::i64, shape{unique_rows}, sparse.rows.data());
    outputs.stage(c.out, npy_dtype::f32, shape{unique_rows, table.dim}, sparse.values.data());
  } else {
    outputs.stage(c.out, npy_dtype::f32, shape{table.rows, table.dim}, dense.data());
  }
  if (!c.per_sample_weights_grad_out.empty())
    outputs.stage(c.per_sample_weights_grad_out, npy_dtype::f32, shape{in.batch.indices.size}, weights_grad.data());
  outputs.commit();
  return 0;
}

bool wants_help(int argc, char** argv) {
  for (int i = 0; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") return true;
  return false;
}

// The flags of quantize (with --to) and dequantize.
struct conversion_line {
  std::string in, out;
  std::optional<dtype> to;
  execution how;
};

conversion_line parse_conversion(bool quantizing, int argc, char** argv) {
  conversion_line c;
  flag_parser p(quantizing ? "quantize" : "dequantize", argc, argv);
  while (p.next()) {
    const std::string& f = p.flag();
    if (f == "--in") p.file(c.in);
    else if (f == "--out") p.file(c.out);
    else if (f == "--threads") c.how.max_threads = p.threads();
    else if (quantizing && f == "--to") {
      const std::string name = p.value();
      c.to = dtype_from_string(name);
      if (!c.to) p.bad("--to is fp32, fp16, bf16, int8 or int4, got '" + name + "'");
    } else p.bad("unknown option '" + f + "'");
  }
  if (c.in.empty()) p.bad("--in is required");
  if (c.out.empty()) p.bad("--out is required");
  if (quantizing && !c.to) p.bad("--to is required");
  return c;
}

int run_quantize(const conversion_line& c) {
  output_group outputs = declared_files({{"--in", c.in}}, {{"--out", c.out}});
  const npy_array weight = npy_array::open(c.in);
  if (weight.dtype() != npy_dtype::f16) {
    stage_embag(outputs, c.out, quantize(weight.as_table(), *c.to, c.how).view());
    outputs.commit();
    return 0;
  }
  // an fp16 table is widened first (exactly), through its view as a compressed f16 table
  if (weight.shape().size() != 2)
    throw error(errc::bad_file, c.in + ": expected a 2-D <f4 or <f2 table, found " + std::to_string(weight.shape().size()) + "-D");
  const compressed_table_view halves{static_cast<const std::byte*>(weight.data()), weight.shape()[0], weight.shape()[1], 0,
                                     dtype::f16};
  table widened(halves.rows, halves.dim);
  dequantize(halves, widened.view(), c.how);
  stage_embag(outputs, c.out, quantize(std::as_const(widened).view(), *c.to, c.how).view());
  outputs.commit();
  return 0;
}

int run_dequantize(const conversion_line& c) {
  output_group outputs = declared_files({{"--in", c.in}}, {{"--out", c.out}});
  const compressed_table in = compressed_table::open(c.in);
  std::vector<float> out = zeros<float>("the table", in.rows(), in.dim());
  dequantize(in.view(), {out.data(), in.rows(), in.dim(), in.dim()}, c.how);
  outputs.stage(c.out, npy_dtype::f32, shape{in.rows(), in.dim()}, out.data());
  outputs.commit();
  return 0;
}

}  // namespace

int quantize_command(int argc, char** argv) {
  if (wants_help(argc, argv)) return std::fputs(quantize_help, stdout), 0;
  return run_quantize(parse_conversion(true, argc, argv));
}

int dequantize_command(int argc, char** argv) {
  if (wants_help(argc, argv)) return std::fputs(dequantize_help, stdout), 0;
  return run_dequantize(parse_conversion(false, argc, argv));
}

int forward_command(int argc, char** argv) {
  if (wants_help(argc, argv)) return std::fputs(forward_help, stdout), 0;
  return run_forward(parse(false, argc, argv));
}

int backward_command(int argc, char** argv) {
  if (wants_help(argc, argv)) return std::fputs(backward_help, stdout), 0;
  return run_backward(parse(true, argc, argv));
}

}  // namespace embag::tool
