#include "lookup.hpp"

#include <algorithm>
#include <map>
#include <tuple>

#include "embag/batched.hpp"

namespace embag::serve {
namespace {

std::size_t element_bytes(output_type type) { return type == output_type::f16 ? 2 : 4; }
dtype element_type(output_type type) { return type == output_type::f16 ? dtype::f16 : dtype::f32; }

void fail(lookup_outcome& outcome, int status, error_kind kind, std::string message) {
  outcome.status = status;
  outcome.kind = kind;
  outcome.error = std::move(message);
  outcome.response.tables.clear();
}

error_kind kind_of(errc code) {
  return code == errc::index_out_of_range ? error_kind::bad_index : error_kind::bad_request;
}

// One request's table section, resolved against the snapshot.
struct section {
  std::size_t request, position;
  const loaded_table* table;
};

// One table of the forward_batched call: the sections merged into it, their bags back to back.
struct merged_lookup {
  std::vector<section> members;
  std::vector<std::int32_t> lengths;
  std::vector<std::int64_t> indices;
  std::vector<float> weights;
  std::vector<std::byte> values;  // the merged output, when there are several members
  index_report report;
};

// Checks that each section names a table of the snapshot and sizes its output, adding the sections
// to `sections`; otherwise fails the outcome and adds none.
void resolve(const model& snapshot, const lookup_request& request, std::size_t request_index, lookup_outcome& outcome,
             const lookup_limits& limits, std::vector<section>& sections) {
  outcome.response.output = request.output;
  outcome.response.generation = snapshot.generation;
  outcome.response.tables.resize(request.tables.size());
  std::size_t response_bytes = 0;
  const std::size_t first = sections.size();
  for (std::size_t t = 0; t < request.tables.size(); ++t) {
    const auto& asked = request.tables[t];
    const loaded_table* table = snapshot.find(asked.table);
    if (!table) {
      sections.resize(first);
      fail(outcome, 404, error_kind::unknown_table, "tables[" + std::to_string(t) + "]: no table named \"" + asked.table + "\"");
      return;
    }
    const auto bags = bags::from_lengths(asked.indices, asked.lengths, asked.weights);
    const auto rows = static_cast<std::size_t>(output_rows(bags, table->settings().opts));
    const auto dim = static_cast<std::size_t>(table->rows().dim);
    response_bytes += rows * dim * element_bytes(request.output);
    if (response_bytes > limits.max_response_bytes) {
      sections.resize(first);
      fail(outcome, 413, error_kind::too_large,
           "tables[" + std::to_string(t) + "]: the response would exceed the limit of " +
               std::to_string(limits.max_response_bytes) + " bytes");
      return;
    }
    auto& out = outcome.response.tables[t];
    out.table = asked.table;
    out.version = static_cast<std::uint64_t>(table->version());
    out.rows = static_cast<std::uint32_t>(rows);
    out.dim = static_cast<std::uint32_t>(dim);
    out.values.resize(rows * dim * element_bytes(request.output));
    sections.push_back({request_index, t, table});
  }
}

table_lookup lookup_for(const loaded_table& table, const bags& batch, index_report& report, void* out, std::int64_t rows,
                        output_type type) {
  options opts = table.settings().opts;
  opts.report = &report;
  return {table.rows(), batch, opts, output_view(out, rows, table.rows().dim, 0, element_type(type))};
}

}  // namespace

const char* to_string(error_kind kind) noexcept {
  switch (kind) {
    case error_kind::malformed: return "malformed";
    case error_kind::unknown_table: return "unknown_table";
    case error_kind::bad_index: return "bad_index";
    case error_kind::bad_request: return "bad_request";
    case error_kind::too_large: return "too_large";
    case error_kind::unsupported_media_type: return "unsupported_media_type";
    case error_kind::shed: return "shed";
    case error_kind::internal: return "internal";
  }
  return "internal";
}

std::int64_t run_lookups(const model& snapshot, std::span<const lookup_request* const> requests,
                         std::span<lookup_outcome> outcomes, const execution& how, const lookup_limits& limits,
                         workspace& scratch) {
  std::vector<section> sections;
  for (std::size_t r = 0; r < requests.size(); ++r) {
    outcomes[r] = {};
    resolve(snapshot, *requests[r], r, outcomes[r], limits, sections);
  }
  if (sections.empty()) return 0;

  // A request alone: each section is one table of the call, in the request's order (so that the
  // library's "tables[i]" in an error is the request's tables[i]), written straight into the response.
  // Several: merged per (table, weighted, output type).
  std::vector<merged_lookup> merged;
  if (requests.size() == 1) {
    for (const auto& s : sections) merged.push_back({{s}, {}, {}, {}, {}, {}});
  } else {
    std::map<std::tuple<const loaded_table*, bool, output_type>, std::size_t> group_of;
    for (const auto& s : sections) {
      const auto& asked = requests[s.request]->tables[s.position];
      const auto key = std::make_tuple(s.table, !asked.weights.empty(), requests[s.request]->output);
      auto [it, added] = group_of.try_emplace(key, merged.size());
      if (added) merged.emplace_back();
      merged[it->second].members.push_back(s);
    }
  }

  std::vector<table_lookup> lookups;
  lookups.reserve(merged.size());
  for (auto& m : merged) {
    const section& first = m.members.front();
    const auto type = requests[first.request]->output;
    if (m.members.size() == 1) {
      const auto& asked = requests[first.request]->tables[first.position];
      auto& out = outcomes[first.request].response.tables[first.position];
      lookups.push_back(lookup_for(*first.table, bags::from_lengths(asked.indices, asked.lengths, asked.weights), m.report,
                                   out.values.data(), out.rows, type));
      continue;
    }
    std::int64_t rows = 0;
    for (const auto& s : m.members) {
      const auto& asked = requests[s.request]->tables[s.position];
      m.lengths.insert(m.lengths.end(), asked.lengths.begin(), asked.lengths.end());
      m.indices.insert(m.indices.end(), asked.indices.begin(), asked.indices.end());
      m.weights.insert(m.weights.end(), asked.weights.begin(), asked.weights.end());
      rows += outcomes[s.request].response.tables[s.position].rows;
    }
    m.values.resize(static_cast<std::size_t>(rows * first.table->rows().dim) * element_bytes(type));
    lookups.push_back(lookup_for(*first.table, bags::from_lengths(m.indices, m.lengths, m.weights), m.report,
                                 m.values.data(), rows, type));
  }

  try {
    forward_batched(lookups, how, &scratch);
  } catch (const error& e) {
    if (requests.size() == 1) {
      fail(outcomes[0], e.code() == errc::out_of_memory ? 503 : 400, kind_of(e.code()), e.what());
      return 0;
    }
    std::int64_t skipped = 0;
    for (std::size_t r = 0; r < requests.size(); ++r)
      if (outcomes[r].status == 200)
        skipped += run_lookups(snapshot, requests.subspan(r, 1), outcomes.subspan(r, 1), how, limits, scratch);
    return skipped;
  }

  std::int64_t skipped = 0;
  for (auto& m : merged) {
    skipped += m.report.skipped;
    if (m.members.size() == 1) continue;
    std::size_t offset = 0;
    for (const auto& s : m.members) {
      auto& out = outcomes[s.request].response.tables[s.position];
      std::copy_n(m.values.begin() + static_cast<std::ptrdiff_t>(offset), out.values.size(), out.values.begin());
      offset += out.values.size();
    }
  }
  return skipped;
}

// ---------------------------------------------------------------------------------------------

batcher::batcher(std::shared_ptr<model_store> store, batching_settings settings, execution how, lookup_limits limits,
                 std::function<void(std::size_t, std::int64_t)> on_batch)
    : store_(std::move(store)), settings_(settings), how_(how), limits_(limits), on_batch_(std::move(on_batch)) {
  thread_ = std::thread([this] { run(); });
}

batcher::~batcher() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  arrived_.notify_all();
  thread_.join();
}

lookup_outcome batcher::submit(const lookup_request& request) {
  pending p{&request, {}, std::binary_semaphore(0), std::chrono::steady_clock::now()};
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(&p);
    // The batching thread waits for a first request, then for a full batch or the window's end:
    // waking it for any other arrival would only cost a context switch.
    if (queue_.size() == 1 || queue_.size() == settings_.max_requests) arrived_.notify_one();
  }
  p.done.acquire();  // its own semaphore: a finished batch wakes its requests, no others
  return std::move(p.outcome);
}

void batcher::run() {
  workspace scratch;
  std::vector<pending*> batch;
  std::vector<const lookup_request*> requests;
  std::vector<lookup_outcome> outcomes;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      arrived_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      // The first request waits at most the window for others to join it.
      const auto deadline = queue_.front()->arrived + settings_.window;
      arrived_.wait_until(lock, deadline, [&] { return stopping_ || queue_.size() >= settings_.max_requests; });
      const std::size_t take = std::min(queue_.size(), settings_.max_requests);
      batch.assign(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(take));
      queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(take));
    }
    requests.clear();
    for (auto* p : batch) requests.push_back(p->request);
    outcomes.resize(batch.size());
    // One snapshot for the whole batch: every response reads one version of each table.
    const auto snapshot = store_->current();
    std::int64_t skipped = 0;
    try {
      skipped = run_lookups(*snapshot, requests, outcomes, how_, limits_, scratch);
    } catch (const std::exception& e) {  // an allocation failure: every request of the batch learns it
      for (auto& o : outcomes) fail(o, 503, error_kind::internal, std::string("the server could not run the batch: ") + e.what());
    }
    if (on_batch_) on_batch_(batch.size(), skipped);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      batch[i]->outcome = std::move(outcomes[i]);
      batch[i]->done.release();
    }
  }
}

}  // namespace embag::serve
