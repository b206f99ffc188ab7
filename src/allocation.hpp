// Allocation failures as errors that say what was being allocated: errc::out_of_memory ("out of
// memory: the row transpose of backward ... (1.2 GiB)"), which the C ABI returns as
// EMBAG_ERR_OUT_OF_MEMORY and the embag tool prints as one line, instead of a std::bad_alloc that
// tells nobody what ran out.
#pragma once

#include <cstddef>
#include <new>
#include <string>
#include <vector>

namespace embag::detail {

[[noreturn]] void out_of_memory(const std::string& what, std::size_t bytes);

// A vector of `count` value-initialised elements; `what` names it should it not fit.
template <class T>
std::vector<T> allocated(std::size_t count, const std::string& what) {
  try {
    return std::vector<T>(count);
  } catch (const std::bad_alloc&) {
    out_of_memory(what, count * sizeof(T));
  }
}

// Grows v's capacity to `count` elements (it never shrinks: a reused vector stops allocating);
// `what` names it should it not fit.
template <class T>
void reserved(std::vector<T>& v, std::size_t count, const std::string& what) {
  try {
    v.reserve(count);
  } catch (const std::bad_alloc&) {
    out_of_memory(what, count * sizeof(T));
  }
}

// Resizes v to `count` elements (its capacity never shrinks); `what` names it should it not fit.
template <class T>
void resized(std::vector<T>& v, std::size_t count, const std::string& what) {
  try {
    v.resize(count);
  } catch (const std::bad_alloc&) {
    out_of_memory(what, count * sizeof(T));
  }
}

}  // namespace embag::detail
