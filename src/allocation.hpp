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

// Runs grow, which allocates `count` elements of T; describe() names them should they not fit,
// called only then: a message built on every call would allocate on the hot path.
template <class T, class Describe, class Grow>
decltype(auto) allocating(std::size_t count, Describe describe, Grow grow) {
  try {
    return grow();
  } catch (const std::bad_alloc&) {
    out_of_memory(describe(), count * sizeof(T));
  }
}

// A vector of `count` value-initialised elements.
template <class T>
std::vector<T> allocated(std::size_t count, const std::string& what) {
  return allocating<T>(count, [&] { return what; }, [&] { return std::vector<T>(count); });
}

// Grows v's capacity to `count` elements (it never shrinks: a reused vector stops allocating).
template <class T>
void reserved(std::vector<T>& v, std::size_t count, const std::string& what) {
  allocating<T>(count, [&] { return what; }, [&] { v.reserve(count); });
}

// Resizes v to `count` elements (its capacity never shrinks).
template <class T>
void resized(std::vector<T>& v, std::size_t count, const std::string& what) {
  allocating<T>(count, [&] { return what; }, [&] { v.resize(count); });
}

}  // namespace embag::detail
