// The C ABI (include/embag/embag.h): translates C arguments into the C++ API's types, calls it, and
// turns every exception into a status and a thread-local message. Checks here are only those the
// C++ types cannot express (constants out of range, a NULL handle, a negative count); everything
// else is the C++ API's own validation.
#include "embag/embag.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <variant>

#include "embag/batched.hpp"
#include "embag/embag.hpp"
#include "embag/npy.hpp"
#include "embag/optim.hpp"
#include "embag/quantize.hpp"
#include "call.hpp"

struct embag_table {
  embag::detail::stored_table stored;  // validated as the C++ API validates its tables
  // what holds the rows when the handle owns them: a mapped (or copied) .npy or .embag file, or
  // the rows quantize made
  std::variant<std::monostate, embag::npy_array, embag::compressed_table> storage;
};

namespace {

using embag::errc;
using embag::error;

static_assert(EMBAG_ERR_INDEX_OUT_OF_RANGE == int(errc::index_out_of_range) &&
              EMBAG_ERR_BAD_OFFSETS == int(errc::bad_offsets) && EMBAG_ERR_BAD_LENGTHS == int(errc::bad_lengths) &&
              EMBAG_ERR_SIZE_MISMATCH == int(errc::size_mismatch) &&
              EMBAG_ERR_NULL_POINTER == int(errc::null_pointer) &&
              EMBAG_ERR_INVALID_SHAPE == int(errc::invalid_shape) &&
              EMBAG_ERR_SIZE_OVERFLOW == int(errc::size_overflow) &&
              EMBAG_ERR_INVALID_OPTION == int(errc::invalid_option) && EMBAG_ERR_ALIASING == int(errc::aliasing) &&
              EMBAG_ERR_UNSUPPORTED_ISA == int(errc::unsupported_isa) &&
              EMBAG_ERR_MISALIGNED == int(errc::misaligned) && EMBAG_ERR_IO == int(errc::io_error) &&
              EMBAG_ERR_BAD_FILE == int(errc::bad_file) && EMBAG_ERR_OUT_OF_MEMORY == int(errc::out_of_memory),
              "embag.h's status codes are embag::errc's values");
static_assert(EMBAG_ERR_INTERNAL > int(errc::out_of_memory));
static_assert(EMBAG_PREFETCH_AUTOMATIC == int(embag::prefetch_level::automatic) &&
              EMBAG_PREFETCH_NONE == int(embag::prefetch_level::none) &&
              EMBAG_PREFETCH_L1 == int(embag::prefetch_level::l1) && EMBAG_PREFETCH_L2 == int(embag::prefetch_level::l2) &&
              EMBAG_PREFETCH_L2_ONE_PASS == int(embag::prefetch_level::l2_one_pass));
static_assert(EMBAG_BAGS_OFFSETS == int(embag::bag_layout::offsets) &&
              EMBAG_BAGS_LENGTHS == int(embag::bag_layout::lengths) &&
              EMBAG_BAGS_FIXED == int(embag::bag_layout::fixed_length));
static_assert(EMBAG_INT32 == int(embag::index_type::i32) && EMBAG_INT64 == int(embag::index_type::i64));
// EMBAG_ISA_*, EMBAG_MODE_* and EMBAG_DTYPE_* need no check: both headers make them from
// embag/enums.h.

// Whether a C caller's integer is one of an enum's values (`all`: all_isas, all_modes, all_dtypes).
template <class Enum, std::size_t N>
bool listed(const Enum (&all)[N], std::int64_t value) noexcept {
  return std::any_of(std::begin(all), std::end(all), [&](Enum e) { return static_cast<std::int64_t>(e) == value; });
}

// A fixed buffer: recording an error must not allocate (it may be reporting that memory ran out).
thread_local char last_error[1024];
thread_local std::size_t last_error_length = 0;

void record_error(const char* message) noexcept {
  const std::size_t kept = std::min(std::strlen(message), sizeof last_error - 1);
  std::memcpy(last_error, message, kept);
  last_error[kept] = '\0';
  last_error_length = kept;
}

// Runs one C entry point: no exception crosses the ABI.
template <class Body>
embag_status guarded(const Body& body) noexcept {
  last_error[0] = '\0';
  last_error_length = 0;
  try {
    body();
    return EMBAG_OK;
  } catch (const error& e) {
    record_error(e.what());
    return static_cast<embag_status>(e.code());
  } catch (const std::bad_alloc&) {
    record_error("out of memory");
    return EMBAG_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    record_error(e.what());
    return EMBAG_ERR_INTERNAL;
  } catch (...) {
    record_error("an unknown exception inside embag");
    return EMBAG_ERR_INTERNAL;
  }
}

template <class T>
T& required(T* p, const char* name) {
  if (p == nullptr) throw error(errc::null_pointer, std::string(name) + " is NULL");
  return *p;
}

// A C array as a span; std::span cannot hold a NULL pointer with a size, nor a negative size.
template <class T>
std::span<T> array_of(const char* name, T* data, std::int64_t size) {
  if (size < 0) throw error(errc::size_mismatch, std::string(name) + " size = " + std::to_string(size) + " must be >= 0");
  if (data == nullptr && size > 0)
    throw error(errc::null_pointer, std::string(name) + " is NULL with size " + std::to_string(size));
  return {data, static_cast<std::size_t>(size)};
}

embag::index_type index_type_of(const char* name, std::int32_t type) {
  if (type != EMBAG_INT32 && type != EMBAG_INT64)
    throw error(errc::invalid_option,
                std::string(name) + " = " + std::to_string(type) + " is not EMBAG_INT32 or EMBAG_INT64");
  return static_cast<embag::index_type>(type);
}

embag::bags bags_of(const embag_bags* c_bags) {
  const embag_bags& b = required(c_bags, "bags");
  if (b.layout < EMBAG_BAGS_OFFSETS || b.layout > EMBAG_BAGS_FIXED)
    throw error(errc::invalid_option, "bags.layout = " + std::to_string(b.layout) + " is not an EMBAG_BAGS_* layout");
  if (b.per_sample_weights != nullptr && b.num_weights == 0 && b.num_indices > 0)
    throw error(errc::size_mismatch, "bags.per_sample_weights is given but bags.num_weights = 0 (indices has " +
                                         std::to_string(b.num_indices) + ")");
  embag::bags batch;
  batch.indices = {b.indices, b.num_indices, index_type_of("bags.index_type", b.index_type)};
  if (b.layout != EMBAG_BAGS_FIXED)
    batch.boundaries = {b.boundaries, b.num_boundaries, index_type_of("bags.boundary_type", b.boundary_type)};
  batch.layout = static_cast<embag::bag_layout>(b.layout);
  batch.fixed_length = b.fixed_length;
  batch.per_sample_weights = array_of("bags.per_sample_weights", b.per_sample_weights, b.num_weights);
  return batch;
}

constexpr std::uint32_t known_flags = EMBAG_HAS_PADDING_IDX | EMBAG_INCLUDE_LAST_OFFSET | EMBAG_HAS_MAX_NORM |
                                      EMBAG_MAX_NORM_IN_PLACE | EMBAG_SCALE_GRAD_BY_FREQ | EMBAG_PRUNED_IDS;

embag_options default_c_options() noexcept {
  embag_options o;
  std::memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.mode = EMBAG_MODE_SUM;
  o.norm_type = 2.0f;
  o.isa = EMBAG_ISA_DEFAULT;
  o.prefetch_level = EMBAG_PREFETCH_AUTOMATIC;
  return o;
}

static_assert(sizeof(embag_options) <= EMBAG_OPTIONS_MAX_STRUCT_SIZE,
              "embag.h's bound on struct_size admits this embag_options");

// A struct that grows (embag_options, embag_table_lookup) as this library knows it: its first
// struct_size bytes over `defaults` (fields a caller built against an older embag does not have keep
// them). struct_size is `older` (an earlier version's size, which ends between two fields), or at
// least this library's sizeof(T) and at most EMBAG_OPTIONS_MAX_STRUCT_SIZE, none of the bytes past
// the fields this library knows set. `name` and `how_to_set` word the errors.
template <class T>
T read_versioned(const T& given, const T& defaults, std::size_t older, const std::string& name, const char* how_to_set) {
  const std::uint32_t size = given.struct_size;
  if (size < older)
    throw error(errc::invalid_option, name + ".struct_size = " + std::to_string(size) + " is smaller than any " +
                                          name + " (" + std::to_string(older) + "): " + how_to_set);
  if (size != older && size < sizeof(T))  // it would end inside a field
    throw error(errc::invalid_option, name + ".struct_size = " + std::to_string(size) + " matches no version of " +
                                          name + " (" + std::to_string(older) + " or " + std::to_string(sizeof(T)) +
                                          " bytes): " + how_to_set);
  // the bytes past the known fields are read below: a garbage size must not send that scan
  // through gigabytes of the caller's memory
  if (size > EMBAG_OPTIONS_MAX_STRUCT_SIZE)
    throw error(errc::invalid_option, name + ".struct_size = " + std::to_string(size) +
                                          " is larger than EMBAG_OPTIONS_MAX_STRUCT_SIZE (" +
                                          std::to_string(EMBAG_OPTIONS_MAX_STRUCT_SIZE) + "): no " + name + " is; " +
                                          how_to_set);
  const auto* bytes = reinterpret_cast<const unsigned char*>(&given);
  if (size > sizeof(T) && std::any_of(bytes + sizeof(T), bytes + size, [](unsigned char c) { return c != 0; }))
    throw error(errc::invalid_option, name + ".struct_size = " + std::to_string(size) + " sets fields past the " +
                                          std::to_string(sizeof(T)) + " bytes this embag knows: they need a newer library");
  T known = defaults;
  std::memcpy(&known, &given, std::min<std::size_t>(size, sizeof known));
  known.struct_size = sizeof known;
  return known;
}

// embag_options as 0.1 laid it out, before the index policies' fields.
constexpr std::size_t options_0_1_size = offsetof(embag_options, remap);
static_assert(options_0_1_size == 48, "0.1's embag_options was 48 bytes: its fields must not move");

// embag_table_lookup as 0.1 laid it out, before out_type.
constexpr std::size_t lookup_0_1_size = offsetof(embag_table_lookup, out_type);
static_assert(lookup_0_1_size == 40, "0.1's embag_table_lookup was 40 bytes: its fields must not move");

// The caller's options as this library knows them, or the defaults.
embag_options read_c_options(const embag_options* given) {
  return given == nullptr ? default_c_options()
                          : read_versioned(*given, default_c_options(), options_0_1_size, "options", "call embag_options_init");
}

embag::options options_of(const embag_options* given) {
  const embag_options o = read_c_options(given);
  if ((o.flags & ~known_flags) != 0)
    throw error(errc::invalid_option, "options.flags has unknown bits " + std::to_string(o.flags & ~known_flags));
  if (!listed(embag::all_modes, o.mode))
    throw error(errc::invalid_option, "options.mode = " + std::to_string(o.mode) + " is not an EMBAG_MODE_* mode");
  if (o.isa != EMBAG_ISA_DEFAULT && embag_isa_name(o.isa) == nullptr)
    throw error(errc::invalid_option, "options.isa = " + std::to_string(o.isa) + " is not an EMBAG_ISA_* value");
  if (o.prefetch_level < EMBAG_PREFETCH_AUTOMATIC || o.prefetch_level > EMBAG_PREFETCH_L2_ONE_PASS)
    throw error(errc::invalid_option,
                "options.prefetch_level = " + std::to_string(o.prefetch_level) + " is not an EMBAG_PREFETCH_* level");
  if ((o.flags & EMBAG_MAX_NORM_IN_PLACE) != 0 && (o.flags & EMBAG_HAS_MAX_NORM) == 0)
    throw error(errc::invalid_option, "options.flags has EMBAG_MAX_NORM_IN_PLACE without EMBAG_HAS_MAX_NORM");

  embag::options opts;
  opts.mode = static_cast<embag::mode>(o.mode);
  if ((o.flags & EMBAG_HAS_PADDING_IDX) != 0) opts.padding_idx = o.padding_idx;
  opts.include_last_offset = (o.flags & EMBAG_INCLUDE_LAST_OFFSET) != 0;
  if ((o.flags & EMBAG_HAS_MAX_NORM) != 0) opts.max_norm = o.max_norm;
  opts.norm_type = o.norm_type;
  opts.max_norm_mode = (o.flags & EMBAG_MAX_NORM_IN_PLACE) != 0 ? embag::max_norm_flavour::in_place
                                                                 : embag::max_norm_flavour::clip;
  opts.scale_grad_by_freq = (o.flags & EMBAG_SCALE_GRAD_BY_FREQ) != 0;
  opts.execution.max_threads = o.max_threads;
  if (o.isa != EMBAG_ISA_DEFAULT) opts.execution.isa = static_cast<embag::isa>(o.isa);
  opts.execution.prefetch = {static_cast<embag::prefetch_level>(o.prefetch_level), o.prefetch_rows};
  if (o.bad_indices != EMBAG_BAD_INDICES_ERROR && o.bad_indices != EMBAG_BAD_INDICES_SKIP)
    throw error(errc::invalid_option,
                "options.bad_indices = " + std::to_string(o.bad_indices) + " is not an EMBAG_BAD_INDICES_* policy");
  opts.bad_indices = static_cast<embag::bad_index_policy>(o.bad_indices);
  opts.pruned_ids = (o.flags & EMBAG_PRUNED_IDS) != 0;
  if (o.remap != nullptr || o.remap_size != 0)
    opts.remap = {o.remap, o.remap_size, index_type_of("options.remap_type", o.remap_type)};
  // the report is written with memcpy (index_census::publish): the two structs' bytes must agree
  static_assert(sizeof(embag_index_report) == sizeof(embag::index_report) &&
                offsetof(embag_index_report, first_position) == offsetof(embag::index_report, first_position) &&
                offsetof(embag_index_report, first_value) == offsetof(embag::index_report, first_value) &&
                offsetof(embag_index_report, pruned) == offsetof(embag::index_report, pruned));
  opts.report = reinterpret_cast<embag::index_report*>(o.report);
  return opts;
}

// The execution fields of the options, for calls that take nothing else (quantize, dequantize); the
// whole struct is checked as forward on a table of `table_rows` rows would check it.
embag::execution execution_of(const embag_options* given, std::int64_t table_rows) {
  const embag::options opts = options_of(given);
  embag::detail::validate_options(opts, table_rows);
  return opts.execution;
}

template <class Matrix>
auto view_of(const Matrix* m, const char* name) {
  const Matrix& c = required(m, name);
  using element = std::remove_pointer_t<decltype(c.data)>;
  return embag::matrix_view<element>{c.data, c.rows, c.cols, c.row_stride};
}

embag::isa isa_of(std::int32_t which) {
  if (embag_isa_name(which) == nullptr)
    throw error(errc::invalid_option, "isa = " + std::to_string(which) + " is not an EMBAG_ISA_* value");
  return static_cast<embag::isa>(which);
}

embag::dtype dtype_of(const char* name, std::int32_t type) {
  if (embag_dtype_name(type) == nullptr)
    throw error(errc::invalid_option, std::string(name) + " = " + std::to_string(type) + " is not an EMBAG_DTYPE_* value");
  return static_cast<embag::dtype>(type);
}

// A table handle over rows the C++ API checks and reads (detail::stored).
template <class View>
std::unique_ptr<embag_table> new_table(const View& rows) {
  auto t = std::make_unique<embag_table>();
  t->stored = embag::detail::stored(rows);
  return t;
}

// A table handle owning `storage`, over the rows rows_of(storage) names.
template <class Storage, class Rows>
std::unique_ptr<embag_table> owning_table(Storage storage, Rows rows_of) {
  auto t = new_table(rows_of(storage));
  t->storage = std::move(storage);  // the rows stay where they are: mapped, or on the heap
  return t;
}

// The table's rows as floats, for the calls that need an f32 table.
embag::table_view<const float> float_rows(const embag_table& t, const char* call) {
  if (t.stored.type != embag::dtype::f32)
    throw error(errc::invalid_option, std::string(call) + " needs an f32 table; this one is " +
                                          std::string(embag::to_string(t.stored.type)));
  return t.stored.floats();
}

// Bits of the flags of the open functions.
embag::npy_array::load load_of(std::uint32_t flags) {
  if ((flags & ~EMBAG_LOAD_COPY) != 0)
    throw error(errc::invalid_option, "flags has unknown bits " + std::to_string(flags & ~EMBAG_LOAD_COPY));
  return (flags & EMBAG_LOAD_COPY) != 0 ? embag::npy_array::load::copy : embag::npy_array::load::map;
}

static_assert(EMBAG_OPTIMIZER_SGD == int(embag::optimizer_kind::sgd) &&
              EMBAG_OPTIMIZER_ADAGRAD == int(embag::optimizer_kind::adagrad) &&
              EMBAG_OPTIMIZER_ROWWISE_ADAGRAD == int(embag::optimizer_kind::rowwise_adagrad) &&
              EMBAG_ROUNDING_NEAREST == int(embag::rounding_mode::nearest) &&
              EMBAG_ROUNDING_STOCHASTIC == int(embag::rounding_mode::stochastic));

embag_optimizer default_c_optimizer(std::int32_t kind) noexcept {
  const embag::optimizer defaults;
  embag_optimizer o;
  std::memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.kind = kind;
  o.learning_rate = defaults.learning_rate;
  o.eps = defaults.eps;
  o.weight_decay = defaults.weight_decay;
  o.rounding = EMBAG_ROUNDING_NEAREST;
  return o;
}

// The C optimizer as the C++ one (its values checked by the C++ validation).
embag::optimizer optimizer_of(const embag_optimizer* given) {
  const embag_optimizer& c = required(given, "optimizer");
  const embag_optimizer o =
      read_versioned(c, default_c_optimizer(c.kind), sizeof(embag_optimizer), "optimizer", "call embag_optimizer_init");
  if (!listed(embag::all_optimizers, o.kind))
    throw error(errc::invalid_option, "optimizer.kind = " + std::to_string(o.kind) + " is not an EMBAG_OPTIMIZER_* value");
  if (o.rounding != EMBAG_ROUNDING_NEAREST && o.rounding != EMBAG_ROUNDING_STOCHASTIC)
    throw error(errc::invalid_option, "optimizer.rounding = " + std::to_string(o.rounding) + " is not an EMBAG_ROUNDING_* mode");
  return {static_cast<embag::optimizer_kind>(o.kind), o.learning_rate, o.eps, o.weight_decay,
          static_cast<embag::rounding_mode>(o.rounding), o.seed};
}

embag::trainable_table_view trainable_of(const embag_trainable_table* given) {
  const embag_trainable_table& t = required(given, "table");
  return {t.data, t.rows, t.dim, t.row_stride, dtype_of("table.dtype", t.dtype)};
}

embag::optimizer_state state_of(const embag_matrix* state) { return state == nullptr ? embag::optimizer_state{} : view_of(state, "state"); }

// The summary, written last; it may not lie in the table or the state it describes.
void write_summary(const embag::update_summary& s, embag_update_summary* out) {
  if (out == nullptr) return;
  static_assert(sizeof(embag_update_summary) == sizeof(embag::update_summary));
  std::memcpy(static_cast<void*>(out), &s, sizeof s);
}

void check_summary_apart(const embag_update_summary* out, const embag::trainable_table_view& t,
                         const embag::optimizer_state& state) {
  if (out == nullptr) return;
  const embag::detail::byte_range summary{"summary", out, sizeof *out};
  const std::int64_t element = t.type == embag::dtype::f32 ? 4 : 2;
  const embag::detail::byte_range written[] = {
      embag::detail::matrix_bytes("table", t.data, t.rows, t.dim, t.row_stride == 0 ? t.dim : t.row_stride, element),
      embag::detail::matrix_bytes("state", state.data, state.rows, state.cols,
                                  state.row_stride == 0 ? state.cols : state.row_stride)};
  embag::detail::validate_disjoint(std::span(&summary, 1), written);
}

}  // namespace

extern "C" {

std::int32_t embag_abi_version(void) { return EMBAG_ABI_VERSION; }

const char* embag_version(void) { return embag::version().data(); }  // a string literal: NUL-terminated

const char* embag_status_name(embag_status status) {
  switch (status) {
    case EMBAG_OK: return "ok";
    case EMBAG_ERR_OUT_OF_MEMORY: return "out_of_memory";
    case EMBAG_ERR_INTERNAL: return "internal";
    default: return embag::to_string(static_cast<errc>(status)).data();
  }
}

const char* embag_last_error(void) { return last_error; }

size_t embag_copy_last_error(char* buf, size_t size) {
  if (buf != nullptr && size > 0) {
    const std::size_t kept = std::min(last_error_length, size - 1);
    std::memcpy(buf, last_error, kept);
    buf[kept] = '\0';
  }
  return last_error_length;
}

embag_status embag_table_from_memory(const float* data, int64_t rows, int64_t dim, int64_t row_stride,
                                     embag_table** out) {
  return guarded([&] {
    embag_table*& result = required(out, "out");
    result = new_table(embag::table_view<const float>{data, rows, dim, row_stride}).release();
  });
}

embag_status embag_table_from_mutable_memory(float* data, int64_t rows, int64_t dim, int64_t row_stride,
                                             embag_table** out) {
  return guarded([&] {
    embag_table*& result = required(out, "out");
    result = new_table(embag::table_view<float>{data, rows, dim, row_stride}).release();
  });
}

embag_status embag_table_open_npy(const char* path, uint32_t flags, embag_table** out) {
  return guarded([&] {
    embag_table*& result = required(out, "out");
    required(path, "path");
    result = owning_table(embag::npy_array::open(path, load_of(flags)), std::mem_fn(&embag::npy_array::as_table)).release();
  });
}

void embag_table_destroy(embag_table* table) { delete table; }

embag_status embag_table_shape(const embag_table* table, int64_t* rows, int64_t* dim) {
  return guarded([&] {
    const embag_table& t = required(table, "table");
    std::int64_t& r = required(rows, "rows");
    std::int64_t& d = required(dim, "dim");
    r = t.stored.rows;
    d = t.stored.dim;
  });
}

const char* embag_dtype_name(int32_t dtype) {
  if (!listed(embag::all_dtypes, dtype)) return nullptr;
  return embag::to_string(static_cast<embag::dtype>(dtype)).data();  // string literals: NUL-terminated
}

embag_status embag_row_bytes(int32_t dtype, int64_t dim, int64_t* bytes) {
  return guarded([&] {
    std::int64_t& result = required(bytes, "bytes");
    result = embag::row_bytes(dtype_of("dtype", dtype), dim);
  });
}

embag_status embag_table_dtype(const embag_table* table, int32_t* dtype) {
  return guarded([&] {
    const embag_table& t = required(table, "table");
    required(dtype, "dtype") = static_cast<std::int32_t>(t.stored.type);
  });
}

embag_status embag_table_from_compressed_memory(const void* data, int64_t rows, int64_t dim,
                                                int64_t row_stride_bytes, int32_t dtype, embag_table** out) {
  return guarded([&] {
    embag_table*& result = required(out, "out");
    result = new_table(embag::compressed_table_view{static_cast<const std::byte*>(data), rows, dim, row_stride_bytes,
                                                    dtype_of("dtype", dtype)})
                 .release();
  });
}

embag_status embag_table_open_embag(const char* path, uint32_t flags, embag_table** out) {
  return guarded([&] {
    embag_table*& result = required(out, "out");
    required(path, "path");
    result = owning_table(embag::compressed_table::open(path, load_of(flags)), std::mem_fn(&embag::compressed_table::view))
                 .release();
  });
}

embag_status embag_quantize(const embag_table* source, int32_t dtype, const embag_options* options,
                            embag_table** out) {
  return guarded([&] {
    embag_table*& result = required(out, "out");
    const embag::table_view<const float> rows = float_rows(required(source, "source"), "embag_quantize");
    const embag::dtype to = dtype_of("dtype", dtype);
    result = owning_table(embag::quantize(rows, to, execution_of(options, rows.rows)),
                          std::mem_fn(&embag::compressed_table::view))
                 .release();
  });
}

embag_status embag_dequantize(const embag_table* table, const embag_options* options, const embag_matrix* out) {
  return guarded([&] {
    const embag_table& t = required(table, "table");
    const embag::execution how = execution_of(options, t.stored.rows);
    const embag::matrix_view<float> o = view_of(out, "out");
    embag::dequantize(t.stored.view(), {o.data, o.rows, o.cols, o.row_stride}, how);
  });
}

embag_status embag_table_write_embag(const embag_table* table, const char* path) {
  return guarded([&] {
    const embag_table& t = required(table, "table");
    required(path, "path");
    embag::write_embag(path, t.stored.view());
  });
}

embag_status embag_options_init(embag_options* options) {
  return guarded([&] { required(options, "options") = default_c_options(); });
}

embag_status embag_output_rows(const embag_bags* bags, const embag_options* options, int64_t* rows) {
  return guarded([&] {
    std::int64_t& result = required(rows, "rows");
    result = embag::output_rows(bags_of(bags), options_of(options));
  });
}

embag_status embag_forward(const embag_table* table, const embag_bags* bags, const embag_options* options,
                           const embag_matrix* out, int64_t* argmax, int64_t argmax_size) {
  return guarded([&] {
    const embag_table& t = required(table, "table");
    std::vector<std::int64_t> rewritten_indices;  // allocated only if index policies rewrite
    embag::detail::forward_call call =
        embag::detail::validate_forward(t.stored, bags_of(bags), options_of(options), view_of(out, "out"),
                                        array_of("argmax", argmax, argmax_size), rewritten_indices);
    embag::detail::execute(call, nullptr);
  });
}

embag_status embag_forward_batched(const embag_table_lookup* tables, int64_t num_tables, const embag_options* options) {
  return guarded([&] {
    embag::detail::validate_array("tables", tables, num_tables, alignof(embag_table_lookup));
    // each entry struct_size bytes apart: a caller built against a later embag_table_lookup
    const std::uint32_t stride = num_tables > 0 ? tables[0].struct_size : 0;
    if (num_tables > 0) read_versioned(tables[0], embag_table_lookup{}, lookup_0_1_size, "tables[0]",
                                   "set it to sizeof(embag_table_lookup)");
    if (num_tables > embag::detail::max_array_bytes / std::max<std::uint32_t>(stride, 1))
      throw error(errc::size_overflow, std::to_string(num_tables) + " tables of " + std::to_string(stride) +
                                           " bytes each overflow the address space");
    thread_local std::vector<embag::table_lookup> lookups;  // grown once per thread, then reused
    lookups.clear();
    for (std::int64_t i = 0; i < num_tables; ++i) {
      const std::string name = "tables[" + std::to_string(i) + "]";  // fits the small-string buffer
      const auto& given = *reinterpret_cast<const embag_table_lookup*>(reinterpret_cast<const char*>(tables) + i * stride);
      if (given.struct_size != stride)
        throw error(errc::invalid_option, name + ".struct_size = " + std::to_string(given.struct_size) +
                                              " differs from tables[0]'s " + std::to_string(stride));
      const embag_table_lookup l = read_versioned(given, embag_table_lookup{}, lookup_0_1_size, name,
                                                  "set it to sizeof(embag_table_lookup)");
      try {
        const embag::matrix_view<float> out = view_of(l.out, "out");
        lookups.push_back({required(l.table, "table").stored.view(), bags_of(l.bags), options_of(l.options),
                           {out.data, out.rows, out.cols, out.row_stride, dtype_of("out_type", l.out_type)}});
      } catch (const error& e) {
        throw error(e.code(), name + ": " + e.what());
      }
    }
    embag::forward_batched(lookups, execution_of(options, 0));
  });
}

embag_status embag_backward_dense(const embag_bags* bags, const embag_options* options,
                                  const embag_const_matrix* grad_output, const embag_matrix* grad_table,
                                  const int64_t* argmax, int64_t argmax_size) {
  return guarded([&] {
    embag::backward_dense(bags_of(bags), options_of(options), view_of(grad_output, "grad_output"),
                          view_of(grad_table, "grad_table"), array_of("argmax", argmax, argmax_size));
  });
}

embag_status embag_backward_sparse(int64_t table_rows, const embag_bags* bags, const embag_options* options,
                                   const embag_const_matrix* grad_output, const int64_t* argmax,
                                   int64_t argmax_size, int64_t capacity, int64_t* rows_out, float* values_out,
                                   int64_t* num_rows) {
  return guarded([&] {
    embag::detail::backward_sparse_into(table_rows, bags_of(bags), options_of(options),
                                        view_of(grad_output, "grad_output"), array_of("argmax", argmax, argmax_size),
                                        {array_of("rows_out", rows_out, capacity), values_out},
                                        required(num_rows, "num_rows"));
  });
}

embag_status embag_per_sample_weights_grad(const embag_table* table, const embag_bags* bags,
                                           const embag_options* options, const embag_const_matrix* grad_output,
                                           float* grad_weights, int64_t grad_weights_size) {
  return guarded([&] {
    embag::per_sample_weights_grad(float_rows(required(table, "table"), "embag_per_sample_weights_grad"),
                                   bags_of(bags), options_of(options),
                                   view_of(grad_output, "grad_output"),
                                   array_of("grad_weights", grad_weights, grad_weights_size));
  });
}

embag_status embag_optimizer_init(embag_optimizer* optimizer, int32_t kind) {
  return guarded([&] {
    if (!listed(embag::all_optimizers, kind))
      throw error(errc::invalid_option, "kind = " + std::to_string(kind) + " is not an EMBAG_OPTIMIZER_* value");
    required(optimizer, "optimizer") = default_c_optimizer(kind);
  });
}

embag_status embag_backward_update(const embag_trainable_table* table, const embag_bags* bags,
                                   const embag_options* options, const embag_const_matrix* grad_output,
                                   const int64_t* argmax, int64_t argmax_size, const embag_optimizer* optimizer,
                                   const embag_matrix* state, embag_update_summary* summary) {
  return guarded([&] {
    const embag::trainable_table_view t = trainable_of(table);
    const embag::optimizer_state s = state_of(state);
    check_summary_apart(summary, t, s);
    write_summary(embag::backward_update(t, bags_of(bags), options_of(options), view_of(grad_output, "grad_output"),
                                         optimizer_of(optimizer), s, array_of("argmax", argmax, argmax_size)),
                  summary);
  });
}

embag_status embag_apply_sparse_gradient(const embag_trainable_table* table, const int64_t* rows, int64_t num_rows,
                                         const float* values, const embag_optimizer* optimizer,
                                         const embag_matrix* state, const embag_options* options,
                                         embag_update_summary* summary) {
  return guarded([&] {
    const embag::trainable_table_view t = trainable_of(table);
    const embag::optimizer_state s = state_of(state);
    check_summary_apart(summary, t, s);
    const std::span<const std::int64_t> row_list = array_of("rows", rows, num_rows);
    std::int64_t floats = 0;
    if (__builtin_mul_overflow(num_rows, t.dim, &floats))
      throw error(errc::size_overflow, "values of num_rows = " + std::to_string(num_rows) + " rows of dim " +
                                           std::to_string(t.dim) + " overflows");
    write_summary(embag::detail::apply_gradient_rows(t, row_list, array_of("values", values, floats), t.dim,
                                                     optimizer_of(optimizer), s, options_of(options).execution, nullptr),
                  summary);
  });
}

embag_status embag_available_isas(int32_t* isas, int32_t capacity, int32_t* count) {
  return guarded([&] {
    std::int32_t& total = required(count, "count");
    const std::span<std::int32_t> out = array_of("isas", isas, capacity);
    const std::vector<embag::isa> available = embag::available_isas();
    const std::size_t copied = std::min(out.size(), available.size());
    std::transform(available.begin(), available.begin() + static_cast<std::ptrdiff_t>(copied), out.begin(),
                   [](embag::isa which) { return static_cast<std::int32_t>(which); });
    total = static_cast<std::int32_t>(available.size());
  });
}

embag_status embag_active_isa(int32_t* isa) {
  return guarded([&] { required(isa, "isa") = static_cast<std::int32_t>(embag::active_isa()); });
}

embag_status embag_force_isa(int32_t isa) {
  return guarded([&] { embag::force_isa(isa_of(isa)); });
}

const char* embag_isa_name(int32_t isa) {
  if (!listed(embag::all_isas, isa)) return nullptr;
  return embag::to_string(static_cast<embag::isa>(isa)).data();  // string literals: NUL-terminated
}

}  // extern "C"
