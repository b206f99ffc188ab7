// `embag forward`, `embag backward` and `embag update`: one call of the library on .npy files, e.g.
// to check embag against another framework's dump, or to train a table file a step; `embag quantize` and `embag dequantize`: a .npy table to an
// .embag compressed table and back. Inputs are mapped read-only; every output is computed first
// and then written through a temporary file renamed into place, so an error (a bad flag, file or
// index) leaves no output file created or changed.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <iostream>
#include <fstream>
#include <sstream>

#include "commands.hpp"
#include "flags.hpp"
#include "embag/batched.hpp"
#include "embag/embag.hpp"
#include "embag/npy.hpp"
#include "embag/optim.hpp"
#include "embag/quantize.hpp"

namespace embag::tool {
namespace {

struct command_line {
  std::string weight, indices, offsets, lengths, per_sample_weights, remap, out;
  options opts;
  // forward
  bool max_norm_inplace = false;
  std::string weight_out, argmax_out;
  // backward
  bool sparse = false;
  std::string grad_output, argmax, out_rows, per_sample_weights_grad_out;
  // update (weight_out too)
  optimizer opt;
  std::string state, state_out;
  float initial_accumulator = 0.0f;
};

// The flags forward and backward share: the table, the bags, the options, how to run. The library
// checks their values; CLI11 and the callbacks below, which of them go together.
void add_call_flags(CLI::App& command, command_line& c) {
  add_file(command, "--weight", c.weight, "W.npy", "the table: a 2-D <f4 array")->required();
  add_file(command, "--indices", c.indices, "I.npy", "the indices: 1-D <i4 or <i8")->required();
  add_file(command, "--offsets", c.offsets, "O.npy", "where each bag starts in I: 1-D <i4 or <i8");
  add_file(command, "--lengths", c.lengths, "L.npy", "each bag's length, instead of --offsets: 1-D <i4 or <i8");
  add_file(command, "--per-sample-weights", c.per_sample_weights, "P.npy", "a weight per index: 1-D <f4");
  // add_option_function: CLI11 2.1's add_option on a variable shows its default with to_string, and
  // finds embag::to_string, whose string_view it cannot take
  command
      .add_option_function<mode>("--mode", [&c](mode m) { c.opts.mode = m; },
                                 "the reduction, of " + mode_names + " (none: one row per index; default sum)")
      ->type_name("MODE")
      ->transform(name_of("mode", mode_from_string, mode_names));
  command.add_option("--padding-idx", c.opts.padding_idx, "rows of this index are skipped (negative: from the end)")
      ->type_name("N")
      ->transform(number<std::int64_t>("an integer"));
  command.add_flag("--include-last-offset", c.opts.include_last_offset, "O has one more entry, the last len(I)");
  CLI::Option* max_norm = command.add_option("--max-norm", c.opts.max_norm, "rescale the rows whose norm exceeds X")
                              ->type_name("X")
                              ->transform(number<float>("a number"));
  command.add_option("--norm-type", c.opts.norm_type, "the p of --max-norm's p-norm (default 2, inf allowed)")
      ->type_name("P")
      ->transform(number<float>("a number"))
      ->needs(max_norm);
  command.add_option("--isa", c.opts.execution.isa, "this instruction set, of " + isa_names + " (default: the best)")
      ->type_name("ISA")
      ->transform(name_of("ISA", isa_from_string, isa_names));
  add_threads(command, c.opts.execution.max_threads);
  command
      .add_option_function<bad_index_policy>("--bad-indices", [&c](bad_index_policy p) { c.opts.bad_indices = p; },
                                             "an index outside W: error (the default) or skip (reported on stderr)")
      ->type_name("POLICY")
      ->transform(name_of("policy", bad_index_policy_from_string, names_of(all_bad_index_policies)));
  command.add_flag("--pruned-ids", c.opts.pruned_ids, "index -1 is a pruned row: skipped like padding");
  add_file(command, "--remap", c.remap, "M.npy", "ids to rows of W (-1: pruned), for a pruned table: 1-D <i4 or <i8");
}

void check_bags(const command_line& c) {
  if (c.offsets.empty() == c.lengths.empty()) throw CLI::ValidationError("give exactly one of --offsets and --lengths");
}

// The input files, mapped, and the batch of bags viewing them.
struct bag_files {
  npy_array indices, boundaries;
  std::optional<npy_array> weights, remap;
  bags batch;
  options opts;          // the command line's, with the remap file and the report
  index_report report;  // what the index policies skipped

  explicit bag_files(const command_line& c)
      : indices(npy_array::open(c.indices)), boundaries(npy_array::open(c.offsets.empty() ? c.lengths : c.offsets)),
        opts(c.opts) {
    if (!c.per_sample_weights.empty()) weights = npy_array::open(c.per_sample_weights);
    const std::span<const float> w = weights ? weights->as_floats() : std::span<const float>();
    batch = c.offsets.empty() ? bags::from_lengths(indices.as_indices(), boundaries.as_indices(), w)
                              : bags::from_offsets(indices.as_indices(), boundaries.as_indices(), w);
    if (!c.remap.empty()) opts.remap = remap.emplace(npy_array::open(c.remap)).as_indices();
    opts.report = &report;
  }
  bag_files(const bag_files&) = delete;  // opts points at its own report

  // The report on stderr, `who` naming the call, when an index policy was asked for.
  void print_report(const std::string& who) const {
    if (opts.bad_indices == bad_index_policy::error && !opts.pruned_ids && !remap) return;
    std::cerr << "embag: " << who << "index policies skipped " << report.skipped << " bad indices";
    if (report.skipped > 0)
      std::cerr << " (the first indices[" << report.first_position << "] = " << report.first_value << ")";
    std::cerr << " and " << report.pruned << " pruned\n";
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
          {"--remap", c.remap},
          {"--grad-output", c.grad_output},
          {"--argmax", c.argmax}};
}

// --grad-output's rows: the library accepts a taller gradient (a slice of a larger buffer); a file
// is the whole gradient, one row per output row.
table_view<const float> whole_gradient(const command_line& c, const npy_array& file, const bag_files& in) {
  const table_view<const float> grad = file.as_table();
  const std::int64_t out_rows = std::max<std::int64_t>(0, output_rows(in.batch, in.opts));
  if (grad.rows != out_rows)
    throw error(errc::size_mismatch, c.grad_output + ": the gradient has " + std::to_string(grad.rows) +
                                         " rows, forward's output has " + std::to_string(out_rows));
  return grad;
}

// --argmax, mapped into `file`, as forward's --argmax-out wrote it; empty without the flag.
std::span<const std::int64_t> argmax_of(const command_line& c, std::int64_t out_rows, std::int64_t dim,
                                        std::optional<npy_array>& file) {
  if (c.argmax.empty()) return {};
  file = npy_array::open(c.argmax);
  if (file->dtype() != npy_dtype::i64 || file->shape() != shape{out_rows, dim})
    throw error(errc::bad_file, c.argmax + ": the argmax must be <i8 of shape (" + std::to_string(out_rows) + ", " +
                                    std::to_string(dim) + ") (forward's output), as forward's --argmax-out " +
                                    "writes it; found " + file->describe());
  return {static_cast<const std::int64_t*>(file->data()), static_cast<std::size_t>(file->elements())};
}

int run_forward(const command_line& c) {
  output_group outputs = declared_files(inputs_of(c), {{"--out", c.out}, {"--argmax-out", c.argmax_out}, {"--weight-out", c.weight_out}});
  const npy_array weight = npy_array::open(c.weight);
  const table_view<const float> table = weight.as_table();
  const bag_files in(c);
  // output_rows is -1 for an empty offsets array with include_last_offset, which the library rejects
  const std::int64_t out_rows = std::max<std::int64_t>(0, output_rows(in.batch, in.opts));
  std::vector<float> out = zeros<float>("the output", out_rows, table.dim);
  std::vector<std::int64_t> argmax = zeros<std::int64_t>("the argmax", c.argmax_out.empty() ? 0 : out_rows, table.dim);
  std::vector<float> renormed;
  const matrix_view<float> out_view{out.data(), out_rows, table.dim};
  if (c.max_norm_inplace) {
    renormed = zeros<float>("the renormed copy of the table", table.rows, table.dim);
    std::copy(table.data, table.data + table.rows * table.dim, renormed.begin());
    forward(table_view<float>{renormed.data(), table.rows, table.dim, table.dim}, in.batch, in.opts, out_view, argmax);
  } else {
    forward(table, in.batch, in.opts, out_view, argmax);
  }
  in.print_report("");
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
  const table_view<const float> grad = whole_gradient(c, grad_file, in);
  const std::int64_t out_rows = grad.rows;
  const matrix_view<const float> grad_output{grad.data, grad.rows, grad.dim};
  std::optional<npy_array> argmax_file;
  const std::span<const std::int64_t> argmax = argmax_of(c, out_rows, table.dim, argmax_file);

  std::vector<float> dense;
  sparse_gradient sparse;
  if (c.sparse) {
    backward_sparse(table.rows, in.batch, in.opts, grad_output, sparse, argmax);
  } else {
    dense = zeros<float>("the table gradient", table.rows, table.dim);
    backward_dense(in.batch, in.opts, grad_output, {dense.data(), table.rows, table.dim}, argmax);
  }
  std::vector<float> weights_grad;
  if (!c.per_sample_weights_grad_out.empty()) {
    weights_grad = zeros<float>("the per-sample-weights gradient", 1, in.batch.indices.size);
    per_sample_weights_grad(table, in.batch, in.opts, grad_output, weights_grad);
  }
  in.print_report("");
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

// One training step on files: the table (<f4 or <f2) and the optimizer's state (<f4; absent:
// every accumulator at --initial-accumulator-value) read, updated in memory, written to
// --weight-out and --state-out together or not at all.
int run_update(const command_line& c) {
  const bool stateful = c.opt.kind != optimizer_kind::sgd;
  output_group outputs = declared_files(inputs_of(c), {{"--weight-out", c.weight_out}, {"--state-out", c.state_out}});
  if (!c.state.empty()) outputs.reads(c.state, "--state");
  const npy_array weight = npy_array::open(c.weight);
  if (weight.dtype() != npy_dtype::f32 && weight.dtype() != npy_dtype::f16)
    throw error(errc::bad_file, c.weight + ": an optimizer trains tables of <f4 or <f2; found " + weight.describe());
  if (weight.shape().size() != 2)
    throw error(errc::bad_file, c.weight + ": the table must be 2-D; found " + weight.describe());
  const std::int64_t rows = weight.shape()[0], dim = weight.shape()[1];
  const bool half = weight.dtype() == npy_dtype::f16;
  std::vector<std::uint16_t> halves = zeros<std::uint16_t>("the updated table", half ? rows : 0, dim);
  std::vector<float> floats = zeros<float>("the updated table", half ? 0 : rows, dim);
  if (half) std::copy_n(static_cast<const std::uint16_t*>(weight.data()), halves.size(), halves.begin());
  else std::copy_n(static_cast<const float*>(weight.data()), floats.size(), floats.begin());
  const trainable_table_view trained{half ? static_cast<void*>(halves.data()) : static_cast<void*>(floats.data()), rows,
                                     dim, dim, half ? dtype::f16 : dtype::f32};

  const std::int64_t state_cols = c.opt.kind == optimizer_kind::adagrad ? dim : 1;
  std::vector<float> state = zeros<float>("the optimizer state", stateful ? rows : 0, state_cols);
  if (stateful && c.state.empty()) std::fill(state.begin(), state.end(), c.initial_accumulator);
  if (!c.state.empty()) {
    const npy_array given = npy_array::open(c.state);
    const shape expected = c.opt.kind == optimizer_kind::adagrad ? shape{rows, dim} : shape{rows};
    if (given.dtype() != npy_dtype::f32 || given.shape() != expected)
      throw error(errc::bad_file, c.state + ": " + std::string(to_string(c.opt.kind)) + "'s state is <f4 of shape (" +
                                      std::to_string(rows) + (expected.size() == 2 ? ", " + std::to_string(dim) : ",") +
                                      "), as --state-out writes it; found " + given.describe());
    std::copy_n(given.as_floats().data(), state.size(), state.begin());
  }

  const bag_files in(c);
  const npy_array grad_file = npy_array::open(c.grad_output);
  const table_view<const float> grad = whole_gradient(c, grad_file, in);
  std::optional<npy_array> argmax_file;
  const std::span<const std::int64_t> argmax = argmax_of(c, grad.rows, dim, argmax_file);
  const update_summary summary =
      backward_update(trained, in.batch, in.opts, {grad.data, grad.rows, grad.dim}, c.opt,
                      stateful ? optimizer_state{state.data(), rows, state_cols, state_cols} : optimizer_state{}, argmax);
  in.print_report("");
  std::cerr << "embag: " << to_string(c.opt.kind) << " updated " << summary.rows_updated << " rows";
  if (summary.rows_not_finite > 0)
    std::cerr << "; left " << summary.rows_not_finite << " rows as they were, their update not finite (the first row "
              << summary.first_not_finite_row << ")";
  std::cerr << "\n";
  if (half) outputs.stage(c.weight_out, npy_dtype::f16, shape{rows, dim}, halves.data());
  else outputs.stage(c.weight_out, npy_dtype::f32, shape{rows, dim}, floats.data());
  if (stateful)
    outputs.stage(c.state_out, npy_dtype::f32, c.opt.kind == optimizer_kind::adagrad ? shape{rows, dim} : shape{rows},
                  state.data());
  outputs.commit();
  return 0;
}

// The flags of quantize (with --to) and dequantize.
struct conversion_line {
  std::string in, out;
  dtype to = dtype::f32;
  execution how;
};

int run_quantize(const conversion_line& c) {
  output_group outputs = declared_files({{"--in", c.in}}, {{"--out", c.out}});
  const npy_array weight = npy_array::open(c.in);
  if (weight.dtype() != npy_dtype::f16) {
    stage_embag(outputs, c.out, quantize(weight.as_table(), c.to, c.how).view());
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
  stage_embag(outputs, c.out, quantize(std::as_const(widened).view(), c.to, c.how).view());
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

// `embag forward --tables spec.json`: many tables in one forward_batched call, side by side in
// one B x sum(D) output. The spec lists the tables, each an object of the flags' names (paths
// relative to the spec's folder): {"tables": [{"weight": "W0.npy", "indices": "I0.npy",
// "offsets": "O0.npy", "mode": "mean", "padding_idx": 0}, {"weight": "T1.embag", ...}]}.
struct batched_line {
  std::string tables, out;
  execution how;
  dtype out_type = dtype::f32;  // f32 or f16 (.npy has no bf16)
};

// One table of the spec: its files, mapped, and its lookup.
struct spec_table {
  std::optional<npy_array> weight_npy;
  std::optional<compressed_table> weight_embag;
  std::optional<bag_files> files;
  table_lookup lookup;
};

// What a spec's table says, its paths made relative to the spec's folder. A key it does not know
// (a typo of "offsets", say) is an error naming it, not a default.
command_line table_of_spec(const nlohmann::json& entry, const std::string& name, const std::filesystem::path& folder) {
  if (!entry.is_object()) throw error(errc::bad_file, name + " is not an object");
  command_line c;
  const auto text = [&](const std::string& key) {
    if (!entry[key].is_string()) throw error(errc::bad_file, name + "." + key + " is not a string");
    return entry[key].get<std::string>();
  };
  const auto path = [&](const std::string& key) { return (folder / text(key)).string(); };
  for (const auto& [key, value] : entry.items()) {
    if (key == "weight") c.weight = path(key);
    else if (key == "indices") c.indices = path(key);
    else if (key == "offsets") c.offsets = path(key);
    else if (key == "lengths") c.lengths = path(key);
    else if (key == "per_sample_weights") c.per_sample_weights = path(key);
    else if (key == "mode") {
      const std::optional<mode> m = mode_from_string(text(key));
      if (!m) throw error(errc::bad_file, name + ".mode = '" + text(key) + "' is not one of " + mode_names);
      c.opts.mode = *m;
    } else if (key == "padding_idx") {
      if (!value.is_number_integer()) throw error(errc::bad_file, name + ".padding_idx is not an integer");
      c.opts.padding_idx = value.get<std::int64_t>();
    } else if (key == "include_last_offset" || key == "pruned_ids") {
      if (!value.is_boolean()) throw error(errc::bad_file, name + "." + key + " is not true or false");
      (key == "pruned_ids" ? c.opts.pruned_ids : c.opts.include_last_offset) = value.get<bool>();
    } else if (key == "bad_indices") {
      const std::optional<bad_index_policy> p = bad_index_policy_from_string(text(key));
      if (!p) throw error(errc::bad_file, name + ".bad_indices = '" + text(key) + "' is not one of " +
                                              names_of(all_bad_index_policies));
      c.opts.bad_indices = *p;
    } else if (key == "remap") {
      c.remap = path(key);
    } else {
      throw error(errc::bad_file, name + " has the unknown key '" + key + "'");
    }
  }
  if (c.weight.empty() || c.indices.empty()) throw error(errc::bad_file, name + " needs \"weight\" and \"indices\"");
  if (c.offsets.empty() == c.lengths.empty())
    throw error(errc::bad_file, name + " needs exactly one of \"offsets\" and \"lengths\"");
  return c;
}

int run_forward_batched(const batched_line& b) {
  std::ifstream in(b.tables);
  if (!in) throw error(errc::io_error, "cannot read " + b.tables);
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json spec;
  try {
    spec = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    throw error(errc::bad_file, b.tables + ": not JSON: " + e.what());
  }
  if (!spec.is_object() || !spec["tables"].is_array() || spec["tables"].empty())
    throw error(errc::bad_file, b.tables + ": needs {\"tables\": [...]}, one object per table");
  const std::filesystem::path folder = std::filesystem::path(b.tables).parent_path();
  std::vector<command_line> lines;
  for (std::size_t t = 0; t < spec["tables"].size(); ++t)
    lines.push_back(table_of_spec(spec["tables"][t], b.tables + ": tables[" + std::to_string(t) + "]", folder));
  std::vector<std::pair<std::string, std::string>> inputs{{"--tables", b.tables}};
  for (const command_line& c : lines)
    for (const auto& input : inputs_of(c)) inputs.push_back(input);
  output_group outputs = declared_files(inputs, {{"--out", b.out}});

  std::vector<spec_table> tables(lines.size());
  std::vector<table_lookup> lookups;
  std::int64_t cols = 0, rows = -1;
  for (std::size_t t = 0; t < lines.size(); ++t) {
    spec_table& s = tables[t];
    const std::string& weight = lines[t].weight;
    compressed_table_view view;
    if (weight.size() >= 6 && weight.compare(weight.size() - 6, 6, ".embag") == 0) {
      view = s.weight_embag.emplace(compressed_table::open(weight)).view();
    } else {
      const table_view<const float> f = s.weight_npy.emplace(npy_array::open(weight)).as_table();
      view = {reinterpret_cast<const std::byte*>(f.data), f.rows, f.dim, f.row_stride * 4, dtype::f32};
    }
    const bag_files& files = s.files.emplace(lines[t]);
    const std::int64_t table_rows = std::max<std::int64_t>(0, output_rows(files.batch, files.opts));
    if (rows >= 0 && table_rows != rows)
      throw error(errc::size_mismatch, "tables[" + std::to_string(t) + "] has " + std::to_string(table_rows) +
                                           " output rows, tables[0] " + std::to_string(rows) +
                                           ": side by side, every table needs as many");
    rows = table_rows;
    cols += view.dim;
    lookups.push_back({view, files.batch, files.opts, {}});
  }
  const bool halves = b.out_type == dtype::f16;
  std::vector<float> out = zeros<float>("the output", halves ? 0 : rows, cols);
  std::vector<std::uint16_t> out16 = zeros<std::uint16_t>("the output", halves ? rows : 0, cols);
  concatenate_outputs(lookups, halves ? output_view{out16.data(), rows, cols, cols, dtype::f16}
                                      : output_view{out.data(), rows, cols, cols});
  forward_batched(lookups, b.how);
  for (std::size_t t = 0; t < tables.size(); ++t) tables[t].files->print_report("tables[" + std::to_string(t) + "]: ");
  if (halves) outputs.stage(b.out, npy_dtype::f16, shape{rows, cols}, out16.data());
  else outputs.stage(b.out, npy_dtype::f32, shape{rows, cols}, out.data());
  outputs.commit();
  return 0;
}

void add_forward_command(CLI::App& tool, command_run& run) {
  const auto c = std::make_shared<command_line>();
  CLI::App& forward = *tool.add_subcommand("forward", "One forward call of the library on .npy files.");
  add_call_flags(forward, *c);
  forward.add_flag("--max-norm-inplace", c->max_norm_inplace, "renorm W's rows as torch does, in a copy: --weight-out")
      ->needs("--max-norm");
  add_file(forward, "--weight-out", c->weight_out, "W2.npy", "the renormed copy of W that --max-norm-inplace writes");
  add_file(forward, "--out", c->out, "Y.npy", "the output: B x D <f4 (len(I) x D with mode none)")->required();
  add_file(forward, "--argmax-out", c->argmax_out, "A.npy", "mode max's argmax: B x D <i8, for backward's --argmax");
  forward.callback([c, &run] {
    check_bags(*c);
    if (c->max_norm_inplace != !c->weight_out.empty())
      throw CLI::ValidationError("--max-norm-inplace and --weight-out go together (the input table is mapped read-only: "
                                 "the renormed copy goes to --weight-out)");
    if (c->max_norm_inplace) c->opts.max_norm_mode = max_norm_flavour::in_place;
    run = [c] { return run_forward(*c); };
  });
}

void add_backward_command(CLI::App& tool, command_run& run) {
  const auto c = std::make_shared<command_line>();
  CLI::App& backward = *tool.add_subcommand("backward", "The gradient of one forward call, on .npy files.");
  backward.footer("Dense: dW is W's shape, from zero. Sparse: R the sorted unique rows, dW their gradient rows.");
  add_call_flags(backward, *c);
  add_file(backward, "--grad-output", c->grad_output, "G.npy", "the gradient of forward's output, its shape")->required();
  add_file(backward, "--argmax", c->argmax, "A.npy", "the argmax forward wrote (--argmax-out): mode max needs it");
  backward.add_flag("--sparse", c->sparse, "the sparse gradient: --out-rows R.npy and --out dW.npy");
  add_file(backward, "--out-rows", c->out_rows, "R.npy", "the sparse gradient's rows: sorted, unique, <i8");
  add_file(backward, "--out", c->out, "dW.npy", "the table's gradient, dense or --sparse: <f4")->required();
  add_file(backward, "--per-sample-weights-grad-out", c->per_sample_weights_grad_out, "PG.npy",
           "the gradient of --per-sample-weights")
      ->needs("--per-sample-weights");
  backward.callback([c, &run] {
    check_bags(*c);
    if (c->sparse == c->out_rows.empty()) throw CLI::ValidationError("--sparse and --out-rows go together");
    if (c->opts.mode == mode::max && c->argmax.empty())
      throw CLI::ValidationError("mode max needs --argmax (forward's --argmax-out)");
    run = [c] { return run_backward(*c); };
  });
}

void add_update_command(CLI::App& tool, command_run& run) {
  const auto c = std::make_shared<command_line>();
  CLI::App& update = *tool.add_subcommand("update", "One training step on .npy files: backward and an optimizer's "
                                                    "update of the rows the bags touch (backward_update).");
  update.footer("sgd: w -= lr g; adagrad: s += g^2, w -= lr g / (sqrt(s) + eps); rowwise_adagrad: one s per row,\n"
                "s += mean(g^2). Rows whose update is not finite stay as they were (reported on stderr).\n"
                "W and the state are read whole and written whole, all or nothing.");
  add_call_flags(update, *c);
  add_file(update, "--grad-output", c->grad_output, "G.npy", "the gradient of forward's output, its shape")->required();
  add_file(update, "--argmax", c->argmax, "A.npy", "the argmax forward wrote (--argmax-out): mode max needs it");
  std::string optimizers;
  for (const optimizer_kind k : all_optimizers) optimizers += (optimizers.empty() ? "" : ", ") + std::string(to_string(k));
  update.add_option_function<optimizer_kind>("--optimizer", [c](optimizer_kind k) { c->opt.kind = k; },
                                             "the optimizer, of " + optimizers)
      ->required()
      ->type_name("NAME")
      ->transform(name_of("optimizer", optimizer_from_string, optimizers));
  update.add_option("--lr", c->opt.learning_rate, "the learning rate (default 0.01)")
      ->type_name("X")
      ->transform(number<float>("a number"));
  update.add_option("--eps", c->opt.eps, "adagrad's eps (default 1e-10)")->type_name("X")->transform(number<float>("a number"));
  update.add_option("--weight-decay", c->opt.weight_decay, "g += X w on the touched rows (default 0)")
      ->type_name("X")
      ->transform(number<float>("a number"));
  CLI::Option* stochastic = update.add_flag_function(
      "--stochastic-rounding", [c](std::int64_t) { c->opt.rounding = rounding_mode::stochastic; },
      "an <f2 table's weights rounded stochastically (default: to nearest)");
  update.add_option("--seed", c->opt.seed, "stochastic rounding's seed (give each step its own)")
      ->type_name("N")
      ->transform(number<std::uint64_t>("a non-negative integer"))
      ->needs(stochastic);
  add_file(update, "--state", c->state, "S.npy", "the optimizer's state: <f4, adagrad's W's shape, rowwise's (rows,)");
  update.add_option("--initial-accumulator-value", c->initial_accumulator, "the state without --state (default 0)")
      ->type_name("X")
      ->transform(number<float>("a number"));
  add_file(update, "--weight-out", c->weight_out, "W2.npy", "the updated table")->required();
  add_file(update, "--state-out", c->state_out, "S2.npy", "the updated state (adagrad and rowwise_adagrad)");
  update.callback([c, &run] {
    check_bags(*c);
    if (c->opts.mode == mode::max && c->argmax.empty())
      throw CLI::ValidationError("mode max needs --argmax (forward's --argmax-out)");
    const bool stateful = c->opt.kind != optimizer_kind::sgd;
    if (stateful == c->state_out.empty())
      throw CLI::ValidationError(stateful ? "adagrad and rowwise_adagrad need --state-out" : "sgd keeps no state: no --state-out");
    if (!stateful && !c->state.empty()) throw CLI::ValidationError("sgd keeps no state: no --state");
    run = [c] { return run_update(*c); };
  });
}

}  // namespace

void add_forward_batched_command(CLI::App& tool, command_run& run) {
  const auto b = std::make_shared<batched_line>();
  CLI::App& batched = *tool.add_subcommand("forward-batched", "Many tables in one forward call (forward_batched), "
                                                              "their outputs side by side.");
  batched.footer("The spec: {\"tables\": [{\"weight\": \"W0.npy\", \"indices\": \"I0.npy\", \"offsets\": \"O0.npy\"}, ...]}\n"
                 "per table: weight (.npy <f4, or .embag), indices, offsets or lengths, and optionally\n"
                 "per_sample_weights, mode, padding_idx, include_last_offset, bad_indices, pruned_ids, remap;\n"
                 "paths relative to the spec.");
  add_file(batched, "--tables", b->tables, "SPEC.json", "the tables and their bags")->required();
  add_file(batched, "--out", b->out, "Y.npy", "the output: B x sum(D) <f4 (or <f2), the tables' columns in order")->required();
  batched.add_option_function<dtype>("--out-dtype", [b](dtype type) { b->out_type = type; },
                                     "the output's element type: f32 (the default) or f16, accumulated in fp32 and "
                                     "rounded once (.npy has no bf16)")
      ->type_name("DTYPE")
      ->transform(name_of("output dtype", dtype_from_string, std::string("f32, f16")))
      ->check([](const std::string& type) {
        return type == std::to_string(int(dtype::f32)) || type == std::to_string(int(dtype::f16))
                   ? std::string()
                   : std::string("--out-dtype is f32 or f16 (.npy has no bf16)");
      });
  batched.add_option("--isa", b->how.isa, "this instruction set, of " + isa_names + " (default: the best)")
      ->type_name("ISA")
      ->transform(name_of("ISA", isa_from_string, isa_names));
  add_threads(batched, b->how.max_threads);
  batched.callback([b, &run] { run = [b] { return run_forward_batched(*b); }; });
}

void add_file_commands(CLI::App& tool, command_run& run) {
  add_forward_command(tool, run);
  add_forward_batched_command(tool, run);
  add_backward_command(tool, run);
  add_update_command(tool, run);

  const auto q = std::make_shared<conversion_line>();
  CLI::App& quantize = *tool.add_subcommand("quantize", "A .npy table to a compressed .embag table.");
  quantize.footer("int8_rowwise and int4_rowwise are FBGEMM's fused rowwise layouts (per row: the quantised\n"
                  "values, then scale and bias); rows with NaN or Inf, or out of the format's range, are errors.");
  add_file(quantize, "--in", q->in, "W.npy", "the table: a 2-D <f4 (or <f2) array")->required();
  quantize.add_option_function<dtype>("--to", [q](dtype type) { q->to = type; }, "the element type, of\n" + dtype_names)
      ->required()
      ->type_name("DTYPE")
      ->transform(name_of("dtype", dtype_from_string, dtype_names));
  add_file(quantize, "--out", q->out, "T.embag", "the compressed table")->required();
  add_threads(quantize, q->how.max_threads);
  quantize.callback([q, &run] { run = [q] { return run_quantize(*q); }; });

  const auto d = std::make_shared<conversion_line>();
  CLI::App& dequantize = *tool.add_subcommand("dequantize", "An .embag table's rows as fp32, to a .npy file.");
  add_file(dequantize, "--in", d->in, "T.embag", "the compressed table")->required();
  add_file(dequantize, "--out", d->out, "W.npy", "its rows as a 2-D <f4 array")->required();
  add_threads(dequantize, d->how.max_threads);
  dequantize.callback([d, &run] { run = [d] { return run_dequantize(*d); }; });
}

}  // namespace embag::tool
