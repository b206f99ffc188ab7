// embag._embag: the library's public API (embag.hpp, batched.hpp, quantize.hpp, optim.hpp) on NumPy arrays and
// CPU PyTorch tensors, without copying either. embag/__init__.py gives it torch's signatures; this
// file checks arrays, calls the library, and allocates the outputs as the caller's array type in
// memory released outputs left (released_memory.hpp): the forward's, the sparse gradients, and
// through empty() the Python layer's others; the dense gradients through zeros(), large ones in fresh
// zero pages (zeroed_memory.hpp).
//
// Arrays arrive as NumPy arrays (read from NumPy's own struct), through the buffer protocol
// (memoryview, anything exporting one), as torch tensors (read through their attributes:
// data_ptr(), shape, stride(), dtype), or through DLPack (a "dltensor" capsule, or another object
// with __dlpack__). Every array's layout is checked and a strided one is refused with its name and
// strides: the library reads the caller's memory in place, so a silent contiguous copy (of what
// may be a 10 GB table) never happens. The GIL is released for every computation; arrays stay
// referenced or exported (NumPy cannot resize them, the tensor or DLPack capsule keeps its
// storage) until the call returns.
//
// embag.embedding_bag and embag.embedding_bag_forward are this module's own functions on CPython's
// vectorcall protocol (entry_points.hpp says why); the rest are pybind11's, called by
// embag/__init__.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>
#include <string>
#include <utility>
#include <vector>

#include "embag/batched.hpp"
#include "embag/embag.h"
#include "embag/embag.hpp"
#include "embag/optim.hpp"
#include "embag/quantize.hpp"
#include "entry_points.hpp"
#include "released_memory.hpp"
#include "zeroed_memory.hpp"

namespace py = pybind11;
using namespace py::literals;

namespace {

// DLPack's ABI (dlpack.h, v0.6-0.8, the version PyTorch 1.13 and NumPy 1.24 export), declared here
// because Debian 12 packages no dlpack header. Only read: the producer's deleter runs when the
// capsule is collected, since this module never renames it "used_dltensor".
struct dl_device {
  std::int32_t device_type;  // 1: kDLCPU
  std::int32_t device_id;
};
struct dl_data_type {
  std::uint8_t code;  // 0: int, 1: uint, 2: float, 4: bfloat
  std::uint8_t bits;
  std::uint16_t lanes;
};
struct dl_tensor {
  void* data;
  dl_device device;
  std::int32_t ndim;
  dl_data_type dtype;
  std::int64_t* shape;
  std::int64_t* strides;  // in elements; null: C-contiguous
  std::uint64_t byte_offset;
};
struct dl_managed_tensor {
  dl_tensor tensor;
  void* manager_ctx;
  void (*deleter)(dl_managed_tensor*);
};
constexpr std::int32_t dl_cpu = 1;

// Errors raised by the argument checks of this module (not the library): a Python array that is
// not what the call takes. Code "unsupported_array"; a TypeError as well as an embag.Error.
constexpr const char* unsupported_array = "unsupported_array";

struct error_classes {
  py::object base, by_code[128], unsupported;
};
error_classes& errors() {
  static error_classes* classes = new error_classes;  // never destroyed: the interpreter owns the types
  return *classes;
}

[[noreturn]] void raise(py::handle type, const std::string& code, const std::string& message) {
  py::object exception = py::reinterpret_borrow<py::object>(type)(message);
  exception.attr("code") = code;
  PyErr_SetObject(type.ptr(), exception.ptr());
  throw py::error_already_set();
}

[[noreturn]] void refuse(const std::string& message) { raise(errors().unsupported, unsupported_array, message); }

[[noreturn]] void invalid_option(const std::string& message) {
  raise(errors().by_code[static_cast<int>(embag::errc::invalid_option)], "invalid_option", message);
}

// The element types embag reads (the 16-bit ones only as tables an optimizer trains: u16 is a
// NumPy array holding bfloat16 or float16 bits, NumPy having no bfloat16); any other is named in
// messages by array_arg::other_type.
enum class element { f32, i32, i64, f16, bf16, u16, other };

const char* name_of(element e) {
  switch (e) {
    case element::f32: return "float32";
    case element::i32: return "int32";
    case element::i64: return "int64";
    case element::f16: return "float16";
    case element::bf16: return "bfloat16";
    case element::u16: return "uint16";
    case element::other: break;
  }
  return "other";
}

element from_buffer_format(std::string_view code, py::ssize_t itemsize) {
  // struct-module codes, with an optional byte order prefix ('<', '=', '@'; the library is
  // little-endian only, so '>' and '!' are refused as other)
  if (!code.empty() && (code[0] == '<' || code[0] == '=' || code[0] == '@')) code.remove_prefix(1);
  if (code == "f" && itemsize == 4) return element::f32;
  if ((code == "i" || code == "l") && itemsize == 4) return element::i32;
  if ((code == "l" || code == "q") && itemsize == 8) return element::i64;
  if (code == "e" && itemsize == 2) return element::f16;
  if (code == "H" && itemsize == 2) return element::u16;
  return element::other;
}

element from_dlpack_type(dl_data_type t) {
  if (t.lanes != 1) return element::other;
  if (t.code == 2 && t.bits == 32) return element::f32;
  if (t.code == 0 && t.bits == 32) return element::i32;
  if (t.code == 0 && t.bits == 64) return element::i64;
  if (t.code == 2 && t.bits == 16) return element::f16;
  if (t.code == 4 && t.bits == 16) return element::bf16;
  if (t.code == 1 && t.bits == 16) return element::u16;
  return element::other;
}

using embag_python::tuple_text;

// A Py_buffer exported for one call, released with the argument. Moving it copies the struct: the
// exporter's release reads only `obj` and its own state (a bytes object's shape may point into the
// struct, which is why borrow copies shape and strides out before anything moves).
class exported_buffer {
 public:
  exported_buffer() = default;
  exported_buffer(exported_buffer&& other) noexcept : view_(other.view_), held_(std::exchange(other.held_, false)) {}
  exported_buffer& operator=(exported_buffer&& other) noexcept {
    if (this != &other) {
      release();
      view_ = other.view_;
      held_ = std::exchange(other.held_, false);
    }
    return *this;
  }
  ~exported_buffer() { release(); }

  // PyObject_GetBuffer with strides and format (read-only accepted; read_only says which)
  bool take(PyObject* object) {
    held_ = PyObject_GetBuffer(object, &view_, PyBUF_RECORDS_RO) == 0;
    return held_;
  }
  const Py_buffer& view() const { return view_; }

 private:
  void release() {
    if (std::exchange(held_, false)) PyBuffer_Release(&view_);
  }
  Py_buffer view_{};
  bool held_ = false;
};

// NumPy's limit on dimensions (NPY_MAXDIMS in NumPy 1.x); a torch tensor with more is refused.
constexpr int max_dims = 32;

// One array argument, borrowed for the duration of a call: its memory, element type and shape,
// and what keeps it alive and exported (a Py_buffer, a DLPack capsule, or the torch tensor itself).
// Shape and strides live in fixed arrays: a call reads several arrays, and small calls (one bag of
// one index) are dominated by what each argument costs to read.
struct array_arg {
  void* data = nullptr;
  element type = element::other;
  std::string other_type;  // what type == other is, for messages: "float64", "complex64", "format 'd'"
  int dims = 0;
  std::array<std::int64_t, max_dims> shape;  // [0, dims) set, the rest never read
  std::array<std::int64_t, max_dims> strides;  // in elements
  bool read_only = false;
  bool is_torch_tensor = false;  // the output of a call is a tensor when its weight or input is one
  exported_buffer buffer;
  py::object keeper;  // the DLPack capsule or the tensor

  std::int64_t size() const {
    std::int64_t n = 1;
    for (int d = 0; d < dims; ++d) n *= shape[d];
    return n;
  }
  int ndim() const { return dims; }
  std::span<const std::int64_t> shape_span() const { return {shape.data(), static_cast<std::size_t>(dims)}; }
  std::span<const std::int64_t> strides_span() const { return {strides.data(), static_cast<std::size_t>(dims)}; }
};

void check_dims(std::int64_t ndim, std::string_view what) {
  if (ndim > max_dims)
    refuse(std::string(what) + " has " + std::to_string(ndim) + " dimensions; embag reads arrays of at most " +
           std::to_string(max_dims));
}

void set_contiguous_strides(array_arg& a) {
  std::int64_t stride = 1;
  for (int d = a.dims - 1; d >= 0; --d) a.strides[d] = stride, stride *= a.shape[d];
}

array_arg from_dlpack_capsule(py::object capsule, std::string_view what) {
  auto* managed = static_cast<dl_managed_tensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  if (managed == nullptr) {
    PyErr_Clear();
    refuse(std::string(what) + ": its DLPack capsule was already consumed (a \"dltensor\" capsule can be read once)");
  }
  const dl_tensor& t = managed->tensor;
  if (t.device.device_type != dl_cpu)
    refuse(std::string(what) + " is on device type " + std::to_string(t.device.device_type) +
           " (DLPack); embag runs on the CPU: move it with .cpu()");
  check_dims(t.ndim, what);
  array_arg a;
  a.type = from_dlpack_type(t.dtype);
  if (a.type == element::other) {
    static const char* const dl_codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
    a.other_type = (t.dtype.code < 7 ? std::string(dl_codes[t.dtype.code]) : "DLPack type " + std::to_string(t.dtype.code) + " ") +
                   std::to_string(t.dtype.bits) + (t.dtype.lanes == 1 ? "" : " x" + std::to_string(t.dtype.lanes));
  }
  a.dims = t.ndim;
  std::copy(t.shape, t.shape + t.ndim, a.shape.begin());
  if (t.strides != nullptr) {
    std::copy(t.strides, t.strides + t.ndim, a.strides.begin());
  } else {
    set_contiguous_strides(a);
  }
  a.data = static_cast<char*>(t.data) + t.byte_offset;
  a.keeper = std::move(capsule);
  return a;
}

// a's strides in elements from strides in bytes (a stride that is not a whole number of elements
// cannot be described to the library)
void set_strides_from_bytes(array_arg& a, const py::ssize_t* byte_strides, py::ssize_t itemsize, std::string_view what) {
  for (int d = 0; d < a.dims; ++d) {
    if (itemsize == 0 || byte_strides[d] % itemsize != 0)
      refuse(std::string(what) + " has a byte stride of " + std::to_string(byte_strides[d]) + ", not a multiple of its " +
             std::to_string(itemsize) + "-byte elements");
    a.strides[d] = byte_strides[d] / itemsize;
  }
}

array_arg from_buffer(py::handle object, std::string_view what) {
  array_arg a;
  if (!a.buffer.take(object.ptr())) throw py::error_already_set();
  const Py_buffer& view = a.buffer.view();
  check_dims(view.ndim, what);
  const char* format = view.format != nullptr ? view.format : "B";
  a.data = view.buf;
  a.type = from_buffer_format(format, view.itemsize);
  if (a.type == element::other)
    a.other_type = py::hasattr(object, "dtype") ? std::string(py::str(object.attr("dtype"))) : "format '" + std::string(format) + "'";
  a.dims = view.ndim;
  for (int d = 0; d < view.ndim; ++d) a.shape[d] = view.shape != nullptr ? view.shape[d] : view.len / view.itemsize;
  if (view.strides != nullptr) set_strides_from_bytes(a, view.strides, view.itemsize, what);
  else set_contiguous_strides(a);
  a.read_only = view.readonly != 0;
  return a;
}

// A NumPy array (or subclass: numpy.memmap) read from its own struct: data, dimensions, strides,
// dtype and flags, where an export through the buffer protocol has NumPy format a type string and
// allocate a description of the array for each call (several microseconds of a call that follows a
// large one). A reference to the array is kept for the call.
array_arg from_ndarray(py::handle object, std::string_view what) {
  const auto* array = py::detail::array_proxy(object.ptr());
  const auto* dtype = py::detail::array_descriptor_proxy(array->descr);
  check_dims(array->nd, what);
  array_arg a;
  // the dtype's character code is the buffer protocol's format character ('f', 'l', 'e', ...);
  // with its byte order as the prefix, '>' for a byte-swapped array
  const char format[] = {dtype->byteorder == '>' ? '>' : '=', dtype->type};
  a.type = from_buffer_format({format, 2}, dtype->elsize);
  if (a.type == element::other) a.other_type = py::str(object.attr("dtype"));
  a.data = array->data;
  a.dims = array->nd;
  std::copy(array->dimensions, array->dimensions + array->nd, a.shape.begin());
  set_strides_from_bytes(a, array->strides, dtype->elsize, what);
  a.read_only = (array->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_) == 0;
  a.keeper = py::reinterpret_borrow<py::object>(object);
  return a;
}

// What this module reads of torch, looked up once the first torch.Tensor is seen (torch is
// imported by then and never unloaded, so the objects outlive every use).
struct torch_objects {
  PyTypeObject* tensor_base = nullptr;  // torch._C._TensorBase: torch.Tensor, nn.Parameter and subclasses
  PyObject* strided = nullptr;          // torch.strided, the only layout with a data pointer and strides
  std::pair<PyObject*, element> dtypes[6]{};  // torch.float32 ... compared by identity
  // torch.from_numpy: outputs are made as NumPy arrays, then shared with a tensor (see allocate)
  PyObject* from_numpy;
  // attribute names, interned once
  PyObject *data_ptr, *shape, *stride, *dtype, *layout, *is_cpu, *is_neg, *device;
};
torch_objects* torch_seen = nullptr;

torch_objects* find_torch(PyTypeObject* tensor_base) {
  auto* t = new torch_objects;  // never destroyed, as the torch objects it holds
  py::module_ torch = py::module_::import("torch");
  t->tensor_base = tensor_base;
  t->strided = py::object(torch.attr("strided")).release().ptr();
  const std::pair<const char*, element> dtypes[] = {{"float32", element::f32}, {"int32", element::i32},
                                                    {"int64", element::i64},   {"float16", element::f16},
                                                    {"bfloat16", element::bf16}, {"uint16", element::u16}};
  int n = 0;
  for (auto [name, e] : dtypes)
    if (py::hasattr(torch, name)) t->dtypes[n++] = {py::object(torch.attr(name)).release().ptr(), e};  // torch 1.13 has no uint16
  t->from_numpy = py::object(torch.attr("from_numpy")).release().ptr();
  t->data_ptr = PyUnicode_InternFromString("data_ptr");
  t->shape = PyUnicode_InternFromString("shape");
  t->stride = PyUnicode_InternFromString("stride");
  t->dtype = PyUnicode_InternFromString("dtype");
  t->layout = PyUnicode_InternFromString("layout");
  t->is_cpu = PyUnicode_InternFromString("is_cpu");
  t->is_neg = PyUnicode_InternFromString("is_neg");
  t->device = PyUnicode_InternFromString("device");
  return t;
}

// torch's objects when `object` is a torch.Tensor, else null (also before torch has been seen:
// then its type's bases are searched by name, since importing torch here would be slow and may fail).
const torch_objects* torch_tensor(py::handle object) {
  if (torch_seen != nullptr) return PyObject_TypeCheck(object.ptr(), torch_seen->tensor_base) ? torch_seen : nullptr;
  for (py::handle base : py::type::handle_of(object).attr("__mro__")) {
    auto* type = reinterpret_cast<PyTypeObject*>(base.ptr());
    if (std::strcmp(type->tp_name, "torch._C._TensorBase") == 0) return torch_seen = find_torch(type);
  }
  return nullptr;
}

py::object get(py::handle object, PyObject* name) {
  PyObject* result = PyObject_GetAttr(object.ptr(), name);
  if (result == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(result);
}

py::object call(py::handle object, PyObject* method) {
  PyObject* result = PyObject_CallMethodNoArgs(object.ptr(), method);
  if (result == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(result);
}

void read_extents(py::handle sequence, std::array<std::int64_t, max_dims>& into, int dims) {
  for (int d = 0; d < dims; ++d) into[d] = PyLong_AsLongLong(PyTuple_GET_ITEM(sequence.ptr(), d));
}

// A CPU tensor read through its attributes (data_ptr(), shape, stride(), dtype), which costs a
// fraction of a DLPack export (torch 1.13's to_dlpack makes an as_strided view through the
// dispatcher and a capsule per call). The tensor itself is kept for the call: it owns the storage.
array_arg from_torch_tensor(py::handle tensor, const torch_objects& torch, std::string_view what) {
  // a sparse or MKL-DNN tensor has no data pointer and strides to read
  py::object layout = get(tensor, torch.layout);
  if (layout.ptr() != torch.strided)
    refuse(std::string(what) + " is a " + std::string(py::str(layout)) + " tensor; embag reads dense (torch.strided) tensors");
  if (get(tensor, torch.is_cpu).ptr() != Py_True)
    refuse(std::string(what) + " is on " + std::string(py::str(get(tensor, torch.device))) +
           "; embag runs on the CPU: move it with .cpu()");
  // a lazily negated view (the imaginary part of a conjugate) holds the negated values in memory
  if (call(tensor, torch.is_neg).ptr() == Py_True)
    refuse(std::string(what) + " is a negated view (Tensor.is_neg()): its memory holds the values negated; pass "
           "Tensor.resolve_neg() to materialise it");
  array_arg a;
  py::object dtype = get(tensor, torch.dtype);
  for (auto [object, e] : torch.dtypes)
    if (object == dtype.ptr()) a.type = e;
  if (a.type == element::other) {
    a.other_type = py::str(dtype);
    if (a.other_type.starts_with("torch.")) a.other_type.erase(0, 6);
  }
  py::object shape = get(tensor, torch.shape);  // torch.Size, a tuple
  py::object strides = call(tensor, torch.stride);
  if (!PyTuple_Check(shape.ptr()) || !PyTuple_Check(strides.ptr()) || PyTuple_GET_SIZE(shape.ptr()) != PyTuple_GET_SIZE(strides.ptr()))
    refuse(std::string(what) + ": its shape and stride() are not tuples of one length");
  check_dims(PyTuple_GET_SIZE(shape.ptr()), what);
  a.dims = static_cast<int>(PyTuple_GET_SIZE(shape.ptr()));
  read_extents(shape, a.shape, a.dims);
  read_extents(strides, a.strides, a.dims);
  if (PyErr_Occurred()) throw py::error_already_set();
  a.data = PyLong_AsVoidPtr(call(tensor, torch.data_ptr).ptr());  // storage offset included
  if (PyErr_Occurred()) throw py::error_already_set();
  a.keeper = py::reinterpret_borrow<py::object>(tensor);
  a.is_torch_tensor = true;
  return a;
}

// "function: what must be a NumPy array ...", for an argument that is no array at all.
[[noreturn]] void refuse_not_an_array(py::handle object, std::string_view what, std::string_view function) {
  refuse((function.empty() ? "" : std::string(function) + ": ") + std::string(what) +
         " must be a NumPy array or a CPU torch.Tensor (anything with the buffer protocol or DLPack), got " +
         std::string(py::str(py::type::handle_of(object).attr("__name__"))));
}

array_arg borrow(py::handle object, std::string_view what, std::string_view function = {}) {
  if (PyCapsule_CheckExact(object.ptr())) return from_dlpack_capsule(py::reinterpret_borrow<py::object>(object), what);
  if (py::detail::npy_api::get().PyArray_Check_(object.ptr())) return from_ndarray(object, what);
  if (PyObject_CheckBuffer(object.ptr())) return from_buffer(object, what);
  if (const torch_objects* torch = torch_tensor(object)) return from_torch_tensor(object, *torch, what);
  if (py::hasattr(object, "__dlpack__")) return from_dlpack_capsule(object.attr("__dlpack__")(), what);
  refuse_not_an_array(object, what, function);
}

bool c_contiguous(const array_arg& a) {
  // no elements, no layout to read (torch exports an empty tensor's strides as it likes: (1, 1))
  if (a.size() == 0) return true;
  std::int64_t expected = 1;
  for (int d = a.ndim() - 1; d >= 0; --d) {
    // a dimension of extent 1 may have any stride (NumPy's relaxed strides)
    if (a.shape[d] != 1 && a.strides[d] != expected) return false;
    expected *= a.shape[d];
  }
  return true;
}

std::string describe(const array_arg& a) {
  return (a.type == element::other ? a.other_type : std::string(name_of(a.type))) + " of shape " + tuple_text(a.shape_span());
}

struct requirement {
  std::initializer_list<element> types;
  int ndim = -1;  // -1: any
  bool writable = false;
};

// An array the library reads or writes as one contiguous block.
array_arg contiguous(py::handle object, std::string_view what, requirement need, std::string_view function = {}) {
  array_arg a = borrow(object, what, function);
  bool type_ok = false;
  for (element e : need.types) type_ok |= a.type == e;
  if (!type_ok) {
    std::string allowed;
    for (element e : need.types) allowed += (allowed.empty() ? "" : " or ") + std::string(name_of(e));
    refuse(std::string(what) + " must be " + allowed + ", got " + describe(a));
  }
  if (need.ndim >= 0 && a.ndim() != need.ndim)
    refuse(std::string(what) + " must have " + std::to_string(need.ndim) + " dimension" + (need.ndim == 1 ? "" : "s") + ", got " +
           describe(a));
  if (!c_contiguous(a))
    refuse(std::string(what) + " (" + describe(a) + ") is not C-contiguous (strides " + tuple_text(a.strides_span()) +
           " in elements): embag reads arrays in place and never copies them silently; pass a contiguous copy "
           "(numpy.ascontiguousarray, Tensor.contiguous) if a copy is what you want");
  if (need.writable && a.read_only) refuse(std::string(what) + " (" + describe(a) + ") is read-only, and this call writes it");
  return a;
}

std::optional<array_arg> optional_contiguous(py::handle object, std::string_view what, requirement need,
                                             std::string_view function = {}) {
  if (object.is_none()) return std::nullopt;
  return contiguous(object, what, need, function);
}

// A 2-D f32 table whose rows may be strided (a slice of a wider table): table_view has a row
// stride, so only the elements within a row must be contiguous.
void check_rows_in_place(const array_arg& a, std::string_view what) {
  // no elements, no layout to read (torch gives an empty tensor any strides: (0, 0) after contiguous())
  if (a.size() == 0) return;
  bool rows_dense = a.shape[1] == 1 || a.strides[1] == 1;
  bool rows_forward = a.shape[0] <= 1 || a.strides[0] >= a.shape[1];
  if (!rows_dense || !rows_forward)
    refuse(std::string(what) + " (" + describe(a) + ") has strides " + tuple_text(a.strides_span()) +
           " in elements: embag reads a table in place, which needs each row's elements adjacent and rows in "
           "increasing order (a row stride >= dim); pass numpy.ascontiguousarray / Tensor.contiguous() to copy it");
}

void f32_table_check(const array_arg& a, std::string_view what, bool writable) {
  if (a.type != element::f32 || a.ndim() != 2) refuse(std::string(what) + " must be a 2-D float32 table, got " + describe(a));
  check_rows_in_place(a, what);
  if (writable && a.read_only) refuse(std::string(what) + " (" + describe(a) + ") is read-only, and this call rescales its rows in place");
}

array_arg f32_table(py::handle object, std::string_view what, bool writable) {
  array_arg a = borrow(object, what);
  f32_table_check(a, what, writable);
  return a;
}

std::int64_t row_stride_of(const array_arg& table) { return table.shape[0] <= 1 ? 0 : table.strides[0]; }

embag::index_span indices_of(const array_arg& a) {
  return {a.data, a.size(), a.type == element::i32 ? embag::index_type::i32 : embag::index_type::i64};
}

constexpr requirement index_array{{element::i32, element::i64}, -1, false};

// The bags of one call, as the functional API describes them: indices, then offsets (1-D input)
// or a fixed bag length (2-D input), and optional per-sample weights.
struct bag_args {
  array_arg indices;
  std::optional<array_arg> offsets;
  std::optional<array_arg> weights;
  std::int64_t fixed_length = 0;

  embag::bags bags() const {
    std::span<const float> w;
    if (weights) w = {static_cast<const float*>(weights->data), static_cast<std::size_t>(weights->size())};
    if (offsets) return embag::bags::from_offsets(indices_of(indices), indices_of(*offsets), w);
    return embag::bags::fixed(indices_of(indices), fixed_length, w);
  }
};

bag_args take_bags(py::handle indices, py::handle offsets, std::int64_t fixed_length, py::handle weights) {
  bag_args b{contiguous(indices, "input", index_array), optional_contiguous(offsets, "offsets", index_array),
             optional_contiguous(weights, "per_sample_weights", {{element::f32}, -1, false}), fixed_length};
  return b;
}

std::atomic<int> max_threads{0};  // embag.set_num_threads; 0: every thread TBB gives the caller

embag::options make_options(const std::string& mode, std::optional<std::int64_t> padding_idx, bool include_last_offset,
                            bool scale_grad_by_freq) {
  embag::options o;
  auto m = embag::mode_from_string(mode);
  if (!m)
    raise(errors().by_code[static_cast<int>(embag::errc::invalid_option)], "invalid_option",
          "mode = '" + mode + "' is not one of 'sum', 'mean', 'max', 'sqrtn', 'none'");
  o.mode = *m;
  o.padding_idx = padding_idx;
  o.include_last_offset = include_last_offset;
  o.scale_grad_by_freq = scale_grad_by_freq;
  o.execution.max_threads = max_threads.load(std::memory_order_relaxed);
  return o;
}

embag::matrix_view<float> matrix_of(const array_arg& a) {
  return {static_cast<float*>(a.data), a.shape[0], a.ndim() > 1 ? a.shape[1] : 1, 0};
}

// Reused per OS thread (each Python thread is one), so that backward and in-place max_norm stop
// allocating once it has grown.
embag::workspace& thread_workspace() {
  thread_local embag::workspace scratch;
  return scratch;
}

// ---------------------------------------------------------------------------------------------
// Compressed tables: embag.Table.

struct compressed {
  embag::compressed_table table;
};

// The compressed table `object` is, or null. By its Python type, looked up once: pybind11's
// isinstance and cast find it in a map keyed by the C++ type's name, which a call that follows a
// large one finds out of the caches.
const compressed* compressed_of(py::handle object) {
  static auto* const type = reinterpret_cast<PyTypeObject*>(py::type::of<compressed>().ptr());
  if (!PyObject_TypeCheck(object.ptr(), type)) return nullptr;
  return &object.cast<const compressed&>();
}

// torch.from_numpy(array): a tensor sharing a NumPy array's memory (torch is imported: a tensor
// was read).
py::object as_torch_tensor(py::object array) {
  PyObject* tensor = PyObject_CallOneArg(torch_seen->from_numpy, array.ptr());
  if (tensor == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(tensor);
}

// Output blocks Python released (released_memory.hpp says why they are kept).
embag_python::released_pool<embag_python::output_block>& output_blocks() {
  static auto* pool = new embag_python::released_pool<embag_python::output_block>;  // never destroyed: capsules may outlive exit
  return *pool;
}

// An output's error: "an output of shape (2, 3) and dtype float32: why".
embag::error output_error(const std::vector<py::ssize_t>& shape, const py::dtype& type, embag::errc code, const char* why) {
  std::string extents;
  for (py::ssize_t n : shape) extents += (extents.empty() ? "" : ", ") + std::to_string(n);
  return embag::error(code, "an output of shape (" + extents + ") and dtype " + py::cast<std::string>(type.attr("name")) +
                                ": " + why);
}

// The bytes of an output of `shape` and `type`, refused when negative or overflowing.
std::size_t output_bytes(const std::vector<py::ssize_t>& shape, const py::dtype& type) {
  std::size_t bytes = static_cast<std::size_t>(type.itemsize());
  for (py::ssize_t n : shape) {
    if (n < 0) throw output_error(shape, type, embag::errc::invalid_shape, "an extent is negative");
    if (__builtin_mul_overflow(bytes, static_cast<std::size_t>(n), &bytes) || bytes > static_cast<std::size_t>(PTRDIFF_MAX))
      throw output_error(shape, type, embag::errc::size_overflow, "its size in bytes overflows");
  }
  return bytes;
}

// A new C-contiguous NumPy array of `shape` and `type` in a kept block (or a new one); the block
// goes back to the pool when the array (and whatever shares it: views, a tensor) is released.
py::array new_block_array(const std::vector<py::ssize_t>& shape, const py::dtype& type) {
  const std::size_t bytes = output_bytes(shape, type);
  auto* block = output_blocks().take([&](const embag_python::output_block& b) { return b.suits(bytes); });
  try {
    if (block == nullptr) block = new embag_python::output_block(bytes);
  } catch (const std::bad_alloc&) {
    throw output_error(shape, type, embag::errc::out_of_memory, "out of memory");
  }
  py::capsule owner(block, [](void* p) { output_blocks().release(static_cast<embag_python::output_block*>(p)); });
  return py::array(type, shape, block->data(), owner);
}

// A new C-contiguous NumPy array of zeros (a dense gradient): fresh zero pages from the kernel
// when large (zeroed_memory.hpp says why), a kept block zeroed here when not.
py::array new_zeroed_array(const std::vector<py::ssize_t>& shape, const py::dtype& type) {
  const std::size_t bytes = output_bytes(shape, type);
  if (bytes < embag_python::lazily_zeroed_from) {
    py::array array = new_block_array(shape, type);
    if (bytes != 0) std::memset(array.mutable_data(), 0, bytes);
    return array;
  }
  struct mapping {
    void* data;
    std::size_t bytes;
  };
  mapping* kept = nullptr;
  try {
    kept = new mapping{embag_python::map_zeroed(bytes), bytes};
  } catch (const std::bad_alloc&) {
    throw output_error(shape, type, embag::errc::out_of_memory, "out of memory");
  }
  py::capsule owner(kept, [](void* p) {
    auto* m = static_cast<mapping*>(p);
    embag_python::unmap_zeroed(m->data, m->bytes);
    delete m;
  });
  return py::array(type, shape, kept->data, owner);
}

// Whether any of `like` is a torch tensor: the outputs made for it are tensors too.
bool any_tensor(const py::sequence& like) {
  return std::any_of(like.begin(), like.end(), [](py::handle a) { return torch_tensor(a) != nullptr; });
}

// A new array as the caller's type: shared with a tensor when as_tensor (torch was seen).
py::object as_callers_type(py::array array, bool as_tensor) {
  return as_tensor ? as_torch_tensor(std::move(array)) : py::object(std::move(array));
}

// The outputs of a forward call, allocated here once the arguments are read and checked: NumPy
// arrays, or torch tensors when the weight or the input is one (the caller's array type). Each is
// read back from what this module just made (C-contiguous, writable), without an export.
struct new_array {
  py::object object;
  array_arg view;
};

new_array allocate(bool as_tensor, std::int64_t rows, std::int64_t cols, element type) {
  new_array made;
  array_arg& a = made.view;
  a.type = type;
  a.dims = 2;
  a.shape[0] = rows, a.shape[1] = cols;
  set_contiguous_strides(a);
  py::array array = new_block_array({rows, cols}, type == element::f32 ? py::dtype::of<float>() : py::dtype::of<std::int64_t>());
  a.data = array.mutable_data();
  made.object = as_callers_type(std::move(array), as_tensor);
  return made;
}

// embedding_bag's forward into a new rows x cols float32 output (and, with_max_indices, the rows x
// cols int64 argmax mode max records), returned as out or (out, max_indices).
py::object forward_bags(py::handle table, const bag_args& b, embag::options opts, std::optional<float> max_norm,
                        float norm_type, std::int64_t rows, bool with_max_indices, std::string_view function = {}) {
  opts.max_norm = max_norm;
  opts.norm_type = norm_type;
  // torch's max_norm rescales a float32 weight's rows in place; without it the table is only read
  const bool in_place = max_norm.has_value();
  const compressed* packed = compressed_of(table);
  std::optional<array_arg> w;  // none: a compressed table
  bool sixteen_bits = false;  // a float16 or bfloat16 tensor or array (embag.nn's weight, trained in 16 bits by embag.optim)
  if (packed == nullptr) {
    w = borrow(table, "weight", function);
    sixteen_bits = (w->type == element::f16 || w->type == element::bf16) && w->ndim() == 2;
    if (sixteen_bits) check_rows_in_place(*w, "weight");
    else f32_table_check(*w, "weight", in_place);
  }
  const std::int64_t cols = w ? w->shape[1] : packed->table.dim();
  bool as_tensor = b.indices.is_torch_tensor || (w && w->is_torch_tensor);
  new_array out = allocate(as_tensor, rows, cols, element::f32);
  std::optional<new_array> argmax;
  std::span<std::int64_t> argmax_span;
  if (with_max_indices) {
    argmax = allocate(as_tensor, rows, cols, element::i64);
    argmax_span = {static_cast<std::int64_t*>(argmax->view.data), static_cast<std::size_t>(argmax->view.size())};
  }
  embag::matrix_view<float> y = matrix_of(out.view);
  {
    py::gil_scoped_release unlocked;
    if (!w) {
      embag::forward(packed->table.view(), b.bags(), opts, y, argmax_span, &thread_workspace());
    } else if (sixteen_bits) {  // read in place as a compressed table of that layout
      embag::compressed_table_view view{static_cast<const std::byte*>(w->data), w->shape[0], w->shape[1],
                                        row_stride_of(*w) * 2,
                                        w->type == element::f16 ? embag::dtype::f16 : embag::dtype::bf16};
      embag::forward(view, b.bags(), opts, y, argmax_span, &thread_workspace());
    } else {
      embag::table_view<float> view{static_cast<float*>(w->data), w->shape[0], w->shape[1], row_stride_of(*w)};
      if (in_place) {
        opts.max_norm_mode = embag::max_norm_flavour::in_place;
        embag::forward(view, b.bags(), opts, y, argmax_span, &thread_workspace());
      } else {
        embag::forward(embag::table_view<const float>(view), b.bags(), opts, y, argmax_span, &thread_workspace());
      }
    }
  }
  return with_max_indices ? py::object(py::make_tuple(out.object, argmax->object)) : out.object;
}

py::object forward(py::object table, py::handle indices, py::handle offsets, std::int64_t fixed_length,
                   py::handle weights, const std::string& mode, std::optional<std::int64_t> padding_idx,
                   bool include_last_offset, std::optional<float> max_norm, float norm_type, std::int64_t rows,
                   bool with_max_indices) {
  return forward_bags(table, take_bags(indices, offsets, fixed_length, weights),
                      make_options(mode, padding_idx, include_last_offset, false), max_norm, norm_type, rows,
                      with_max_indices);
}

// ---------------------------------------------------------------------------------------------
// The bags' layout in torch's two forms (embag_python::layout_of), read from the arrays' shapes.

// An argument's extents as its .shape gives them (NumPy's tuple, torch's torch.Size), where the
// array itself is not read here (dims -1: None).
struct shape_attribute {
  int dims = -1;
  std::array<std::int64_t, max_dims> extents;
  std::optional<std::span<const std::int64_t>> given() const {
    if (dims < 0) return std::nullopt;
    return std::span<const std::int64_t>(extents.data(), static_cast<std::size_t>(dims));
  }
};

shape_attribute shape_of(py::handle object, std::string_view what, std::string_view function) {
  shape_attribute s;
  if (object.is_none()) return s;
  static PyObject* const shape_name = PyUnicode_InternFromString("shape");
  PyObject* shape = PyObject_GetAttr(object.ptr(), shape_name);
  if (shape == nullptr) {
    if (!PyErr_ExceptionMatches(PyExc_AttributeError)) throw py::error_already_set();
    PyErr_Clear();
    refuse_not_an_array(object, what, function);
  }
  py::object kept = py::reinterpret_steal<py::object>(shape);
  if (!PyTuple_Check(shape)) refuse(std::string(function) + ": " + std::string(what) + ".shape is not a tuple");
  check_dims(PyTuple_GET_SIZE(shape), what);
  s.dims = static_cast<int>(PyTuple_GET_SIZE(shape));
  read_extents(kept, s.extents, s.dims);
  if (PyErr_Occurred()) throw py::error_already_set();
  return s;
}

// embag._embag.bag_layout, the Python layer's reading of its bags (the backward functions, embag.nn):
// (offsets, fixed length, number of bags), offsets None for a 2-D input (all zeros when it is B x 0).
py::tuple bag_layout_of(py::handle input, py::handle offsets, py::handle per_sample_weights, bool include_last_offset,
                        std::string_view function) {
  shape_attribute in = shape_of(input, "input", function);
  if (in.dims < 0) refuse_not_an_array(input, "input", function);
  shape_attribute off = shape_of(offsets, "offsets", function);
  shape_attribute psw = in.dims == 2 ? shape_of(per_sample_weights, "per_sample_weights", function) : shape_attribute{};
  embag_python::bag_layout l = embag_python::layout_of(*in.given(), off.given(), psw.given(), include_last_offset, function);
  py::object bag_offsets = py::reinterpret_borrow<py::object>(offsets);
  if (l.zero_offsets) bag_offsets = as_callers_type(new_zeroed_array({l.bags}, py::dtype::of<std::int64_t>()),
                                                    torch_tensor(input) != nullptr);
  else if (l.fixed_length != 0) bag_offsets = py::none();
  return py::make_tuple(bag_offsets, l.fixed_length, l.bags);
}

// ---------------------------------------------------------------------------------------------
// embag.embedding_bag and embag.embedding_bag_forward: functions of this module called through
// CPython's vectorcall protocol, with torch's signatures (entry_points.hpp says why).

// Binds a call's arguments (positional, then keywords by name) to a signature's parameters as
// Python binds a def's: nullptr where one is not given; Python's own TypeErrors otherwise.
template <std::size_t N>
struct parameters {
  const char* function;
  std::array<const char*, N> names;
  std::size_t required;  // the first `required` have no default
  std::array<PyObject*, N> interned{};

  std::array<PyObject*, N> bind(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    if (interned[0] == nullptr)
      for (std::size_t i = 0; i < N; ++i) interned[i] = PyUnicode_InternFromString(names[i]);
    if (nargs > static_cast<Py_ssize_t>(N))
      throw py::type_error(std::string(function) + "() takes at most " + std::to_string(N) + " arguments (" +
                           std::to_string(nargs) + " given)");
    std::array<PyObject*, N> bound{};
    std::copy(args, args + nargs, bound.begin());
    const Py_ssize_t keywords = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < keywords; ++k) {
      PyObject* key = PyTuple_GET_ITEM(kwnames, k);
      std::size_t i = 0;  // keywords from source code are interned: found by identity, else by value
      while (i < N && interned[i] != key) ++i;
      if (i == N) {
        i = 0;
        while (i < N && PyUnicode_Compare(interned[i], key) != 0) ++i;
      }
      if (i == N)
        throw py::type_error(std::string(function) + "() got an unexpected keyword argument '" +
                             std::string(py::str(key)) + "'");
      if (bound[i] != nullptr)
        throw py::type_error(std::string(function) + "() got multiple values for argument '" + names[i] + "'");
      bound[i] = args[nargs + k];
    }
    for (std::size_t i = 0; i < required; ++i)
      if (bound[i] == nullptr)
        throw py::type_error(std::string(function) + "() missing required argument '" + names[i] + "'");
    return bound;
  }
};

// What the forward functions read of their arguments, wherever each signature has them.
struct forward_call {
  PyObject *input, *weight, *offsets, *max_norm, *norm_type, *mode, *per_sample_weights, *include_last_offset,
      *padding_idx;
};

std::string mode_of(PyObject* mode) {
  Py_ssize_t size = 0;
  const char* text = PyUnicode_Check(mode) ? PyUnicode_AsUTF8AndSize(mode, &size) : nullptr;
  if (text == nullptr) {
    PyErr_Clear();
    invalid_option("mode = " + std::string(py::repr(mode)) + " is not one of 'sum', 'mean', 'max', 'sqrtn', 'none'");
  }
  return {text, static_cast<std::size_t>(size)};
}

bool is_none(PyObject* object) { return object == nullptr || object == Py_None; }

double float_of(PyObject* object) {
  double value = PyFloat_AsDouble(object);
  if (value == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  return value;
}

// embag._torch_nn's forward, which reads tensors as at::Tensors (embag/__init__.py loads it, once
// torch is imported); None where embag was built without torch's C++ headers.
PyObject* torch_nn_forward() {
  static PyObject* forward = nullptr;  // never released, as the module
  if (forward == nullptr) {
    py::object module = py::module_::import("embag").attr("_load_torch_nn")();
    forward = (module.is_none() ? py::object(py::none()) : py::object(module.attr("forward"))).release().ptr();
  }
  return forward;
}

// Whether a call may go to embag._torch_nn: its weight and input torch tensors, its offsets and
// per_sample_weights tensors or None. (The weight's dtype is left to embag._torch_nn, which reads
// it from the at::Tensor: its Python attribute took 11 us of a call after a large one.)
bool all_tensors(const forward_call& a) {
  const torch_objects* torch = PyObject_CheckBuffer(a.weight) ? nullptr : torch_tensor(a.weight);
  if (torch == nullptr || !PyObject_TypeCheck(a.input, torch->tensor_base)) return false;
  for (PyObject* optional : {a.offsets, a.per_sample_weights})
    if (!is_none(optional) && !PyObject_TypeCheck(optional, torch->tensor_base)) return false;
  return true;
}

// embag.embedding_bag (returns_max_indices false: the output) and embag.embedding_bag_forward
// (true: (output, max_indices), max_indices None unless mode is 'max').
py::object pooled_forward(const forward_call& a, bool returns_max_indices) {
  constexpr std::string_view function = "embedding_bag";
  // torch's defaults of mode and norm_type, as objects made once
  static PyObject* const mean = PyUnicode_InternFromString("mean");
  static PyObject* const two = PyFloat_FromDouble(2.0);
  PyObject* mode_name = a.mode == nullptr ? mean : a.mode;
  PyObject* norm_type = a.norm_type == nullptr ? two : a.norm_type;
  const std::string mode = mode_of(mode_name);
  const bool with_max_indices = returns_max_indices && mode == "max";
  const int last_offset = a.include_last_offset == nullptr ? 0 : PyObject_IsTrue(a.include_last_offset);
  if (last_offset < 0) throw py::error_already_set();
  const bool include_last_offset = last_offset == 1;
  PyObject* offsets = is_none(a.offsets) ? Py_None : a.offsets;
  PyObject* weights = is_none(a.per_sample_weights) ? Py_None : a.per_sample_weights;
  PyObject* padding_idx = is_none(a.padding_idx) ? Py_None : a.padding_idx;
  PyObject* max_norm = is_none(a.max_norm) ? Py_None : a.max_norm;
  py::object result;
  if (all_tensors(a) && torch_nn_forward() != Py_None) {
    py::int_ threads(max_threads.load(std::memory_order_relaxed));
    PyObject* call[] = {a.weight,      a.input,       offsets, weights, mode_name, padding_idx,
                        include_last_offset ? Py_True : Py_False, max_norm, norm_type, threads.ptr(),
                        with_max_indices ? Py_True : Py_False};
    PyObject* out = PyObject_Vectorcall(torch_nn_forward(), call, std::size(call), nullptr);
    if (out == nullptr) throw py::error_already_set();
    result = py::reinterpret_steal<py::object>(out);  // NotImplemented: a weight not float32, read below
  }
  if (!result || result.ptr() == Py_NotImplemented) {
    bag_args b{contiguous(a.input, "input", index_array, function),
               optional_contiguous(offsets, "offsets", index_array, function),
               optional_contiguous(weights, "per_sample_weights", {{element::f32}, -1, false}, function)};
    auto shape = [](const std::optional<array_arg>& a) {
      return a ? std::optional(a->shape_span()) : std::nullopt;
    };
    const embag_python::bag_layout layout = embag_python::layout_of(b.indices.shape_span(), shape(b.offsets),
                                                                    shape(b.weights), include_last_offset, function);
    b.fixed_length = layout.fixed_length;
    if (layout.zero_offsets)
      b.offsets = contiguous(new_zeroed_array({layout.bags}, py::dtype::of<std::int64_t>()), "offsets", index_array);
    std::optional<std::int64_t> padding;
    if (padding_idx != Py_None) {
      padding = PyLong_AsLongLong(padding_idx);
      if (*padding == -1 && PyErr_Occurred()) throw py::error_already_set();
    }
    std::optional<float> norm_limit;
    if (max_norm != Py_None) norm_limit = static_cast<float>(float_of(max_norm));
    result = forward_bags(a.weight, b, make_options(mode, padding, include_last_offset, false), norm_limit,
                          static_cast<float>(float_of(norm_type)), layout.bags, with_max_indices, function);
  }
  if (returns_max_indices && !with_max_indices) return py::make_tuple(result, py::none());
  return result;
}

// The docstrings, each opening with the signature inspect.signature and help() read ("--" ends it).
constexpr const char* embedding_bag_doc =
    "embedding_bag(input, weight, offsets=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, "
    "mode='mean', sparse=False, per_sample_weights=None, include_last_offset=False, padding_idx=None)\n--\n\n"
    "torch.nn.functional.embedding_bag: the pooled rows of each bag (B x D float32).\n\n"
    "weight: a 2-D float32 array or tensor (rows may be strided), or an embag.Table (compressed,\n"
    "possibly mapped). input: int32 or int64, 1-D with offsets (B, or B+1 with include_last_offset)\n"
    "or 2-D (B bags of L indices). mode: 'sum', 'mean', 'max', or embag's 'sqrtn'. per_sample_weights\n"
    "(float32, input's shape) with 'sum', and also 'mean' and 'sqrtn' (embag's weighted forms; torch\n"
    "allows only 'sum'). max_norm rescales the referenced rows of weight in place, as torch does.\n"
    "scale_grad_by_freq and sparse only concern the gradient (embag.nn, embedding_bag_backward).";
constexpr const char* embedding_bag_forward_doc =
    "embedding_bag_forward(input, weight, offsets=None, max_norm=None, norm_type=2.0, mode='mean', "
    "per_sample_weights=None, include_last_offset=False, padding_idx=None)\n--\n\n"
    "embedding_bag's output and, for mode 'max', the table row each maximum came from (B x D int64,\n"
    "-1 for an empty bag; what embedding_bag_backward needs for max). (output, None) otherwise.";

parameters<11> embedding_bag_parameters{
    "embedding_bag",
    {"input", "weight", "offsets", "max_norm", "norm_type", "scale_grad_by_freq", "mode", "sparse",
     "per_sample_weights", "include_last_offset", "padding_idx"},
    2};

// scale_grad_by_freq and sparse only concern the gradient (embag.nn, embedding_bag_backward)
py::object embedding_bag(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  auto p = embedding_bag_parameters.bind(args, nargs, kwnames);
  return pooled_forward({p[0], p[1], p[2], p[3], p[4], p[6], p[8], p[9], p[10]}, false);
}

parameters<9> embedding_bag_forward_parameters{
    "embedding_bag_forward",
    {"input", "weight", "offsets", "max_norm", "norm_type", "mode", "per_sample_weights", "include_last_offset",
     "padding_idx"},
    2};

py::object embedding_bag_forward(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  auto p = embedding_bag_forward_parameters.bind(args, nargs, kwnames);
  return pooled_forward({p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]}, true);
}

void backward_dense(py::handle indices, py::handle offsets, std::int64_t fixed_length, py::handle weights,
                    const std::string& mode, std::optional<std::int64_t> padding_idx, bool include_last_offset,
                    bool scale_grad_by_freq, py::handle grad_output, py::handle grad_weight, py::handle argmax) {
  bag_args b = take_bags(indices, offsets, fixed_length, weights);
  embag::options opts = make_options(mode, padding_idx, include_last_offset, scale_grad_by_freq);
  array_arg dy = contiguous(grad_output, "grad_output", {{element::f32}, 2, false});
  array_arg dw = contiguous(grad_weight, "grad_weight", {{element::f32}, 2, true});
  std::optional<array_arg> arg = optional_contiguous(argmax, "max_indices", {{element::i64}, 2, false});
  std::span<const std::int64_t> argmax_span;
  if (arg) argmax_span = {static_cast<const std::int64_t*>(arg->data), static_cast<std::size_t>(arg->size())};
  py::gil_scoped_release unlocked;
  embag::backward_dense(b.bags(), opts, matrix_of(dy), matrix_of(dw), argmax_span, &thread_workspace());
}

// Sparse gradients whose arrays Python released (released_memory.hpp): a training loop drops each
// step's gradient before the next, which then writes into memory already mapped.
struct kept_gradient {
  embag::sparse_gradient grad;
  std::size_t bytes() const { return grad.rows.capacity() * sizeof(std::int64_t) + grad.values.capacity() * sizeof(float); }
};

embag_python::released_pool<kept_gradient>& sparse_gradients() {
  static auto* pool = new embag_python::released_pool<kept_gradient>;  // never destroyed: capsules may outlive exit
  return *pool;
}

// Returns (rows, values) as NumPy arrays owning the gradient's vectors (not copied).
py::tuple backward_sparse(std::int64_t num_weights, py::handle indices, py::handle offsets, std::int64_t fixed_length,
                          py::handle weights, const std::string& mode, std::optional<std::int64_t> padding_idx,
                          bool include_last_offset, bool scale_grad_by_freq, py::handle grad_output,
                          py::handle argmax) {
  bag_args b = take_bags(indices, offsets, fixed_length, weights);
  embag::options opts = make_options(mode, padding_idx, include_last_offset, scale_grad_by_freq);
  array_arg dy = contiguous(grad_output, "grad_output", {{element::f32}, 2, false});
  std::optional<array_arg> arg = optional_contiguous(argmax, "max_indices", {{element::i64}, 2, false});
  std::span<const std::int64_t> argmax_span;
  if (arg) argmax_span = {static_cast<const std::int64_t*>(arg->data), static_cast<std::size_t>(arg->size())};
  kept_gradient* kept = sparse_gradients().take([](const kept_gradient&) { return true; });  // its vectors grow as needed
  if (kept == nullptr) kept = new kept_gradient;
  py::capsule owner(kept, [](void* p) { sparse_gradients().release(static_cast<kept_gradient*>(p)); });
  embag::sparse_gradient* grad = &kept->grad;
  {
    py::gil_scoped_release unlocked;
    embag::backward_sparse(num_weights, b.bags(), opts, matrix_of(dy), *grad, argmax_span, &thread_workspace());
  }
  auto rows = static_cast<py::ssize_t>(grad->rows.size());
  py::object row_ids = py::array_t<std::int64_t>({rows}, {static_cast<py::ssize_t>(sizeof(std::int64_t))}, grad->rows.data(), owner);
  py::object values = py::array_t<float>({rows, static_cast<py::ssize_t>(grad->dim)},
                                         {static_cast<py::ssize_t>(grad->dim * sizeof(float)), static_cast<py::ssize_t>(sizeof(float))},
                                         grad->values.data(), owner);
  if (b.indices.is_torch_tensor || dy.is_torch_tensor) {  // the caller's array type
    row_ids = as_torch_tensor(std::move(row_ids));
    values = as_torch_tensor(std::move(values));
  }
  return py::make_tuple(row_ids, values);
}

void per_sample_weights_grad(py::handle table, py::handle indices, py::handle offsets, std::int64_t fixed_length,
                             py::handle weights, const std::string& mode, std::optional<std::int64_t> padding_idx,
                             bool include_last_offset, py::handle grad_output, py::handle grad_weights) {
  bag_args b = take_bags(indices, offsets, fixed_length, weights);
  embag::options opts = make_options(mode, padding_idx, include_last_offset, false);
  array_arg w = f32_table(table, "weight", false);
  array_arg dy = contiguous(grad_output, "grad_output", {{element::f32}, 2, false});
  array_arg dpsw = contiguous(grad_weights, "grad_per_sample_weights", {{element::f32}, 1, true});
  embag::table_view<const float> view{static_cast<const float*>(w.data), w.shape[0], w.shape[1], row_stride_of(w)};
  py::gil_scoped_release unlocked;
  embag::per_sample_weights_grad(view, b.bags(), opts, matrix_of(dy),
                                 {static_cast<float*>(dpsw.data), static_cast<std::size_t>(dpsw.size())});
}

// ---------------------------------------------------------------------------------------------
// Optimizers (embag/optim.hpp): the table and its state updated in place.

// A table an optimizer writes in place: 2-D float32, float16 or bfloat16 (torch.float16 and
// torch.bfloat16 tensors, numpy.float16 arrays), rows possibly strided as f32_table's. NumPy has no
// bfloat16, so a uint16 array may hold either 16-bit type's bits, and table_dtype ('f16' or 'bf16')
// says which; for any other array table_dtype is optional and must agree with its dtype.
struct trainable_arg {
  array_arg array;
  embag::trainable_table_view view;
};

trainable_arg trainable_table(py::handle object, const std::optional<std::string>& table_dtype) {
  const std::string what = "weight";
  array_arg a = borrow(object, what);
  std::optional<embag::dtype> named;
  if (table_dtype) {
    named = embag::dtype_from_string(*table_dtype);
    if (!named || (*named != embag::dtype::f32 && *named != embag::dtype::f16 && *named != embag::dtype::bf16))
      invalid_option("dtype = '" + *table_dtype + "' is not one of 'f32', 'f16', 'bf16' (the tables an optimizer trains)");
  }
  embag::dtype stored = embag::dtype::f32;
  switch (a.type) {
    case element::f32: stored = embag::dtype::f32; break;
    case element::f16: stored = embag::dtype::f16; break;
    case element::bf16: stored = embag::dtype::bf16; break;
    case element::u16:
      if (!named || *named == embag::dtype::f32)
        refuse(what + " is " + describe(a) + ": say which 16-bit floats its elements hold, dtype='bf16' or dtype='f16'");
      stored = *named;
      break;
    default:
      refuse(what + " must be a 2-D float32, float16 or bfloat16 table (or uint16 holding 16-bit floats, with "
                    "dtype='bf16' or 'f16'), got " + describe(a));
  }
  if (named && *named != stored)
    refuse(what + " is " + describe(a) + ", not the dtype = '" + *table_dtype + "' the call names");
  if (a.ndim() != 2) refuse(what + " must be a 2-D table (rows x dim), got " + describe(a));
  check_rows_in_place(a, what);
  if (a.read_only) refuse(what + " (" + describe(a) + ") is read-only, and the optimizer updates its rows in place");
  embag::trainable_table_view view{a.data, a.shape[0], a.shape[1], row_stride_of(a), stored};
  return {std::move(a), view};
}

// The optimizer's state: fp32, rows x dim (adagrad) or rows x 1, or 1-D rows (rowwise_adagrad);
// None for sgd. Its shape against the table is the library's check.
std::optional<array_arg> optimizer_state_arg(py::handle state) {
  std::optional<array_arg> s = optional_contiguous(state, "state", {{element::f32}, -1, true});
  if (s && s->ndim() != 1 && s->ndim() != 2) refuse("state must be 1-D or 2-D, got " + describe(*s));
  return s;
}

embag::optimizer_state state_view(const std::optional<array_arg>& state) {
  return state ? matrix_of(*state) : embag::optimizer_state{};
}

// The learning rate, eps and weight decay arrive as Python floats and are used as fp32, as torch's
// optimizers use them on fp32 weights; the library refuses what is negative or not finite there.
embag::optimizer make_optimizer(const std::string& kind, double lr, double eps, double weight_decay,
                                const std::string& rounding, std::uint64_t seed) {
  embag::optimizer o;
  auto which = embag::optimizer_from_string(kind);
  if (!which) invalid_option("optimizer = '" + kind + "' is not one of 'sgd', 'adagrad', 'rowwise_adagrad'");
  o.kind = *which;
  o.learning_rate = static_cast<float>(lr);
  o.eps = static_cast<float>(eps);
  o.weight_decay = static_cast<float>(weight_decay);
  if (rounding == "nearest") {
    o.rounding = embag::rounding_mode::nearest;
  } else if (rounding == "stochastic") {
    o.rounding = embag::rounding_mode::stochastic;
  } else {
    invalid_option("rounding = '" + rounding + "' is not one of 'nearest', 'stochastic'");
  }
  o.seed = seed;
  return o;
}

embag::update_summary backward_update(py::handle table, const std::optional<std::string>& table_dtype,
                                      py::handle indices, py::handle offsets, std::int64_t fixed_length,
                                      py::handle weights, const std::string& mode,
                                      std::optional<std::int64_t> padding_idx, bool include_last_offset,
                                      bool scale_grad_by_freq, py::handle grad_output, py::handle argmax,
                                      const std::string& optimizer, double lr, double eps, double weight_decay,
                                      const std::string& rounding, std::uint64_t seed, py::handle state) {
  bag_args b = take_bags(indices, offsets, fixed_length, weights);
  embag::options opts = make_options(mode, padding_idx, include_last_offset, scale_grad_by_freq);
  embag::optimizer opt = make_optimizer(optimizer, lr, eps, weight_decay, rounding, seed);
  trainable_arg t = trainable_table(table, table_dtype);
  std::optional<array_arg> s = optimizer_state_arg(state);
  array_arg dy = contiguous(grad_output, "grad_output", {{element::f32}, 2, false});
  std::optional<array_arg> arg = optional_contiguous(argmax, "max_indices", {{element::i64}, 2, false});
  std::span<const std::int64_t> argmax_span;
  if (arg) argmax_span = {static_cast<const std::int64_t*>(arg->data), static_cast<std::size_t>(arg->size())};
  py::gil_scoped_release unlocked;
  return embag::backward_update(t.view, b.bags(), opts, matrix_of(dy), opt, state_view(s), argmax_span,
                                &thread_workspace());
}

// Through the C ABI, which takes the gradient as arrays: embag.hpp's apply_sparse_gradient takes a
// sparse_gradient, whose vectors own their rows, and would need the caller's arrays copied in.
embag::update_summary apply_sparse_gradient(py::handle table, const std::optional<std::string>& table_dtype,
                                            py::handle rows, py::handle values, const std::string& optimizer,
                                            double lr, double eps, double weight_decay, const std::string& rounding,
                                            std::uint64_t seed, py::handle state) {
  embag::optimizer opt = make_optimizer(optimizer, lr, eps, weight_decay, rounding, seed);
  trainable_arg t = trainable_table(table, table_dtype);
  std::optional<array_arg> s = optimizer_state_arg(state);
  array_arg r = contiguous(rows, "rows", {{element::i64}, 1, false});
  array_arg v = contiguous(values, "values", {{element::f32}, 2, false});
  // the C ABI takes the values' extent from len(rows) and the table's dim
  if (v.shape[0] != r.shape[0] || v.shape[1] != t.view.dim)
    raise(errors().by_code[static_cast<int>(embag::errc::size_mismatch)], "size_mismatch",
          "values has shape " + tuple_text(v.shape_span()) + "; " + std::to_string(r.shape[0]) + " rows of the table's dim " +
              std::to_string(t.view.dim) + " need " + tuple_text(std::vector<std::int64_t>{r.shape[0], t.view.dim}));
  embag_trainable_table c_table{t.view.data, t.view.rows, t.view.dim, t.view.row_stride,
                                static_cast<std::int32_t>(t.view.type)};
  embag_optimizer c_opt;
  embag_optimizer_init(&c_opt, static_cast<std::int32_t>(opt.kind));
  c_opt.learning_rate = opt.learning_rate;
  c_opt.eps = opt.eps;
  c_opt.weight_decay = opt.weight_decay;
  c_opt.rounding = static_cast<std::int32_t>(opt.rounding);
  c_opt.seed = opt.seed;
  embag::optimizer_state sv = state_view(s);
  embag_matrix c_state{sv.data, sv.rows, sv.cols, sv.row_stride};
  embag_options c_options;
  embag_options_init(&c_options);
  c_options.max_threads = max_threads.load(std::memory_order_relaxed);
  embag_update_summary summary{};
  embag_status status = EMBAG_OK;
  {
    py::gil_scoped_release unlocked;
    status = embag_apply_sparse_gradient(&c_table, static_cast<const std::int64_t*>(r.data), r.shape[0],
                                         static_cast<const float*>(v.data), &c_opt, s ? &c_state : nullptr,
                                         &c_options, &summary);
  }
  if (status != EMBAG_OK) {
    // the C ABI's codes are errc's values; its message is the library's
    py::handle cls = status > 0 && status < 128 ? errors().by_code[status] : errors().base;
    raise(cls, embag_status_name(status), embag_last_error());
  }
  return {summary.rows_updated, summary.rows_not_finite, summary.first_not_finite_row};
}

// ---------------------------------------------------------------------------------------------
// Many tables in one call: each table's (weight, input, offsets, fixed_length, per_sample_weights,
// mode, padding_idx, include_last_offset) tuple, and one output array each.

void forward_batched(py::sequence lookups, py::sequence outs) {
  if (py::len(lookups) != py::len(outs))
    refuse("forward_batched: " + std::to_string(py::len(lookups)) + " lookups but " + std::to_string(py::len(outs)) +
           " outputs");
  std::vector<array_arg> tables;
  std::vector<bag_args> bags;
  std::vector<array_arg> outputs;
  std::vector<embag::table_lookup> calls;
  tables.reserve(py::len(lookups));  // array_args are referenced by calls: no reallocation
  bags.reserve(py::len(lookups));
  outputs.reserve(py::len(lookups));
  for (std::size_t t = 0; t < py::len(lookups); ++t) {
    py::tuple item = lookups[t].cast<py::tuple>();
    std::string where = "tables[" + std::to_string(t) + "]";
    embag::table_lookup call;
    if (const compressed* packed = compressed_of(item[0])) {
      call.table = packed->table.view();
    } else {
      const array_arg& w = tables.emplace_back(f32_table(item[0], where + ".weight", false));
      call.table = {static_cast<const std::byte*>(w.data), w.shape[0], w.shape[1],
                    row_stride_of(w) * static_cast<std::int64_t>(sizeof(float)), embag::dtype::f32};
    }
    bag_args& b = bags.emplace_back(bag_args{contiguous(item[1], where + ".input", index_array),
                                             optional_contiguous(item[2], where + ".offsets", index_array),
                                             optional_contiguous(item[4], where + ".per_sample_weights",
                                                                 {{element::f32}, -1, false}),
                                             item[3].cast<std::int64_t>()});
    call.batch = b.bags();
    call.opts = make_options(item[5].cast<std::string>(), item[6].cast<std::optional<std::int64_t>>(),
                             item[7].cast<bool>(), false);
    call.opts.execution = {};
    call.out = matrix_of(outputs.emplace_back(contiguous(outs[t], "out[" + std::to_string(t) + "]",
                                                         {{element::f32}, 2, true})));
    calls.push_back(call);
  }
  embag::execution how;
  how.max_threads = max_threads.load(std::memory_order_relaxed);
  py::gil_scoped_release unlocked;
  embag::forward_batched(calls, how, &thread_workspace());
}

compressed open_table(const std::string& path, bool copy) {
  py::gil_scoped_release unlocked;
  return {embag::compressed_table::open(path, copy ? embag::compressed_table::load::copy
                                                   : embag::compressed_table::load::map)};
}

compressed quantize(py::handle weight, const std::string& dtype) {
  auto to = embag::dtype_from_string(dtype);
  if (!to)
    raise(errors().by_code[static_cast<int>(embag::errc::invalid_option)], "invalid_option",
          "dtype = '" + dtype + "' is not one of 'f32', 'f16', 'bf16', 'int8_rowwise', 'int4_rowwise'");
  array_arg w = f32_table(weight, "weight", false);
  embag::table_view<const float> view{static_cast<const float*>(w.data), w.shape[0], w.shape[1], row_stride_of(w)};
  embag::execution how;
  how.max_threads = max_threads.load(std::memory_order_relaxed);
  py::gil_scoped_release unlocked;
  return {embag::quantize(view, *to, how)};
}

void dequantize(const compressed& t, py::handle out) {
  array_arg y = contiguous(out, "out", {{element::f32}, 2, true});
  embag::execution how;
  how.max_threads = max_threads.load(std::memory_order_relaxed);
  py::gil_scoped_release unlocked;
  embag::dequantize(t.table.view(), {static_cast<float*>(y.data), y.shape[0], y.shape[1], 0}, how);
}

void save(const compressed& t, const std::string& path) {
  py::gil_scoped_release unlocked;
  embag::write_embag(path, t.table.view());
}

// ---------------------------------------------------------------------------------------------
// The C++ side of bench/python_bench.py: `calls` library calls on these arrays (index sets, each an
// (indices, offsets) pair, taken in turn as embag bench rotates them), timed in C++ with nothing
// of Python inside the loop, with the workspace the Python calls use. Returns the seconds they took.

std::vector<bag_args> index_sets(py::sequence sets) {
  std::vector<bag_args> bags;
  for (py::handle set : sets) {
    py::tuple pair = set.cast<py::tuple>();
    bags.push_back(take_bags(pair[0], pair[1], 0, py::none()));
  }
  return bags;
}

template <class Call>
double seconds_of(int calls, std::size_t sets, Call call) {
  py::gil_scoped_release unlocked;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) call(static_cast<std::size_t>(i) % sets);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double time_forward(py::handle table, py::sequence sets, const std::string& mode, py::handle out, int calls) {
  std::vector<bag_args> bags = index_sets(sets);
  embag::options opts = make_options(mode, std::nullopt, false, false);
  array_arg w = f32_table(table, "weight", false);
  array_arg y = contiguous(out, "out", {{element::f32}, 2, true});
  embag::table_view<const float> view{static_cast<const float*>(w.data), w.shape[0], w.shape[1], row_stride_of(w)};
  return seconds_of(calls, bags.size(), [&](std::size_t set) {
    embag::forward(view, bags[set].bags(), opts, matrix_of(y), {}, &thread_workspace());
  });
}

double time_backward_dense(py::sequence sets, const std::string& mode, py::handle grad_output, py::handle grad_weight,
                           int calls) {
  std::vector<bag_args> bags = index_sets(sets);
  embag::options opts = make_options(mode, std::nullopt, false, false);
  array_arg dy = contiguous(grad_output, "grad_output", {{element::f32}, 2, false});
  array_arg dw = contiguous(grad_weight, "grad_weight", {{element::f32}, 2, true});
  return seconds_of(calls, bags.size(), [&](std::size_t set) {
    embag::backward_dense(bags[set].bags(), opts, matrix_of(dy), matrix_of(dw), {}, &thread_workspace());
  });
}

// embag.Error and its subclasses, created as Python classes so that each can also be the builtin
// exception it is (IndexError for an index out of range, ValueError for bad arguments).
void make_error_classes(py::module_& m) {
  py::module_ builtins = py::module_::import("builtins");
  py::object type = builtins.attr("type");
  auto make = [&](const char* name, py::tuple bases, const char* doc) {
    py::object cls = type(name, bases, py::dict("__module__"_a = "embag", "__doc__"_a = doc));
    m.attr(name) = cls;
    return cls;
  };
  error_classes& e = errors();
  e.base = make("Error", py::make_tuple(builtins.attr("Exception")),
                "An error embag reported: `code` is the name of its embag::errc (or 'unsupported_array'), the "
                "message names the argument, position and value.");
  py::object index_error = make("IndexOutOfRange", py::make_tuple(e.base, builtins.attr("IndexError")),
                                "An index outside the table (errc::index_out_of_range).");
  py::object invalid = make("InvalidArgument", py::make_tuple(e.base, builtins.attr("ValueError")),
                            "Offsets, lengths, sizes, shapes, options or files embag refused.");
  py::object io = make("FileError", py::make_tuple(e.base, builtins.attr("OSError")),
                       "A file that cannot be opened, mapped, read, written or renamed (errc::io_error).");
  py::object memory = make("OutOfMemory", py::make_tuple(e.base, builtins.attr("MemoryError")),
                           "An allocation failed (errc::out_of_memory).");
  e.unsupported = make("UnsupportedArray", py::make_tuple(e.base, builtins.attr("TypeError")),
                       "An array embag cannot read in place: its type, dtype, device, dimensions or strides.");
  for (auto& cls : e.by_code) cls = invalid;
  e.by_code[static_cast<int>(embag::errc::index_out_of_range)] = index_error;
  e.by_code[static_cast<int>(embag::errc::io_error)] = io;
  e.by_code[static_cast<int>(embag::errc::out_of_memory)] = memory;

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const embag::error& err) {
      auto code = static_cast<int>(err.code());
      py::handle cls = code >= 0 && code < 128 ? errors().by_code[code] : errors().base;
      py::object exception = py::reinterpret_borrow<py::object>(cls)(err.what());
      exception.attr("code") = std::string(embag::to_string(err.code()));
      PyErr_SetObject(cls.ptr(), exception.ptr());
    }
  });
}

}  // namespace

PYBIND11_MODULE(_embag, m) {
  m.doc() = "embag's C++ library on NumPy arrays and CPU torch tensors (use the embag package, not this module)";
  make_error_classes(m);
  m.attr("__version__") = std::string(embag::version());

  // embag.embedding_bag and embag.embedding_bag_forward themselves
  static PyMethodDef entry_points[] = {
      {"embedding_bag", embag_python::as_method<embedding_bag>(), METH_FASTCALL | METH_KEYWORDS, embedding_bag_doc},
      {"embedding_bag_forward", embag_python::as_method<embedding_bag_forward>(), METH_FASTCALL | METH_KEYWORDS,
       embedding_bag_forward_doc},
  };
  for (PyMethodDef& entry : entry_points) embag_python::add_entry_point(m, entry, "embag");
  m.def("bag_layout", &bag_layout_of, "input"_a, "offsets"_a, "per_sample_weights"_a, "include_last_offset"_a,
        "function"_a);
  m.def("forward", &forward, "table"_a, "indices"_a, "offsets"_a, "fixed_length"_a, "per_sample_weights"_a, "mode"_a,
        "padding_idx"_a, "include_last_offset"_a, "max_norm"_a, "norm_type"_a, "rows"_a, "with_max_indices"_a);
  m.def("backward_dense", &backward_dense, "indices"_a, "offsets"_a, "fixed_length"_a, "per_sample_weights"_a,
        "mode"_a, "padding_idx"_a, "include_last_offset"_a, "scale_grad_by_freq"_a, "grad_output"_a,
        "grad_weight"_a, "max_indices"_a);
  m.def("backward_sparse", &backward_sparse, "num_weights"_a, "indices"_a, "offsets"_a, "fixed_length"_a,
        "per_sample_weights"_a, "mode"_a, "padding_idx"_a, "include_last_offset"_a, "scale_grad_by_freq"_a,
        "grad_output"_a, "max_indices"_a);
  m.def("per_sample_weights_grad", &per_sample_weights_grad, "weight"_a, "indices"_a, "offsets"_a, "fixed_length"_a,
        "per_sample_weights"_a, "mode"_a, "padding_idx"_a, "include_last_offset"_a, "grad_output"_a,
        "grad_per_sample_weights"_a);
  m.def("forward_batched", &forward_batched, "lookups"_a, "outs"_a);
  py::class_<embag::update_summary>(m, "UpdateSummary",
                                    "What an optimizer step did: rows updated, and rows left as they were because "
                                    "their update was not finite (NaN, Inf, or beyond a 16-bit table's range)")
      .def_readonly("rows_updated", &embag::update_summary::rows_updated)
      .def_readonly("rows_not_finite", &embag::update_summary::rows_not_finite)
      .def_readonly("first_not_finite_row", &embag::update_summary::first_not_finite_row,
                    "the lowest row left as it was, -1 when none")
      .def("__repr__", [](const embag::update_summary& s) {
        return "embag.UpdateSummary(rows_updated=" + std::to_string(s.rows_updated) + ", rows_not_finite=" +
               std::to_string(s.rows_not_finite) + ", first_not_finite_row=" +
               std::to_string(s.first_not_finite_row) + ")";
      });
  m.def("backward_update", &backward_update, "weight"_a, "dtype"_a, "indices"_a, "offsets"_a, "fixed_length"_a,
        "per_sample_weights"_a, "mode"_a, "padding_idx"_a, "include_last_offset"_a, "scale_grad_by_freq"_a,
        "grad_output"_a, "max_indices"_a, "optimizer"_a, "lr"_a, "eps"_a, "weight_decay"_a, "rounding"_a, "seed"_a,
        "state"_a);
  m.def("apply_sparse_gradient", &apply_sparse_gradient, "weight"_a, "dtype"_a, "rows"_a, "values"_a, "optimizer"_a,
        "lr"_a, "eps"_a, "weight_decay"_a, "rounding"_a, "seed"_a, "state"_a);
  m.def("_time_forward", &time_forward, "weight"_a, "index_sets"_a, "mode"_a, "out"_a, "calls"_a);
  m.def("_time_backward_dense", &time_backward_dense, "index_sets"_a, "mode"_a, "grad_output"_a, "grad_weight"_a,
        "calls"_a);

  py::class_<compressed>(m, "Table", "A compressed table (fp16, bf16, int8 or int4 rowwise), owned or mapped from an .embag file")
      .def_static("open", &open_table, "path"_a, "copy"_a = false,
                  "Opens an .embag file: mapped read-only (the default) or copied into memory")
      .def_property_readonly("rows", [](const compressed& t) { return t.table.rows(); })
      .def_property_readonly("dim", [](const compressed& t) { return t.table.dim(); })
      .def_property_readonly("shape", [](const compressed& t) { return py::make_tuple(t.table.rows(), t.table.dim()); })
      .def_property_readonly("dtype", [](const compressed& t) { return std::string(embag::to_string(t.table.element_type())); })
      .def_property_readonly("mapped", [](const compressed& t) { return t.table.mapped(); })
      .def_property_readonly("row_bytes", [](const compressed& t) { return t.table.row_bytes(); })
      .def("_dequantize_into", &dequantize, "out"_a)
      .def("save", &save, "path"_a, "Writes the table as an .embag file (written aside, then renamed into place)")
      .def("__repr__", [](const compressed& t) {
        return "embag.Table(rows=" + std::to_string(t.table.rows()) + ", dim=" + std::to_string(t.table.dim()) +
               ", dtype='" + std::string(embag::to_string(t.table.element_type())) + "'" +
               (t.table.mapped() ? ", mapped" : "") + ")";
      });
  m.def("quantize", &quantize, "weight"_a, "dtype"_a);

  m.def("available_isas", [] {
    std::vector<std::string> names;
    for (embag::isa i : embag::available_isas()) names.emplace_back(embag::to_string(i));
    return names;
  });
  m.def("active_isa", [] { return std::string(embag::to_string(embag::active_isa())); });
  m.def("force_isa", [](const std::string& name) {
    auto which = embag::isa_from_string(name);
    if (!which)
      raise(errors().by_code[static_cast<int>(embag::errc::unsupported_isa)], "unsupported_isa",
            "isa = '" + name + "' names no instruction set embag knows");
    embag::force_isa(*which);
  }, "isa"_a);
  m.def("set_num_threads", [](int n) {
    if (n < 0)
      raise(errors().by_code[static_cast<int>(embag::errc::invalid_option)], "invalid_option",
            "set_num_threads(" + std::to_string(n) + "): the number of threads must be >= 0 (0: TBB's default)");
    max_threads.store(n, std::memory_order_relaxed);
  }, "threads"_a);
  // An output the Python layer fills (through the library): a tensor when one of `like` is.
  m.def("empty", [](const std::vector<py::ssize_t>& shape, const std::string& dtype, py::sequence like) {
    return as_callers_type(new_block_array(shape, py::dtype(dtype)), any_tensor(like));
  }, "shape"_a, "dtype"_a, "like"_a);
  // A dense gradient the Python layer fills: zeros, a tensor when one of `like` is.
  m.def("zeros", [](const std::vector<py::ssize_t>& shape, const std::string& dtype, py::sequence like) {
    return as_callers_type(new_zeroed_array(shape, py::dtype(dtype)), any_tensor(like));
  }, "shape"_a, "dtype"_a, "like"_a);
  m.def("set_buffer_cache_limit", [](std::int64_t bytes) {
    if (bytes < 0)
      invalid_option("set_buffer_cache_limit(" + std::to_string(bytes) + "): the limit must be >= 0 bytes (0: keep nothing)");
    embag_python::kept_bytes& cache = embag_python::buffer_cache();
    std::size_t previous = cache.limit;
    cache.limit = static_cast<std::size_t>(bytes);
    output_blocks().trim();
    sparse_gradients().trim();
    return previous;
  }, "bytes"_a,
  "Bounds the memory of released outputs (forward outputs, sparse gradients) kept for the next calls' "
  "outputs, which then need no fresh pages; drops what is kept over it; returns the previous limit "
  "(default 256 MiB; 0 keeps nothing)");
  m.def("buffer_cache_bytes", [] { return embag_python::buffer_cache().held; },
        "Bytes of released outputs kept for the next calls (see set_buffer_cache_limit)");
  m.def("get_num_threads", [] {
    int n = max_threads.load(std::memory_order_relaxed);
    return n == 0 ? embag::default_threads() : n;
  });
}
