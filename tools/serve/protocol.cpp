#include "protocol.hpp"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

namespace embag::serve {
namespace {

static_assert(std::endian::native == std::endian::little, "the binary forms are little-endian, as this host");

constexpr std::string_view request_magic = "EMBQ", response_magic = "EMBR";
constexpr std::uint16_t protocol_version = 1;
constexpr std::uint16_t weighted_flag = 1;

std::size_t element_bytes(output_type type) { return type == output_type::f16 ? 2 : 4; }

// Reads the binary forms front to back; every read checks the bytes that remain first.
class reader {
 public:
  explicit reader(std::string_view body) : body_(body) {}

  template <class T>
  T value(const char* what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what, 1), sizeof(T));
    return v;
  }
  // The bytes are checked before the vector is allocated: a declared count is not trusted.
  template <class T>
  std::vector<T> array(std::uint64_t count, const std::string& what) {
    const char* bytes = take(sizeof(T), what, count);
    std::vector<T> out(static_cast<std::size_t>(count));
    if (count) std::memcpy(out.data(), bytes, count * sizeof(T));
    return out;
  }
  std::string text(std::size_t bytes, const char* what) { return std::string(take(1, what, bytes), bytes); }
  void expect_end() const {
    if (position_ != body_.size())
      throw malformed_body(std::to_string(body_.size() - position_) + " bytes after the last table, at byte " +
                           std::to_string(position_));
  }

 private:
  const char* take(std::size_t element, const std::string& what, std::uint64_t count) {
    const std::size_t left = body_.size() - position_;
    if (count > left / element)
      throw malformed_body(what + " at byte " + std::to_string(position_) + " needs " + std::to_string(count) + " x " +
                           std::to_string(element) + " bytes, the body has " + std::to_string(left) + " left");
    const char* p = body_.data() + position_;
    position_ += static_cast<std::size_t>(count) * element;
    return p;
  }
  std::string_view body_;
  std::size_t position_ = 0;
};

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}
void put_bytes(std::string& out, const void* p, std::size_t n) { out.append(static_cast<const char*>(p), n); }

void put_name(std::string& out, const std::string& name) {
  if (name.size() > std::numeric_limits<std::uint16_t>::max()) throw std::length_error("table name longer than 65535 bytes");
  put(out, static_cast<std::uint16_t>(name.size()));
  out += name;
}

output_type output_from_code(std::uint16_t code) {
  if (code > 1) throw malformed_body("output type " + std::to_string(code) + " at byte 6 is not 0 (fp32) or 1 (fp16)");
  return static_cast<output_type>(code);
}

// JSON input: each value checked for its type, errors naming the path.
template <class T>
std::vector<T> json_array(const nlohmann::json& parent, const char* key, const std::string& where, bool required) {
  std::vector<T> out;
  if (!parent.contains(key)) {
    if (required) throw malformed_body(where + " has no \"" + key + "\"");
    return out;
  }
  const auto& a = parent[key];
  if (!a.is_array()) throw malformed_body(where + "." + key + " is not an array");
  out.reserve(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto& v = a[i];
    const auto at = [&] { return where + "." + key + "[" + std::to_string(i) + "]"; };
    if constexpr (std::is_floating_point_v<T>) {
      if (!v.is_number()) throw malformed_body(at() + " is not a number");
      out.push_back(v.get<T>());
    } else {
      if (!v.is_number_integer()) throw malformed_body(at() + " is not an integer");
      if (v.is_number_unsigned() ? v.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<T>::max())
                                 : (v.get<std::int64_t>() < std::numeric_limits<T>::min() ||
                                    v.get<std::int64_t>() > std::numeric_limits<T>::max()))
        throw malformed_body(at() + " = " + v.dump() + " does not fit in " + std::to_string(sizeof(T) * 8) + " bits");
      out.push_back(static_cast<T>(v.get<std::int64_t>()));
    }
  }
  return out;
}

float element_as_float(const table_response& t, output_type type, std::size_t i) {
  if (type == output_type::f32) {
    float v;
    std::memcpy(&v, t.values.data() + i * 4, 4);
    return v;
  }
  std::uint16_t bits;
  std::memcpy(&bits, t.values.data() + i * 2, 2);
  return f16_to_f32(bits);
}

}  // namespace

float f16_to_f32(std::uint16_t bits) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1fu, mantissa = bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa x 2^-24, exact in fp32
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  const std::uint32_t out = exponent == 0x1f ? sign | 0x7f800000u | (mantissa << 13)
                                             : sign | ((exponent + 112) << 23) | (mantissa << 13);
  return std::bit_cast<float>(out);
}

lookup_request parse_binary_request(std::string_view body) {
  reader in(body);
  if (in.text(4, "the magic") != request_magic) throw malformed_body("the body does not start with \"EMBQ\"");
  if (auto v = in.value<std::uint16_t>("the version"); v != protocol_version)
    throw malformed_body("version " + std::to_string(v) + " at byte 4; this server reads version 1");
  lookup_request request;
  request.output = output_from_code(in.value<std::uint16_t>("the output type"));
  const auto tables = in.value<std::uint32_t>("the table count");
  for (std::uint32_t t = 0; t < tables; ++t) {
    const std::string where = "tables[" + std::to_string(t) + "]";
    table_request table;
    table.table = in.text(in.value<std::uint16_t>((where + "'s name length").c_str()), (where + "'s name").c_str());
    const auto flags = in.value<std::uint16_t>((where + "'s flags").c_str());
    if (flags & ~weighted_flag) throw malformed_body(where + ": unknown flags " + std::to_string(flags));
    const auto bags = in.value<std::uint32_t>((where + "'s bag count").c_str());
    const auto indices = in.value<std::uint32_t>((where + "'s index count").c_str());
    table.lengths = in.array<std::int32_t>(bags, where + "'s " + std::to_string(bags) + " lengths");
    table.indices = in.array<std::int64_t>(indices, where + "'s " + std::to_string(indices) + " indices");
    if (flags & weighted_flag) table.weights = in.array<float>(indices, where + "'s " + std::to_string(indices) + " weights");
    request.tables.push_back(std::move(table));
  }
  in.expect_end();
  return request;
}

lookup_request parse_json_request(std::string_view body) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(body);
  } catch (const nlohmann::json::parse_error& e) {
    throw malformed_body(std::string("not JSON: ") + e.what());
  }
  if (!doc.is_object()) throw malformed_body("the body is not a JSON object");
  lookup_request request;
  if (doc.contains("output")) {
    const auto& o = doc["output"];
    if (o == "f32" || o == "fp32") request.output = output_type::f32;
    else if (o == "f16" || o == "fp16") request.output = output_type::f16;
    else throw malformed_body("output " + o.dump() + " is not \"f32\" or \"f16\"");
  }
  if (!doc.contains("tables") || !doc["tables"].is_array()) throw malformed_body("the body has no \"tables\" array");
  const auto& tables = doc["tables"];
  for (std::size_t t = 0; t < tables.size(); ++t) {
    const std::string where = "tables[" + std::to_string(t) + "]";
    const auto& entry = tables[t];
    if (!entry.is_object()) throw malformed_body(where + " is not an object");
    if (!entry.contains("table") || !entry["table"].is_string()) throw malformed_body(where + " has no \"table\" name");
    table_request table;
    table.table = entry["table"].get<std::string>();
    table.lengths = json_array<std::int32_t>(entry, "lengths", where, true);
    table.indices = json_array<std::int64_t>(entry, "indices", where, true);
    table.weights = json_array<float>(entry, "weights", where, false);
    if (entry.contains("weights") && table.weights.size() != table.indices.size())
      throw malformed_body(where + " has " + std::to_string(table.weights.size()) + " weights for " +
                           std::to_string(table.indices.size()) + " indices");
    request.tables.push_back(std::move(table));
  }
  return request;
}

std::string encode_binary_response(const lookup_response& response) {
  std::size_t bytes = 24;
  for (const auto& t : response.tables) bytes += 2 + t.table.size() + 16 + t.values.size();
  std::string out;
  out.reserve(bytes);
  out += response_magic;
  put(out, protocol_version);
  put(out, static_cast<std::uint16_t>(response.output));
  put(out, response.generation);
  put(out, static_cast<std::uint32_t>(response.tables.size()));
  for (const auto& t : response.tables) {
    put_name(out, t.table);
    put(out, t.version);
    put(out, t.rows);
    put(out, t.dim);
    put_bytes(out, t.values.data(), t.values.size());
  }
  return out;
}

std::string encode_json_response(const lookup_response& response) {
  nlohmann::json doc;
  doc["generation"] = response.generation;
  auto& tables = doc["tables"] = nlohmann::json::array();
  for (const auto& t : response.tables) {
    nlohmann::json rows = nlohmann::json::array();
    for (std::uint32_t r = 0; r < t.rows; ++r) {
      nlohmann::json row = nlohmann::json::array();
      for (std::uint32_t c = 0; c < t.dim; ++c) {
        const float v = element_as_float(t, response.output, static_cast<std::size_t>(r) * t.dim + c);
        row.push_back(std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr));
      }
      rows.push_back(std::move(row));
    }
    tables.push_back({{"table", t.table}, {"version", t.version}, {"dim", t.dim}, {"values", std::move(rows)}});
  }
  return doc.dump();
}

std::string encode_binary_request(const lookup_request& request) {
  std::string out;
  out += request_magic;
  put(out, protocol_version);
  put(out, static_cast<std::uint16_t>(request.output));
  put(out, static_cast<std::uint32_t>(request.tables.size()));
  for (const auto& t : request.tables) {
    put_name(out, t.table);
    put(out, static_cast<std::uint16_t>(t.weights.empty() ? 0 : weighted_flag));
    put(out, static_cast<std::uint32_t>(t.lengths.size()));
    put(out, static_cast<std::uint32_t>(t.indices.size()));
    put_bytes(out, t.lengths.data(), t.lengths.size() * 4);
    put_bytes(out, t.indices.data(), t.indices.size() * 8);
    put_bytes(out, t.weights.data(), t.weights.size() * 4);
  }
  return out;
}

std::string encode_json_request(const lookup_request& request) {
  nlohmann::json doc;
  doc["output"] = request.output == output_type::f16 ? "f16" : "f32";
  auto& tables = doc["tables"] = nlohmann::json::array();
  for (const auto& t : request.tables) {
    nlohmann::json entry = {{"table", t.table}, {"lengths", t.lengths}, {"indices", t.indices}};
    if (!t.weights.empty()) entry["weights"] = t.weights;
    tables.push_back(std::move(entry));
  }
  return doc.dump();
}

lookup_response parse_binary_response(std::string_view body) {
  reader in(body);
  if (in.text(4, "the magic") != response_magic) throw malformed_body("the response does not start with \"EMBR\"");
  if (auto v = in.value<std::uint16_t>("the version"); v != protocol_version)
    throw malformed_body("response version " + std::to_string(v));
  lookup_response response;
  response.output = output_from_code(in.value<std::uint16_t>("the output type"));
  response.generation = in.value<std::uint64_t>("the generation");
  const auto tables = in.value<std::uint32_t>("the table count");
  for (std::uint32_t t = 0; t < tables; ++t) {
    table_response table;
    table.table = in.text(in.value<std::uint16_t>("a name length"), "a name");
    table.version = in.value<std::uint64_t>("a table version");
    table.rows = in.value<std::uint32_t>("a row count");
    table.dim = in.value<std::uint32_t>("a dim");
    table.values = in.array<std::byte>(static_cast<std::uint64_t>(table.rows) * table.dim * element_bytes(response.output),
                                       "the values of " + table.table);
    response.tables.push_back(std::move(table));
  }
  in.expect_end();
  return response;
}

lookup_response parse_json_response(std::string_view body) {
  const auto doc = nlohmann::json::parse(body);
  lookup_response response;
  response.output = output_type::f32;  // JSON numbers read back as the fp32 they print
  response.generation = doc.at("generation").get<std::uint64_t>();
  for (const auto& t : doc.at("tables")) {
    table_response table;
    table.table = t.at("table").get<std::string>();
    table.version = t.at("version").get<std::uint64_t>();
    table.dim = t.at("dim").get<std::uint32_t>();
    const auto& rows = t.at("values");
    table.rows = static_cast<std::uint32_t>(rows.size());
    table.values.resize(static_cast<std::size_t>(table.rows) * table.dim * 4);
    std::size_t i = 0;
    for (const auto& row : rows)
      for (const auto& v : row) {
        const float f = v.is_null() ? std::numeric_limits<float>::quiet_NaN() : v.get<float>();
        std::memcpy(table.values.data() + 4 * i++, &f, 4);
      }
    response.tables.push_back(std::move(table));
  }
  return response;
}

}  // namespace embag::serve
