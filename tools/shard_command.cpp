// `embag shard-split` and `embag shard-join`: a table's rows into one .embag file per rank of a
// sharded model (embag/sharded.hpp), and back. Built with libembag_mpi (meson option mpi).
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "embag/npy.hpp"
#include "embag/quantize.hpp"
#include "embag/sharded.hpp"
#include "flags.hpp"

namespace embag::tool {
namespace {

struct shard_line {
  std::string in, out;
  int ranks = 0;
  std::vector<std::int64_t> counts;
};

// The file of rank r: the pattern with {rank} replaced by r.
std::string rank_file(const std::string& pattern, int rank) {
  std::string path = pattern;
  path.replace(path.find("{rank}"), 6, std::to_string(rank));
  return path;
}

// The table to split: an .npy of <f4 or <f2 rows (mapped), or an .embag of any dtype.
struct input_table {
  std::unique_ptr<npy_array> npy;
  std::unique_ptr<compressed_table> embag;
  compressed_table_view view;

  explicit input_table(const std::string& path) {
    if (path.size() >= 4 && path.compare(path.size() - 4, 4, ".npy") == 0) {
      npy = std::make_unique<npy_array>(npy_array::open(path));
      if (npy->shape().size() != 2 || (npy->dtype() != npy_dtype::f32 && npy->dtype() != npy_dtype::f16))
        throw error(errc::bad_file, path + ": expected a 2-D <f4 or <f2 table, found " + npy->describe());
      view = {static_cast<const std::byte*>(npy->data()), npy->shape()[0], npy->shape()[1], 0,
              npy->dtype() == npy_dtype::f32 ? dtype::f32 : dtype::f16};
    } else {
      embag = std::make_unique<compressed_table>(compressed_table::open(path));
      view = embag->view();
    }
  }
};

int run_split(const shard_line& s) {
  output_group outputs;
  outputs.reads(s.in, "--in");
  const input_table in(s.in);
  const sharded::row_partition part =
      s.counts.empty() ? sharded::row_partition::even(in.view.rows, s.ranks) : sharded::row_partition::from_counts(s.counts);
  if (part.rows() != in.view.rows)
    throw error(errc::size_mismatch, "--counts add up to " + std::to_string(part.rows()) + " rows; " + s.in + " has " +
                                         std::to_string(in.view.rows));
  for (int r = 0; r < part.ranks(); ++r) outputs.writes(rank_file(s.out, r), "--out");
  const std::int64_t stride = row_bytes(in.view.element_type, in.view.dim);
  for (int r = 0; r < part.ranks(); ++r) {
    const compressed_table_view shard{in.view.data + part.first(r) * stride, part.count(r), in.view.dim, stride,
                                      in.view.element_type};
    stage_embag(outputs, rank_file(s.out, r), shard);
  }
  outputs.commit();
  return 0;
}

int run_join(const shard_line& s) {
  output_group outputs;
  for (int r = 0; r < s.ranks; ++r) outputs.reads(rank_file(s.in, r), "--in");
  outputs.writes(s.out, "--out");
  std::vector<compressed_table> shards;
  for (int r = 0; r < s.ranks; ++r) {
    shards.push_back(compressed_table::open(rank_file(s.in, r)));
    const compressed_table& first = shards.front();
    if (shards.back().dim() != first.dim() || shards.back().element_type() != first.element_type())
      throw error(errc::bad_file, rank_file(s.in, r) + " holds " + std::string(to_string(shards.back().element_type())) +
                                      " rows of dim " + std::to_string(shards.back().dim()) + "; " + rank_file(s.in, 0) +
                                      " holds " + std::string(to_string(first.element_type())) + " rows of dim " +
                                      std::to_string(first.dim()));
  }
  std::vector<std::byte> rows;
  std::int64_t count = 0;
  for (const compressed_table& t : shards) {
    const compressed_table_view v = t.view();
    rows.insert(rows.end(), v.data, v.data + v.rows * t.row_bytes());
    count += v.rows;
  }
  stage_embag(outputs, s.out, {rows.data(), count, shards[0].dim(), 0, shards[0].element_type()});
  outputs.commit();
  return 0;
}

CLI::Validator rank_pattern() {
  return CLI::Validator(
      [](std::string& text) { return text.find("{rank}") == std::string::npos ? "wants a pattern holding {rank}, got '" + text + "'" : std::string(); },
      "");
}

}  // namespace

void add_shard_commands(CLI::App& tool, command_run& run) {
  const auto s = std::make_shared<shard_line>();
  CLI::App& split = *tool.add_subcommand("shard-split", "A table's rows into one .embag file per rank (embag/sharded.hpp).");
  split.footer("Rank r's file holds rows [first(r), first(r) + count(r)) in the table's dtype; the files are\n"
               "written all or none.");
  add_file(split, "--in", s->in, "T.npy|T.embag", "the table: a 2-D <f4 or <f2 .npy, or an .embag of any dtype")->required();
  split.add_option("--ranks", s->ranks, "the ranks: rows split evenly (the first rows % N ranks hold one more)")
      ->type_name("N")
      ->transform(number<int>("a positive count", [](int n) { return n > 0; }));
  split.add_option("--counts", s->counts, "rows per rank instead, in rank order (an uneven split)")
      ->type_name("C,...")
      ->delimiter(',')
      ->excludes("--ranks");
  add_file(split, "--out", s->out, "T.{rank}.embag", "the files, {rank} replaced by each rank")->required()->check(rank_pattern());
  split.callback([s, &split, &run] {
    if (s->ranks == 0 && split.count("--counts") == 0) throw CLI::ValidationError("--ranks or --counts", "one of them is required");
    run = [s] { return run_split(*s); };
  });

  const auto j = std::make_shared<shard_line>();
  CLI::App& join = *tool.add_subcommand("shard-join", "The .embag files of a sharded table's ranks back into one table.");
  add_file(join, "--in", j->in, "T.{rank}.embag", "the files, {rank} replaced by each rank")->required()->check(rank_pattern());
  join.add_option("--ranks", j->ranks, "how many there are")
      ->required()
      ->type_name("N")
      ->transform(number<int>("a positive count", [](int n) { return n > 0; }));
  add_file(join, "--out", j->out, "T.embag", "the whole table")->required();
  join.callback([j, &run] { run = [j] { return run_join(*j); }; });
}

}  // namespace embag::tool
