// .npy files: round trips of every dtype and rank, files NumPy wrote (tests/data), a mapped table
// used as a table_view, and a catalogue of malformed files, each rejected with errc::bad_file and a
// message naming the file and the problem.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "embag/embag.hpp"
#include "embag/npy.hpp"
#include "support/temporary_directory.hpp"

namespace embag {
namespace {

// A fresh directory per test.
class NpyFiles : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return dir_.path(name); }
  std::set<std::string> listing() const { return dir_.listing(); }
  void write_bytes(const std::string& name, const std::string& bytes) const { dir_.write(name, bytes); }
  std::string read_bytes(const std::string& name) const { return dir_.read(name); }
  test::temporary_directory dir_;
};

std::string fixture(const std::string& name) {
  const char* dir = std::getenv("EMBAG_TEST_DATA");
  return std::string(dir ? dir : "tests/data") + "/" + name;
}

std::int64_t product(const std::vector<std::int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
}

template <class T>
void expect_round_trip(const test::temporary_directory& dir, const std::string& name, npy_dtype type, const std::vector<std::int64_t>& shape) {
  std::vector<T> values(static_cast<std::size_t>(product(shape)));
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<T>(i * 3) - static_cast<T>(7);
  const std::string file = dir.path(name);
  write_npy(file, type, shape, values.data());
  for (npy_array::load how : {npy_array::load::map, npy_array::load::copy}) {
    const npy_array a = npy_array::open(file, how);
    EXPECT_EQ(a.dtype(), type);
    EXPECT_EQ(a.shape(), shape);
    EXPECT_EQ(a.elements(), static_cast<std::int64_t>(values.size()));
    EXPECT_EQ(a.mapped(), how == npy_array::load::map);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.data()) % 64, 0u) << "data start on a 64-byte boundary";
    if (!values.empty()) {
      EXPECT_EQ(std::memcmp(a.data(), values.data(), values.size() * sizeof(T)), 0);
    }
  }
  // the header NumPy writes: version 1.0, the data 64-byte aligned
  const std::string bytes = dir.read(name);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  EXPECT_EQ((bytes.size() - values.size() * sizeof(T)) % 64, 0u);
}

TEST_F(NpyFiles, EveryDtypeAndRankRoundTrips) {
  const std::vector<std::vector<std::int64_t>> shapes = {{5}, {0}, {3, 4}, {0, 4}, {4, 0}, {2, 3, 5}, {2, 0, 3}};
  for (const auto& shape : shapes) {
    SCOPED_TRACE(::testing::PrintToString(shape));
    expect_round_trip<float>(dir_, "f32.npy", npy_dtype::f32, shape);
    expect_round_trip<std::int32_t>(dir_, "i32.npy", npy_dtype::i32, shape);
    expect_round_trip<std::int64_t>(dir_, "i64.npy", npy_dtype::i64, shape);
  }
  EXPECT_EQ(listing().size(), 3u) << "no temporary file is left behind";
}

TEST_F(NpyFiles, ZeroDimensionalArrayHasOneElement) {
  const float value = 2.5f;
  write_npy(path("scalar.npy"), npy_dtype::f32, {}, &value);
  const npy_array a = npy_array::open(path("scalar.npy"));
  EXPECT_TRUE(a.shape().empty());
  EXPECT_EQ(a.elements(), 1);
  ASSERT_EQ(a.as_floats().size(), 1u);
  EXPECT_EQ(a.as_floats()[0], 2.5f);
}

TEST_F(NpyFiles, HeaderPastSixteenBitsIsVersionTwo) {
  const std::vector<std::int64_t> shape(30000, 1);  // a header of about 90 KB
  const std::int32_t value = 42;
  write_npy(path("long.npy"), npy_dtype::i32, shape, &value);
  const std::string bytes = read_bytes("long.npy");
  EXPECT_EQ(bytes[6], 2);
  EXPECT_EQ((bytes.size() - 4) % 64, 0u);
  const npy_array a = npy_array::open(path("long.npy"));
  EXPECT_EQ(a.shape(), shape);
  EXPECT_EQ(*static_cast<const std::int32_t*>(a.data()), 42);
}

TEST_F(NpyFiles, MappedTableIsReadableAsTableView) {
  const std::int64_t rows = 50, dim = 12;
  std::vector<float> weights(rows * dim);
  for (std::size_t i = 0; i < weights.size(); ++i) weights[i] = static_cast<float>(i % 17) * 0.25f - 1.0f;
  const std::vector<std::int64_t> shape = {rows, dim};
  write_npy(path("w.npy"), npy_dtype::f32, shape, weights.data());
  const std::vector<std::int32_t> indices = {3, 49, 0, 7, 7, 12};
  const std::vector<std::int32_t> offsets = {0, 2, 2};
  write_npy(path("i.npy"), npy_dtype::i32, std::vector<std::int64_t>{6}, indices.data());

  const npy_array w = npy_array::open(path("w.npy"));
  const npy_array i = npy_array::open(path("i.npy"));
  ASSERT_TRUE(w.mapped());
  const table_view<const float> t = w.as_table();
  EXPECT_EQ(t.rows, rows);
  EXPECT_EQ(t.dim, dim);
  options opts;
  opts.mode = mode::mean;
  std::vector<float> from_file(3 * dim), from_memory(3 * dim);
  forward(t, bags::from_offsets(i.as_indices(), offsets), opts, {from_file.data(), 3, dim});
  forward(table_view<const float>{weights.data(), rows, dim, dim}, bags::from_offsets(indices, offsets), opts,
          {from_memory.data(), 3, dim});
  EXPECT_EQ(from_file, from_memory);
}

// Views check the dtype and the rank, naming the file.
TEST_F(NpyFiles, ViewsCheckDtypeAndRank) {
  const std::vector<std::int32_t> ints(6, 1);
  write_npy(path("ints.npy"), npy_dtype::i32, std::vector<std::int64_t>{2, 3}, ints.data());
  const npy_array a = npy_array::open(path("ints.npy"));
  const auto expect_bad = [&](auto view, const std::string& fragment) {
    try {
      view();
      ADD_FAILURE() << "expected an error containing " << fragment;
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::bad_file);
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("ints.npy"), std::string::npos) << e.what();
    }
  };
  expect_bad([&] { a.as_table(); }, "expected a 2-D <f4 table, found a 2-D <i4 array of shape (2, 3)");
  expect_bad([&] { a.as_indices(); }, "expected a 1-D <i4 or <i8 array");
  expect_bad([&] { a.as_floats(); }, "expected a <f4 array");
}

// ---------------------------------------------------------------------------------------------
// Files NumPy 1.24 wrote (numpy.lib.format.write_array; see tests/data).

TEST(NpyFromNumpy, VersionsOneTwoAndThree) {
  const npy_array v1 = npy_array::open(fixture("v1_f32_2x3.npy"));
  EXPECT_EQ(v1.shape(), (std::vector<std::int64_t>{2, 3}));
  const table_view<const float> t = v1.as_table();
  for (int k = 0; k < 6; ++k) EXPECT_EQ(t.data[k], 0.5f * k);

  const npy_array v2 = npy_array::open(fixture("v2_i64_3.npy"));
  ASSERT_EQ(v2.dtype(), npy_dtype::i64);
  const auto* i64 = static_cast<const std::int64_t*>(v2.data());
  EXPECT_EQ(std::vector<std::int64_t>(i64, i64 + 3), (std::vector<std::int64_t>{1, -2, std::int64_t{3} << 40}));

  const npy_array v3 = npy_array::open(fixture("v3_i32_2x2x2.npy"));
  ASSERT_EQ(v3.dtype(), npy_dtype::i32);
  EXPECT_EQ(v3.shape(), (std::vector<std::int64_t>{2, 2, 2}));
  const auto* i32 = static_cast<const std::int32_t*>(v3.data());
  for (int k = 0; k < 8; ++k) EXPECT_EQ(i32[k], k - 3);
}

TEST(NpyFromNumpy, BigEndianIsConvertedIntoACopy) {
  const npy_array f = npy_array::open(fixture("big_endian_f32_2x3.npy"));
  EXPECT_FALSE(f.mapped());
  EXPECT_EQ(f.dtype(), npy_dtype::f32);
  const table_view<const float> t = f.as_table();
  for (int k = 0; k < 6; ++k) EXPECT_EQ(t.data[k], 0.5f * k);
  const npy_array i = npy_array::open(fixture("big_endian_i64_3.npy"), npy_array::load::copy);
  const auto* v = static_cast<const std::int64_t*>(i.data());
  EXPECT_EQ(std::vector<std::int64_t>(v, v + 3), (std::vector<std::int64_t>{1, -2, std::int64_t{3} << 40}));
}

TEST(NpyFromNumpy, ScalarEmptyAndFortranOrder) {
  const npy_array scalar = npy_array::open(fixture("scalar_f32.npy"));
  EXPECT_TRUE(scalar.shape().empty());
  EXPECT_EQ(scalar.as_floats()[0], 7.5f);
  const npy_array empty = npy_array::open(fixture("empty_f32_0x4.npy"));
  EXPECT_EQ(empty.as_table().rows, 0);
  EXPECT_EQ(empty.as_table().dim, 4);
  try {
    npy_array::open(fixture("fortran_f32_2x3.npy"));
    ADD_FAILURE() << "Fortran order must be rejected";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::bad_file);
    EXPECT_NE(std::string(e.what()).find("fortran_f32_2x3.npy: bad header: fortran_order is True"), std::string::npos)
        << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Malformed files.

// A file with the given preamble version, header text (padded as NumPy pads it unless `raw`) and
// data bytes.
std::string npy_file(int major, const std::string& header, std::size_t data_bytes, int minor = 0) {
  const std::size_t preamble = major == 1 ? 10 : 12;
  std::string text = header;
  while ((preamble + text.size() + 1) % 64 != 0) text += ' ';
  text += '\n';
  std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(major) + static_cast<char>(minor);
  for (std::size_t i = 0; i < preamble - 8; ++i) out += static_cast<char>((text.size() >> (8 * i)) & 0xff);
  return out + text + std::string(data_bytes, '\x01');
}

std::string header_of(const std::string& descr, const std::string& fortran, const std::string& shape) {
  return "{'descr': " + descr + ", 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
}

struct malformed_case {
  const char* what;
  std::string bytes;
  const char* message;
};

std::vector<malformed_case> malformed_catalogue() {
  const std::string good = header_of("'<f4'", "False", "(2, 3)");
  const std::string full = npy_file(1, good, 24);
  std::string long_length = full;
  long_length[8] = '\xff';
  long_length[9] = '\x7f';
  return {
      {"empty file", "", "truncated: the file ends inside the \\x93NUMPY magic"},
      {"truncated magic", std::string("\x93NUM", 4), "ends inside the \\x93NUMPY magic"},
      {"wrong magic", "PK\x03\x04 this is a zip file", "not a .npy file"},
      {"no version", std::string("\x93NUMPY\x01", 7), "ends before the format version"},
      {"version 4.0", npy_file(1, good, 24).replace(6, 1, "\x04"), "unsupported .npy format version 4.0"},
      {"version 1.1", npy_file(1, good, 24, 1), "unsupported .npy format version 1.1"},
      {"version 0.0", npy_file(1, good, 24).replace(6, 1, std::string(1, '\0')), "version 0.0"},
      {"header length cut", std::string("\x93NUMPY\x02\x00\x10\x00", 10), "ends inside the header length"},
      {"header length past the end", long_length, "header length 32767 runs past the end of the file (152 bytes)"},
      {"header not a dict", npy_file(1, "[1, 2, 3]", 0), "the header is not a dictionary"},
      {"empty header", npy_file(1, "", 0), "not a dictionary"},
      {"missing descr", npy_file(1, "{'fortran_order': False, 'shape': (2,)}", 8), "no 'descr' key"},
      {"missing fortran_order", npy_file(1, "{'descr': '<f4', 'shape': (2,)}", 8), "no 'fortran_order' key"},
      {"missing shape", npy_file(1, "{'descr': '<f4', 'fortran_order': False}", 8), "no 'shape' key"},
      {"duplicate key", npy_file(1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", 8),
       "the key 'descr' appears twice"},
      {"unexpected key", npy_file(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", 8),
       "unexpected key 'extra'"},
      {"unknown dtype <f8", npy_file(1, header_of("'<f8'", "False", "(2,)"), 16), "unsupported dtype '<f8'"},
      {"no byte order |f4", npy_file(1, header_of("'|f4'", "False", "(2,)"), 8), "unsupported dtype '|f4'"},
      {"structured dtype", npy_file(1, header_of("[('a', '<f4')]", "False", "(2,)"), 8),
       "expected the value of 'descr' as a quoted string"},
      {"fortran order", npy_file(1, header_of("'<f4'", "True", "(2, 3)"), 24), "fortran_order is True"},
      {"fortran_order not a bool", npy_file(1, header_of("'<f4'", "0", "(2,)"), 8), "expected True or False"},
      {"negative dimension", npy_file(1, header_of("'<f4'", "False", "(-1, 3)"), 0), "a negative dimension in 'shape'"},
      {"element count overflows", npy_file(1, header_of("'<f4'", "False", "(4611686018427387904, 4611686018427387904)"), 0),
       "the shape (4611686018427387904, 4611686018427387904) holds more bytes than fit in 64 bits"},
      {"byte count overflows", npy_file(1, header_of("'<i8'", "False", "(2305843009213693952,)"), 0),
       "holds more bytes than fit in 64 bits"},
      {"dimension overflows", npy_file(1, header_of("'<f4'", "False", "(99999999999999999999,)"), 0),
       "overflows 64 bits"},
      {"shape not a tuple", npy_file(1, header_of("'<f4'", "False", "(3)"), 12), "'shape' is (3), not a tuple"},
      {"shape a list", npy_file(1, header_of("'<f4'", "False", "[3]"), 12), "expected a tuple for 'shape'"},
      {"shape with a float", npy_file(1, header_of("'<f4'", "False", "(3.0,)"), 12), "expected ',' or ')' in 'shape'"},
      {"missing comma", npy_file(1, "{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}", 8), "expected ',' or '}'"},
      {"unterminated string", npy_file(1, "{'descr': '<f4", 8), "unterminated string"},
      {"escape in a string", npy_file(1, "{'descr': '<\\x66', 'fortran_order': False, 'shape': (2,)}", 8),
       "escape sequences are not supported"},
      {"text after the dict", npy_file(1, good + " junk", 24), "unexpected text after the header dictionary"},
      {"binary garbage", npy_file(1, "{'\x01\xff': 1}", 0), "unexpected key '\\x01\\xff'"},
      {"data truncated by one byte", npy_file(1, good, 23), "truncated data: the shape (2, 3) of f4 needs 24 bytes, the file has 23"},
      {"data missing", npy_file(3, good, 0), "needs 24 bytes, the file has 0"},
      {"data too long", npy_file(2, good, 25), "1 bytes after the data the shape (2, 3) of f4 needs"},
  };
}

TEST_F(NpyFiles, MalformedFilesAreBadFileErrorsNamingFileAndProblem) {
  const std::vector<malformed_case> cases = malformed_catalogue();
  EXPECT_GE(cases.size(), 20u);
  for (const malformed_case& c : cases) {
    SCOPED_TRACE(c.what);
    write_bytes("bad.npy", c.bytes);
    for (npy_array::load how : {npy_array::load::map, npy_array::load::copy}) {
      try {
        npy_array::open(path("bad.npy"), how);
        ADD_FAILURE() << "accepted";
      } catch (const error& e) {
        EXPECT_EQ(e.code(), errc::bad_file) << e.what();
        EXPECT_EQ(std::string(e.what()).rfind(path("bad.npy") + ": ", 0), 0u) << e.what();
        EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
        EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line: " << e.what();
      }
    }
    try {
      npy_array::from_bytes(std::as_bytes(std::span(c.bytes.data(), c.bytes.size())), "in memory");
      ADD_FAILURE() << "accepted";
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::bad_file) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
    }
  }
}

// A hand-made header whose data start at an offset that is not a multiple of the element size:
// the data are copied to an aligned buffer rather than mapped misaligned.
TEST_F(NpyFiles, MisalignedDataAreCopied) {
  std::string header = header_of("'<i8'", "False", "(3,)") + "\n";  // preamble 10 + 63: data at 73
  header.insert(header.size() - 1, std::string(73 - 10 - header.size(), ' '));
  std::string bytes = std::string("\x93NUMPY\x01\x00", 8) + static_cast<char>(header.size()) + '\0' + header;
  const std::int64_t values[] = {5, -6, 7};
  bytes.append(reinterpret_cast<const char*>(values), sizeof values);
  ASSERT_EQ((bytes.size() - sizeof values) % 8, 1u);
  write_bytes("odd.npy", bytes);
  const npy_array a = npy_array::open(path("odd.npy"));
  EXPECT_FALSE(a.mapped());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.data()) % 8, 0u);
  EXPECT_EQ(std::memcmp(a.data(), values, sizeof values), 0);
}

TEST_F(NpyFiles, PythonTwoLongSuffixIsRead) {
  write_bytes("py2.npy", npy_file(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2L, 1L), }", 8));
  EXPECT_EQ(npy_array::open(path("py2.npy")).shape(), (std::vector<std::int64_t>{2, 1}));
}

TEST_F(NpyFiles, MissingFileOrDirectoryIsAnIoError) {
  for (const std::string& p : {path("absent.npy"), dir_.path()}) {
    try {
      npy_array::open(p);
      ADD_FAILURE() << p;
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::io_error);
      EXPECT_EQ(std::string(e.what()).rfind(p + ": ", 0), 0u) << e.what();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Failed writes leave nothing: no temporary file, and an existing file untouched.

TEST_F(NpyFiles, FailedWritesLeaveNoFileAndExistingFilesUntouched) {
  const float values[] = {1, 2, 3};
  try {
    write_npy(path("no/such/dir/x.npy"), npy_dtype::f32, std::vector<std::int64_t>{3}, values);
    ADD_FAILURE() << "wrote into a missing directory";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::io_error);
    EXPECT_NE(std::string(e.what()).find("no/such/dir/x.npy"), std::string::npos) << e.what();
  }
  write_bytes("keep.npy", "precious");
  EXPECT_THROW(write_npy(path("keep.npy"), npy_dtype::f32, std::vector<std::int64_t>{-3}, values), error);
  EXPECT_THROW(write_npy(path("keep.npy"), npy_dtype::f32, std::vector<std::int64_t>{3}, nullptr), error);
  EXPECT_EQ(read_bytes("keep.npy"), "precious");
  EXPECT_EQ(listing(), std::set<std::string>{"keep.npy"});
}

TEST_F(NpyFiles, WriteGroupIsAllOrNothing) {
  const float values[] = {1, 2, 3};
  write_bytes("a.npy", "old a");
  {
    output_group group;
    group.stage(path("a.npy"), npy_dtype::f32, std::vector<std::int64_t>{3}, values);
    EXPECT_THROW(group.stage(path("missing/b.npy"), npy_dtype::f32, std::vector<std::int64_t>{3}, values), error);
    group.commit();  // the failed stage removed what was staged: nothing to rename
  }
  EXPECT_EQ(read_bytes("a.npy"), "old a");
  {
    output_group group;
    group.stage(path("a.npy"), npy_dtype::f32, std::vector<std::int64_t>{3}, values);
    group.stage(path("b.npy"), npy_dtype::f32, std::vector<std::int64_t>{3}, values);
  }  // never committed
  EXPECT_EQ(listing(), std::set<std::string>{"a.npy"});
  EXPECT_EQ(read_bytes("a.npy"), "old a");
  {
    output_group group;
    group.stage(path("a.npy"), npy_dtype::f32, std::vector<std::int64_t>{3}, values);
    group.stage(path("b.npy"), npy_dtype::f32, std::vector<std::int64_t>{3}, values);
    group.commit();
  }
  EXPECT_EQ(npy_array::open(path("a.npy")).as_floats()[2], 3.0f);
  EXPECT_EQ(npy_array::open(path("b.npy")).as_floats()[0], 1.0f);
  EXPECT_EQ(listing().size(), 2u);
}

// A rename failing midway through a commit (here: a temporary removed underneath, as a cleaner
// of stale files might) puts back every file the commit had already replaced or created.
TEST_F(NpyFiles, ACommitFailingMidwayPutsBackWhatItAlreadyReplaced) {
  const float values[] = {1, 2, 3};
  write_bytes("a.npy", "old a");
  write_bytes("c.npy", "old c");
  output_group group;
  group.stage(path("new.npy"), npy_dtype::f32, std::vector<std::int64_t>{3}, values);
  group.stage(path("a.npy"), npy_dtype::f32, std::vector<std::int64_t>{3}, values);
  group.stage(path("c.npy"), npy_dtype::f32, std::vector<std::int64_t>{3}, values);
  for (const std::string& name : listing()) {
    if (name.rfind("c.npy.tmp-", 0) == 0) ASSERT_EQ(::unlink(path(name).c_str()), 0);
  }
  try {
    group.commit();
    ADD_FAILURE() << "committed without c.npy's temporary";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::io_error);
    EXPECT_NE(std::string(e.what()).find("c.npy: cannot rename"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_bytes("a.npy"), "old a");
  EXPECT_EQ(read_bytes("c.npy"), "old c");
  EXPECT_EQ(listing(), (std::set<std::string>{"a.npy", "c.npy"})) << "no new file, temporary or old copy left";
}

// Opening a FIFO for reading blocks until a writer comes: the library must refuse it first.
TEST_F(NpyFiles, AFifoIsRefusedWithoutWaitingForAWriter) {
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0644), 0);
  ::alarm(20);  // a hang ends the test (SIGALRM) instead of the whole suite's time
  for (const npy_array::load how : {npy_array::load::map, npy_array::load::copy}) {
    try {
      npy_array::open(path("fifo"), how);
      ADD_FAILURE() << "opened a FIFO";
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::io_error);
      EXPECT_NE(std::string(e.what()).find("fifo: a FIFO, not a regular file"), std::string::npos) << e.what();
    }
  }
  ::alarm(0);
}

// The safe way to update a mapped table (README, "Files"): write_npy renames a new file into place,
// so a reader still mapping the old one keeps reading the old rows, and never faults.
TEST_F(NpyFiles, ReplacingAMappedTableWithWriteNpyLeavesItsReadersTheOldRows) {
  std::vector<float> old_rows(64 * 1024, 1.5f), new_rows(16, -2.0f);
  write_npy(path("w.npy"), npy_dtype::f32, std::vector<std::int64_t>{1024, 64}, old_rows.data());
  const npy_array mapped = npy_array::open(path("w.npy"));
  ASSERT_TRUE(mapped.mapped());
  write_npy(path("w.npy"), npy_dtype::f32, std::vector<std::int64_t>{1, 16}, new_rows.data());
  const std::span<const float> rows = mapped.as_floats();
  EXPECT_EQ(std::vector<float>(rows.begin(), rows.end()), old_rows);
  EXPECT_EQ(npy_array::open(path("w.npy")).as_floats()[15], -2.0f);
}

// A header may hold thousands of dimensions: an error quoting its shape stays one short line.
TEST_F(NpyFiles, ErrorsQuotingAShapeCutItShort) {
  const float one = 1.0f;
  write_npy(path("deep.npy"), npy_dtype::f32, std::vector<std::int64_t>(3000, 1), &one);
  try {
    npy_array::open(path("deep.npy")).as_table();
    ADD_FAILURE() << "a 3000-D array is no table";
  } catch (const error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("(1, 1, 1, 1, 1, 1, 1, 1, ... 3000 dimensions)"), std::string::npos) << what;
    EXPECT_LT(what.size(), 300u) << what;
  }
}

}  // namespace
}  // namespace embag
