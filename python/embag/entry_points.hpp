// What embag._embag and embag._torch_nn share: the rule of torch's two forms of bags, and their
// entry points on CPython's vectorcall protocol.
//
// Why entry points of their own: embag.embedding_bag was a Python function calling a pybind11
// one. Right after a large call, which leaves the interpreter's, pybind11's and NumPy's code and
// data out of the caches, that cost 57 us more than the library's call from C++ (B = 1, L = 1,
// after a pass over twice the LLC; bench/python_bench.py --parts overhead): 1.1% of a 5 ms call.
// Bound here (no Python frame, no pybind11 keyword table or casters), NumPy arrays read from
// NumPy's struct, it costs 10-25 us (on tensors 30-57: torch's own objects).
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "embag/embag.hpp"

namespace embag_python {

// As Python prints a tuple: (13,) or (4, 3).
inline std::string tuple_text(std::span<const std::int64_t> values) {
  std::string text = "(";
  for (std::size_t i = 0; i < values.size(); ++i) text += (i ? ", " : "") + std::to_string(values[i]);
  return text + (values.size() == 1 ? ",)" : ")");
}

struct bag_layout {
  std::int64_t fixed_length = 0;  // 0: the bags are given by offsets
  std::int64_t bags = 0;
  bool zero_offsets = false;  // a 2-D B x 0 input: B empty bags, which the library takes as offsets all 0
};

// torch's two forms: a 1-D input with offsets (B of them, or B + 1 with include_last_offset), or a
// 2-D input of B bags of L indices (offsets None; per_sample_weights, if any, of the same shape).
// The shapes of the arrays given (offsets and weights nullopt where None); errors name `function`.
inline bag_layout layout_of(std::span<const std::int64_t> input, std::optional<std::span<const std::int64_t>> offsets,
                            std::optional<std::span<const std::int64_t>> weights, bool include_last_offset,
                            std::string_view function) {
  const std::string f(function);
  if (input.size() == 1 && offsets) {
    if (offsets->size() != 1)
      throw embag::error(embag::errc::invalid_shape, f + ": offsets must be 1-D, got shape " + tuple_text(*offsets));
    const std::int64_t count = (*offsets)[0];
    return {0, include_last_offset && count > 0 ? count - 1 : count, false};
  }
  if (input.size() == 2) {
    if (offsets)
      throw embag::error(embag::errc::invalid_shape, f + ": offsets must be None when input is 2-D (shape " +
                                                         tuple_text(input) + ": " + std::to_string(input[0]) +
                                                         " bags of " + std::to_string(input[1]) + " indices)");
    if (weights && !std::ranges::equal(input, *weights))
      throw embag::error(embag::errc::size_mismatch, f + ": per_sample_weights has shape " + tuple_text(*weights) +
                                                         ", input has shape " + tuple_text(input));
    return {input[1], input[0], input[1] == 0};
  }
  if (input.size() == 1)
    throw embag::error(embag::errc::invalid_shape,
                       f + ": offsets are required when input is 1-D (or pass a 2-D input of bags of equal length)");
  throw embag::error(embag::errc::invalid_shape,
                     f + ": input must be 1-D (with offsets) or 2-D (B x L), got shape " + tuple_text(input));
}

// A vectorcall entry point (METH_FASTCALL | METH_KEYWORDS) around `body`, which returns a new
// reference: a C++ exception it throws becomes the Python exception pybind11's dispatcher would
// make of it (through the same translators: embag's errors as embag.Error's classes).
template <pybind11::object (*body)(PyObject* const*, Py_ssize_t, PyObject*)>
PyObject* vectorcall(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) noexcept {
  try {
    return body(args, nargs, kwnames).release().ptr();
  } catch (...) {
    namespace detail = pybind11::detail;
    if (!detail::apply_exception_translators(detail::get_local_internals().registered_exception_translators) &&
        !detail::apply_exception_translators(detail::get_internals().registered_exception_translators))
      PyErr_SetString(PyExc_SystemError, "embag: an exception escaped pybind11's translators");
    return nullptr;
  }
}

// Adds `entry` (static: CPython keeps its address) to `module` as a function of module `owner`.
inline void add_entry_point(pybind11::module_& module, PyMethodDef& entry, const char* owner) {
  pybind11::str owner_name(owner);
  PyObject* function = PyCFunction_NewEx(&entry, nullptr, owner_name.ptr());
  if (function == nullptr) throw pybind11::error_already_set();
  module.add_object(entry.ml_name, pybind11::reinterpret_steal<pybind11::object>(function));
}

// The PyCFunction a METH_FASTCALL | METH_KEYWORDS method holds (cast through void (*)(), which
// GCC does not warn about).
template <pybind11::object (*body)(PyObject* const*, Py_ssize_t, PyObject*)>
PyCFunction as_method() {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&vectorcall<body>));
}

}  // namespace embag_python
