// The bodies of POST /v1/lookup: a compact binary form and JSON for people; the response comes in
// the request's form.
//
// Binary request (Content-Type: application/x-embag), little-endian, packed, no padding:
//   "EMBQ"             4 bytes
//   version            u16 = 1
//   output             u16: 0 = fp32, 1 = fp16 (each value the fp32 result rounded to nearest even)
//   table count        u32
//   then per table:
//     name length      u16, then the name's bytes (UTF-8, as GET /v1/models lists it)
//     flags            u16: bit 0 = per-sample weights follow the indices; other bits 0
//     bags B           u32
//     indices N        u32
//     lengths          B x i32 (bag b is the next lengths[b] indices)
//     indices          N x i64
//     weights          N x f32, when flagged
//
// Binary response (200; errors are text/plain with the message):
//   "EMBR"             4 bytes
//   version            u16 = 1
//   output             u16, as asked
//   generation         u64: the model snapshot every table of this response was read from
//   table count        u32
//   then per table, in the request's order:
//     name length      u16, then the name
//     table version    u64 (GET /v1/models lists the current ones)
//     rows             u32 (B bags, or N indices with mode none)
//     dim              u32
//     values           rows x dim, fp32 or fp16
//
// JSON request:  {"output": "f32"|"f16" (optional), "tables": [{"table": "user", "lengths": [2, 1],
//                 "indices": [4, 7, 1], "weights": [0.5, 1, 2] (optional)}, ...]}
// JSON response: {"generation": 3, "tables": [{"table": "user", "version": 1, "dim": 4,
//                 "values": [[...], [...]]}, ...]}: numbers print so that they read back to the same
//                 fp32 (fp16 values as the fp32 they equal); a NaN or infinite value prints as null.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace embag::serve {

enum class body_format { binary, json };
enum class output_type : std::uint16_t { f32 = 0, f16 = 1 };

inline constexpr std::string_view binary_content_type = "application/x-embag";

// One table's bags in a lookup request.
struct table_request {
  std::string table;
  std::vector<std::int32_t> lengths;
  std::vector<std::int64_t> indices;
  std::vector<float> weights;  // empty: unweighted
};

struct lookup_request {
  output_type output = output_type::f32;
  std::vector<table_request> tables;
};

// One table's rows in a response: values hold rows x dim elements of the response's output type.
struct table_response {
  std::string table;
  std::uint64_t version = 0;
  std::uint32_t rows = 0, dim = 0;
  std::vector<std::byte> values;
};

struct lookup_response {
  output_type output = output_type::f32;
  std::uint64_t generation = 0;
  std::vector<table_response> tables;
};

// A body that cannot be parsed: what is wrong and where (a byte offset, or a JSON path).
struct malformed_body : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Parse a body; throws malformed_body. Declared sizes are checked against the bytes that remain
// before anything is allocated, so a small body cannot make the server allocate much.
lookup_request parse_binary_request(std::string_view body);
lookup_request parse_json_request(std::string_view body);

std::string encode_binary_response(const lookup_response& response);
std::string encode_json_response(const lookup_response& response);

// The same forms from the client's side: the load generator and the tests build requests and read
// responses with these.
std::string encode_binary_request(const lookup_request& request);
std::string encode_json_request(const lookup_request& request);
lookup_response parse_binary_response(std::string_view body);
lookup_response parse_json_response(std::string_view body);

// fp16 (IEEE binary16) bits to the fp32 they equal.
float f16_to_f32(std::uint16_t bits) noexcept;

}  // namespace embag::serve
