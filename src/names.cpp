// The names of the instruction sets, reductions, element types, index policies and optimizers; the first
// three made from embag/enums.h's lists: a value is named where it is listed, and every enum is
// read back from its names the same way.
#include <optional>
#include <string_view>

#include "embag/embag.hpp"
#include "embag/optim.hpp"
#include "embag/quantize.hpp"
#include "formats/formats.hpp"

namespace embag {
namespace {

// The listed name of `value`, or "unknown" for a value no list entry has (a caller's cast).
#define EMBAG_NAME_CASE_(name, NAME, value) \
  case value: return #name;

template <class Enum, std::size_t N>
std::optional<Enum> named(const Enum (&all)[N], std::string_view name) noexcept {
  for (const Enum value : all)
    if (to_string(value) == name) return value;
  return std::nullopt;
}

}  // namespace

std::string_view to_string(isa which) noexcept {
  switch (static_cast<int>(which)) { EMBAG_FOR_EACH_ISA(EMBAG_NAME_CASE_) }
  return "unknown";
}

std::string_view to_string(mode which) noexcept {
  switch (static_cast<int>(which)) { EMBAG_FOR_EACH_MODE(EMBAG_NAME_CASE_) }
  return "unknown";
}

std::string_view to_string(dtype type) noexcept {
  switch (static_cast<int>(type)) { EMBAG_FOR_EACH_DTYPE(EMBAG_NAME_CASE_) }
  return "unknown";
}

std::string_view to_string(bad_index_policy which) noexcept {
  switch (which) {
    case bad_index_policy::error: return "error";
    case bad_index_policy::skip: return "skip";
  }
  return "unknown";
}

std::string_view to_string(optimizer_kind which) noexcept {
  switch (which) {
    case optimizer_kind::sgd: return "sgd";
    case optimizer_kind::adagrad: return "adagrad";
    case optimizer_kind::rowwise_adagrad: return "rowwise_adagrad";
  }
  return "unknown";
}

std::optional<optimizer_kind> optimizer_from_string(std::string_view name) noexcept {
  return named(all_optimizers, name);
}

std::optional<bad_index_policy> bad_index_policy_from_string(std::string_view name) noexcept {
  return named(all_bad_index_policies, name);
}

std::optional<isa> isa_from_string(std::string_view name) noexcept { return named(all_isas, name); }

std::optional<mode> mode_from_string(std::string_view name) noexcept { return named(all_modes, name); }

std::optional<dtype> dtype_from_string(std::string_view name) noexcept {
  if (const std::optional<dtype> type = named(all_dtypes, name)) return type;
  for (const dtype type : all_dtypes) {
    const std::string_view short_name = detail::format_of(type)->short_name;
    if (!short_name.empty() && name == short_name) return type;
  }
  return std::nullopt;
}

}  // namespace embag
