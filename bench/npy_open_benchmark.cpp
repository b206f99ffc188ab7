// npy_open_benchmark: opening a 1 GiB float32 table stored as .npy (Google Benchmark 1.7.1).
// Written once to a temporary directory ($TMPDIR or /tmp, removed at exit), then timed:
//   npy_open/map/bytes:1073741824/real_time   npy_array::open(load::map) and the first as_table():
//       a mapping, no copy, so it should take well under a millisecond
//   npy_open/copy/bytes:1073741824/real_time  npy_array::open(load::copy): the whole file read into
//       memory, for contrast (from the page cache after the first iteration)
// Run: build/bench/npy_open_benchmark [--benchmark_filter=map]
// Wall-clock time (UseRealTime): a wait for the disk is part of what opening a file costs.
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "embag/npy.hpp"

namespace {

constexpr std::int64_t table_rows = 2 << 20, table_dim = 128;  // 2^21 x 128 floats = 1 GiB
constexpr std::int64_t table_bytes = table_rows * table_dim * 4;

std::string table_path;

void open_table(benchmark::State& state, embag::npy_array::load how) {
  for (auto _ : state) {
    const embag::npy_array a = embag::npy_array::open(table_path, how);
    const embag::table_view<const float> t = a.as_table();
    benchmark::DoNotOptimize(t.data);
    if (t.rows != table_rows) state.SkipWithError("the table read back has the wrong shape");
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  std::string dir = (std::filesystem::temp_directory_path() / "embag-npy-bench-XXXXXX").string();
  if (mkdtemp(dir.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  table_path = dir + "/table.npy";
  {
    const std::vector<float> values(static_cast<std::size_t>(table_rows * table_dim), 0.5f);
    embag::write_npy(table_path, embag::npy_dtype::f32, std::vector<std::int64_t>{table_rows, table_dim},
                     values.data());
  }
  const std::string suffix = "/bytes:" + std::to_string(table_bytes);
  benchmark::RegisterBenchmark(("npy_open/map" + suffix).c_str(), open_table, embag::npy_array::load::map)
      ->UseRealTime()->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark(("npy_open/copy" + suffix).c_str(), open_table, embag::npy_array::load::copy)
      ->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(3);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::filesystem::remove_all(dir);
  return 0;
}
