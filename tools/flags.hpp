// What the embag tool's commands share on their command lines (CLI11): the checks of numbers, of
// names the library reads (modes, dtypes, ISAs) and of file names.
#pragma once

#include <CLI/CLI.hpp>

#include <charconv>
#include <functional>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include "embag/embag.hpp"
#include "embag/quantize.hpp"

namespace embag::tool {

// A number in base 10 that `accepts`, or the error "wants <what>, got '<text>'". CLI11 2.1 reads
// integers with strtoll's base 0 ("0x10" is 16, "010" is 8), wraps or saturates what is out of range
// ("-1" is 2^64 - 1 in an unsigned) and takes an empty value as 0: the value is read here instead,
// and an integer handed on in canonical form, which CLI11 then stores exactly.
template <class T>
CLI::Validator number(const std::string& what, std::function<bool(T)> accepts = [](T) { return true; }) {
  return CLI::Validator(
      [what, accepts](std::string& text) -> std::string {
        T value{};
        const char* end = text.data() + text.size();
        const auto [stop, failure] = std::from_chars(text.data(), end, value);
        if (failure != std::errc() || stop != end || !accepts(value)) return "wants " + what + ", got '" + text + "'";
        if constexpr (std::is_integral_v<T>) text = std::to_string(value);
        return {};
      },
      "");
}

// A name `from_string` reads (the library's mode_from_string, dtype_from_string, isa_from_string),
// or the error "unknown <what> '<text>' (<names>)". The enum's number is handed on, which CLI11
// stores in the enum (its own reading of an enum).
template <class T>
CLI::Validator name_of(const std::string& what, std::optional<T> (*from_string)(std::string_view),
                       const std::string& names) {
  return CLI::Validator(
      [what, from_string, names](std::string& text) -> std::string {
        const std::optional<T> value = from_string(text);
        if (!value) return "unknown " + what + " '" + text + "' (" + names + ")";
        text = std::to_string(static_cast<long long>(*value));
        return {};
      },
      "");
}

// The library's names of all `values` (all_modes, all_isas, all_dtypes), for help texts and errors.
template <class T, std::size_t N>
std::string names_of(const T (&values)[N]) {
  std::string names;
  for (T value : values) names += (names.empty() ? "" : ", ") + std::string(to_string(value));
  return names;
}

inline const std::string mode_names = names_of(all_modes);
inline const std::string isa_names = names_of(all_isas);
inline const std::string dtype_names = names_of(all_dtypes) + "; or the short forms fp32, fp16, int8, int4";

// --threads N of every command but bench: 0 uses every thread, 1 runs inline.
inline CLI::Option* add_threads(CLI::App& command, int& max_threads) {
  return command.add_option("--threads", max_threads, "threads: 0 (the default) uses them all, 1 runs on this one")
      ->type_name("N")
      ->transform(number<int>("0 (all) or a positive count", [](int n) { return n >= 0; }));
}

// A file flag: a file name, not empty, given once.
inline CLI::Option* add_file(CLI::App& command, const std::string& flag, std::string& path, const std::string& shown,
                             const std::string& help) {
  return command.add_option(flag, path, help)
      ->type_name(shown)
      ->multi_option_policy(CLI::MultiOptionPolicy::Throw)
      ->check([](const std::string& name) { return name.empty() ? std::string("wants a file name") : std::string(); });
}

}  // namespace embag::tool
