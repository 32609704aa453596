// safetensors reader and writer: round trips of every dtype, the documented tiny-v3 files, malformed
// files (each must give a dsx::error naming the file and the problem), and exact f16/bf16/fp8 values.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "dsx/config/param_spec.hpp"
#include "dsx/config/presets.hpp"
#include "dsx/io/safetensors.hpp"
#include "support/files.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using dsx::dtype;
using dsx::safetensors::reader;
using dsx::safetensors::writer;
using dsx::test::data_dir;
using dsx::test::error_of;
using dsx::test::temp_dir;

namespace {

template <class T>
std::span<const std::byte> bytes_of(const std::vector<T>& v) {
  return std::as_bytes(std::span(v));
}

// A file with a hand-written header: 8-byte length (`length`, default the header's size), the header,
// then `data_bytes` zero bytes.
void write_raw(const fs::path& p, const std::string& header, std::size_t data_bytes,
               std::uint64_t length = std::numeric_limits<std::uint64_t>::max()) {
  const std::uint64_t n = length == std::numeric_limits<std::uint64_t>::max() ? header.size() : length;
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << std::string(data_bytes, '\0');
}

std::string entry(const std::string& name, const std::string& type, const std::string& shape, std::uint64_t b,
                  std::uint64_t e) {
  return "\"" + name + "\":{\"dtype\":\"" + type + "\",\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(b) +
         "," + std::to_string(e) + "]}";
}

std::vector<std::int64_t> shape_of(const dsx::param_spec& p) {
  return p.is_vector() ? std::vector<std::int64_t>{p.rows} : std::vector<std::int64_t>{p.rows, p.cols};
}

}  // namespace

TEST_CASE("safetensors round trip keeps every dtype, shape, value and the metadata", "[io]") {
  const std::vector<double> f64{1.5, -2.25, 1e300, 0.1, -0.0, 6.02e23};
  const std::vector<float> f32{1.5f, -2.25f, 3e38f, 0.1f};
  const std::vector<dsx::f16> f16{dsx::f16(1.0f), dsx::f16(-0.5f), dsx::f16(65504.0f), dsx::f16(1e-7f)};
  const std::vector<dsx::bf16> bf16{dsx::bf16(3.140625f), dsx::bf16(-1e30f)};
  const std::vector<dsx::fp8_e4m3> e4m3{dsx::fp8_e4m3(448.0f), dsx::fp8_e4m3(-0.015625f), dsx::fp8_e4m3(1.75f)};
  const std::vector<std::uint8_t> e5m2{0x3c, 0x7b, 0x01};
  const std::vector<std::int64_t> i64{std::numeric_limits<std::int64_t>::min(), -1, 0, std::numeric_limits<std::int64_t>::max()};
  const std::vector<std::int32_t> i32{-2147483647 - 1, 7, 2147483647};
  const std::vector<std::int16_t> i16{-32768, 12, 32767};
  const std::vector<std::int8_t> i8{-128, 0, 127};
  const std::vector<std::uint8_t> u8{0, 200, 255};
  const std::vector<std::uint8_t> flags{1, 0, 1, 1};
  const std::vector<double> scalar{3.25};
  const std::vector<float> none;

  writer w;
  w.add<double>("f64", f64, {2, 3});
  w.add<float>("f32", f32, {4});
  w.add<dsx::f16>("f16", f16, {2, 2});
  w.add<dsx::bf16>("bf16", bf16, {2});
  w.add<dsx::fp8_e4m3>("f8_e4m3", e4m3, {3, 1});
  w.add("f8_e5m2", dtype::fp8_e5m2, {3}, bytes_of(e5m2));
  w.add<std::int64_t>("i64", i64, {4});
  w.add<std::int32_t>("i32", i32, {3});
  w.add<std::int16_t>("i16", i16, {3});
  w.add<std::int8_t>("i8", i8, {1, 3});
  w.add<std::uint8_t>("u8", u8, {3});
  w.add("bool", dtype::boolean, {2, 2}, bytes_of(flags));
  w.add<double>("scalar", scalar, {});
  w.add<float>("empty", none, {0, 3});
  w.set_metadata("format", "pt");
  w.set_metadata("note", "ünïcode ✓");

  temp_dir tmp;
  const fs::path file = tmp / "all.safetensors";
  w.write(file);

  // Nothing but the file is left in the folder (the temporary was renamed).
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(tmp.path)) ++entries;
  CHECK(entries == 1);
  // The header length keeps the data section 8-byte aligned.
  std::uint64_t header_len = 0;
  std::ifstream(file, std::ios::binary).read(reinterpret_cast<char*>(&header_len), 8);
  CHECK(header_len % 8 == 0);

  const reader r(file);
  const std::vector<std::string> names{"f64", "f32", "f16", "bf16", "f8_e4m3", "f8_e5m2", "i64",
                                       "i32", "i16", "i8",  "u8",  "bool", "scalar", "empty"};
  REQUIRE(r.tensors().size() == names.size());
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < names.size(); ++i) {
    CHECK(r.tensors()[i].name == names[i]);  // insertion order, and the data in that order
    CHECK(r.tensors()[i].begin == offset);
    offset = r.tensors()[i].end;
  }
  CHECK(fs::file_size(file) == 8 + header_len + offset);

  const auto same_bytes = [&](const std::string& name, dtype type, std::vector<std::int64_t> shape,
                              std::span<const std::byte> expected) {
    INFO(name);
    const auto& t = r.at(name);
    CHECK(t.type == type);
    CHECK(t.shape == shape);
    const auto got = r.bytes(t);
    REQUIRE(got.size() == expected.size());
    CHECK(std::memcmp(got.data(), expected.data(), got.size()) == 0);
  };
  same_bytes("f64", dtype::f64, {2, 3}, bytes_of(f64));
  same_bytes("f32", dtype::f32, {4}, bytes_of(f32));
  same_bytes("f16", dtype::f16, {2, 2}, bytes_of(f16));
  same_bytes("bf16", dtype::bf16, {2}, bytes_of(bf16));
  same_bytes("f8_e4m3", dtype::fp8_e4m3, {3, 1}, bytes_of(e4m3));
  same_bytes("f8_e5m2", dtype::fp8_e5m2, {3}, bytes_of(e5m2));
  same_bytes("i64", dtype::i64, {4}, bytes_of(i64));
  same_bytes("i32", dtype::i32, {3}, bytes_of(i32));
  same_bytes("i16", dtype::i16, {3}, bytes_of(i16));
  same_bytes("i8", dtype::i8, {1, 3}, bytes_of(i8));
  same_bytes("u8", dtype::u8, {3}, bytes_of(u8));
  same_bytes("bool", dtype::boolean, {2, 2}, bytes_of(flags));
  same_bytes("scalar", dtype::f64, {}, bytes_of(scalar));
  same_bytes("empty", dtype::f32, {0, 3}, bytes_of(none));
  CHECK(r.at("scalar").numel() == 1);
  CHECK(r.at("empty").numel() == 0);

  // Typed reads: the native type comes back bit for bit, the rest converts exactly where it can.
  CHECK(r.read<double>("f64") == f64);
  CHECK(r.read<float>("f32") == f32);
  CHECK(r.read<std::int64_t>("i64") == i64);
  CHECK(r.read<std::int32_t>("i32") == i32);
  CHECK(r.read<double>("scalar") == scalar);
  CHECK(r.read<float>("empty").empty());
  const auto f16_back = r.read<dsx::f16>("f16");
  for (std::size_t i = 0; i < f16.size(); ++i) CHECK(f16_back[i].bits == f16[i].bits);
  const auto bf16_back = r.read<dsx::bf16>("bf16");
  for (std::size_t i = 0; i < bf16.size(); ++i) CHECK(bf16_back[i].bits == bf16[i].bits);
  const auto e4m3_back = r.read<float>("f8_e4m3");
  for (std::size_t i = 0; i < e4m3.size(); ++i) CHECK(e4m3_back[i] == float(e4m3[i]));
  CHECK(r.read<std::int64_t>("i16") == std::vector<std::int64_t>{-32768, 12, 32767});
  CHECK(r.read<std::int32_t>("i8") == std::vector<std::int32_t>{-128, 0, 127});
  CHECK(r.read<std::int64_t>("u8") == std::vector<std::int64_t>{0, 200, 255});
  CHECK(r.read<double>("bool") == std::vector<double>{1, 0, 1, 1});
  CHECK(r.read<double>("i64")[1] == -1.0);

  CHECK(r.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "ünïcode ✓"}});
  CHECK(r.find("missing") == nullptr);
  CHECK_THAT(error_of([&] { (void)r.at("missing"); }), Contains("all.safetensors") && Contains("'missing'"));

  // Writing again replaces the file whole.
  writer w2;
  w2.add<float>("only", f32, {2, 2});
  w2.write(file);
  const reader r2(file);
  REQUIRE(r2.tensors().size() == 1);
  CHECK(r2.read<float>("only") == f32);
  CHECK(r2.metadata().empty());
}

TEST_CASE("safetensors reads convert between dtypes and refuse lossy integer reads", "[io]") {
  temp_dir tmp;
  const std::vector<double> f64{0.1, -3.0, 1e-45, 70000.0};
  const std::vector<std::int64_t> big{5, std::int64_t(1) << 40};
  writer w;
  w.add<double>("f64", f64, {4});
  w.add<std::int64_t>("big", big, {2});
  w.write(tmp / "c.safetensors");
  const reader r(tmp / "c.safetensors");

  const auto as_float = r.read<float>("f64");
  for (std::size_t i = 0; i < f64.size(); ++i) CHECK(as_float[i] == float(f64[i]));
  const auto as_bf16 = r.read<dsx::bf16>("f64");
  for (std::size_t i = 0; i < f64.size(); ++i) CHECK(as_bf16[i].bits == dsx::bf16(float(f64[i])).bits);
  const auto as_f16 = r.read<dsx::f16>("f64");
  CHECK(as_f16[3].bits == 0x7c00);  // 70000 overflows binary16 to +inf
  CHECK(r.read<double>("big") == std::vector<double>{5.0, 1099511627776.0});

  CHECK_THAT(error_of([&] { (void)r.read<std::int64_t>("f64"); }),
             Contains("c.safetensors") && Contains("'f64'") && Contains("integer"));
  CHECK_THAT(error_of([&] { (void)r.read<std::int32_t>("big"); }),
             Contains("c.safetensors") && Contains("'big'") && Contains("1099511627776") && Contains("32-bit"));
}

TEST_CASE("safetensors writer refuses inconsistent tensors", "[io]") {
  const std::vector<float> six(6, 1.0f);
  writer w;
  CHECK_THAT(error_of([&] { w.add<float>("x", six, {2, 2}); }),
             Contains("'x'") && Contains("[2, 2]") && Contains("needs 16 bytes, got 24"));
  w.add<float>("x", six, {2, 3});
  CHECK_THAT(error_of([&] { w.add<float>("x", six, {6}); }), Contains("'x'") && Contains("twice"));
  CHECK_THAT(error_of([&] { w.add<float>("__metadata__", six, {6}); }), Contains("__metadata__"));
  CHECK_THAT(error_of([&] { w.add<float>("neg", six, {-6}); }), Contains("'neg'") && Contains("negative"));
  temp_dir tmp;
  CHECK_THAT(error_of([&] { w.write(tmp / "no-such-folder" / "x.safetensors"); }), Contains("x.safetensors"));
}

TEST_CASE("malformed safetensors files give errors naming the file and the problem", "[io]") {
  temp_dir tmp;
  const auto fails = [&](const std::string& file, const std::string& problem) {
    INFO(file << ": expecting '" << problem << "'");
    const std::string msg = error_of([&] { reader r(tmp / file); });
    CHECK_THAT(msg, Contains(file) && Contains(problem));
  };

  {  // shorter than the length field
    std::ofstream(tmp / "short.safetensors", std::ios::binary) << "abcde";
    fails("short.safetensors", "too short for the 8-byte header length");
  }
  {  // a valid file cut short: the last tensor runs past the end
    writer w;
    const std::vector<float> v(8, 2.0f);
    w.add<float>("a", v, {8});
    w.add<float>("b", v, {2, 4});
    w.write(tmp / "truncated.safetensors");
    fs::resize_file(tmp / "truncated.safetensors", fs::file_size(tmp / "truncated.safetensors") - 4);
    fails("truncated.safetensors", "'b': data_offsets [32, 64] exceed the data section of 60 bytes");
  }
  write_raw(tmp / "long_header.safetensors", "{}", 0, 1000);
  fails("long_header.safetensors", "header length 1000 exceeds the 2 bytes after the length field");
  write_raw(tmp / "huge_header.safetensors", "{}", 0, std::uint64_t(1) << 40);
  fails("huge_header.safetensors", "exceeds the limit of 100000000 bytes");
  write_raw(tmp / "not_json.safetensors", "{\"a\": {\"dtype\": ", 0);
  fails("not_json.safetensors", "header is not valid JSON");
  write_raw(tmp / "array.safetensors", "[1, 2]", 0);
  fails("array.safetensors", "header must be a JSON object, found array");
  write_raw(tmp / "out_of_range.safetensors", "{" + entry("a", "F32", "[2]", 0, 8) + "}", 4);
  fails("out_of_range.safetensors", "'a': data_offsets [0, 8] exceed the data section of 4 bytes");
  write_raw(tmp / "overlap.safetensors",
            "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}", 12);
  fails("overlap.safetensors", "tensors 'a' [0, 8] and 'b' [4, 12] overlap");
  write_raw(tmp / "hole.safetensors",
            "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 12, 20) + "}", 20);
  fails("hole.safetensors", "hole in the data section: bytes [8, 12) belong to no tensor");
  write_raw(tmp / "tail.safetensors", "{" + entry("a", "F32", "[2]", 0, 8) + "}", 12);
  fails("tail.safetensors", "hole in the data section: its last 4 bytes [8, 12)");
  write_raw(tmp / "size.safetensors", "{" + entry("a", "F32", "[3]", 0, 8) + "}", 8);
  fails("size.safetensors", "'a': data_offsets [0, 8] hold 8 bytes, but shape [3] of F32 needs 12");
  write_raw(tmp / "dtype.safetensors", "{" + entry("a", "Q4", "[2]", 0, 8) + "}", 8);
  fails("dtype.safetensors", "'a': unknown dtype \"Q4\"");
  write_raw(tmp / "duplicate.safetensors",
            "{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("a", "F32", "[1]", 4, 8) + "}", 8);
  fails("duplicate.safetensors", "names 'a' twice");
  write_raw(tmp / "no_dtype.safetensors", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
  fails("no_dtype.safetensors", "'a': missing \"dtype\"");
  write_raw(tmp / "neg_shape.safetensors", "{" + entry("a", "F32", "[-1]", 0, 4) + "}", 4);
  fails("neg_shape.safetensors", "'a': shape [-1] must hold non-negative integers");
  write_raw(tmp / "float_offsets.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}", 4);
  fails("float_offsets.safetensors", "'a': data_offsets must be two non-negative integers");
  write_raw(tmp / "metadata.safetensors", "{\"__metadata__\":{\"k\":1}," + entry("a", "F32", "[1]", 0, 4) + "}", 4);
  fails("metadata.safetensors", "__metadata__ 'k' must be a string");
  fails("absent.safetensors", "cannot open");
}

TEST_CASE("f16, bf16 and fp8 values read exactly as hand-computed", "[io]") {
  // Bit patterns and the values IEEE binary16, bfloat16, OCP E4M3 (fn) and E5M2 give them.
  const std::vector<std::uint16_t> f16_bits{0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x3555, 0x7c00, 0xfc00, 0x8000};
  const std::vector<double> f16_values{1.0, -2.0, 65504.0, std::ldexp(1.0, -24), 1023 * std::ldexp(1.0, -24),
                                       std::ldexp(1.0, -14), 0.333251953125, INFINITY, -INFINITY, -0.0};
  const std::vector<std::uint16_t> bf16_bits{0x3f80, 0x4049, 0xc2f7, 0x0001, 0x7f7f};
  const std::vector<double> bf16_values{1.0, 3.140625, -123.5, std::ldexp(1.0, -133), 0x1.fep127};
  const std::vector<std::uint8_t> e4m3_bits{0x38, 0x7e, 0xfe, 0x01, 0x08, 0x3a, 0x00};
  const std::vector<double> e4m3_values{1.0, 448.0, -448.0, std::ldexp(1.0, -9), std::ldexp(1.0, -6), 1.25, 0.0};
  const std::vector<std::uint8_t> e5m2_bits{0x3c, 0x7b, 0x01, 0x7c, 0xfc, 0xc2};
  const std::vector<double> e5m2_values{1.0, 57344.0, std::ldexp(1.0, -16), INFINITY, -INFINITY, -3.0};

  temp_dir tmp;
  writer w;
  w.add("f16", dtype::f16, {std::int64_t(f16_bits.size())}, bytes_of(f16_bits));
  w.add("bf16", dtype::bf16, {std::int64_t(bf16_bits.size())}, bytes_of(bf16_bits));
  w.add("e4m3", dtype::fp8_e4m3, {std::int64_t(e4m3_bits.size())}, bytes_of(e4m3_bits));
  w.add("e5m2", dtype::fp8_e5m2, {std::int64_t(e5m2_bits.size())}, bytes_of(e5m2_bits));
  const std::vector<std::uint8_t> nan8{0x7f, 0x7d};
  w.add("nan", dtype::fp8_e4m3, {1}, std::as_bytes(std::span(nan8)).subspan(0, 1));
  w.add("nan5", dtype::fp8_e5m2, {1}, std::as_bytes(std::span(nan8)).subspan(1, 1));
  w.write(tmp / "values.safetensors");
  const reader r(tmp / "values.safetensors");
  CHECK(r.read<double>("f16") == f16_values);
  CHECK(std::signbit(r.read<double>("f16").back()));
  CHECK(r.read<double>("bf16") == bf16_values);
  CHECK(r.read<double>("e4m3") == e4m3_values);
  CHECK(r.read<double>("e5m2") == e5m2_values);
  CHECK(std::isnan(r.read<double>("nan")[0]));
  CHECK(std::isnan(r.read<double>("nan5")[0]));

  // Encoding: round to nearest, ties to even, overflow and NaN rules.
  const auto h = [](float x) { return dsx::f16(x).bits; };
  CHECK(h(1.0f) == 0x3c00);
  CHECK(h(-2.0f) == 0xc000);
  CHECK(h(65504.0f) == 0x7bff);
  CHECK(h(65519.0f) == 0x7bff);                         // below the tie with 65536
  CHECK(h(65520.0f) == 0x7c00);                         // the tie goes to the even neighbour: infinity
  CHECK(h(std::ldexp(1.0f, -25)) == 0x0000);            // half the smallest subnormal: tie to even 0
  CHECK(h(3 * std::ldexp(1.0f, -25)) == 0x0002);        // 1.5 subnormal steps: tie to even 2
  CHECK(h(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);     // tie between 0x3c00 and 0x3c01
  CHECK(h(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02); // tie between 0x3c01 and 0x3c02
  CHECK(h(1.0f / 3.0f) == 0x3555);
  CHECK(h(-INFINITY) == 0xfc00);
  CHECK(((h(NAN) & 0x7c00) == 0x7c00 && (h(NAN) & 0x3ff) != 0));
  const auto b = [](float x) { return dsx::bf16(x).bits; };
  CHECK(b(1.0f) == 0x3f80);
  CHECK(b(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);                          // tie to even
  CHECK(b(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);                      // tie to even (up)
  CHECK(b(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 0x3f81);  // just above the tie
  const auto e = [](float x) { return dsx::fp8_e4m3(x).bits; };
  CHECK(e(1.0f) == 0x38);
  CHECK(e(500.0f) == 0x7e);     // saturates to 448
  CHECK(e(-1e9f) == 0xfe);
  CHECK(e(1.0625f) == 0x38);    // tie between 1 and 1.125: even
  CHECK(e(1.1875f) == 0x3a);    // tie between 1.125 and 1.25: even
  CHECK(e(std::ldexp(1.0f, -9)) == 0x01);
  CHECK(e(std::ldexp(1.0f, -10)) == 0x00);  // tie between 0 and the smallest subnormal: even
}

TEST_CASE("f16 conversion is exact and rounds every midpoint to even", "[io]") {
  // Every finite half survives float and back; between neighbours a and b, the midpoint goes to the
  // one with an even mantissa and anything off the midpoint to the nearer one.
  for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {
    dsx::f16 x;
    x.bits = std::uint16_t(bits);
    if ((bits & 0x7c00) == 0x7c00) continue;
    const float v = float(x);
    REQUIRE(dsx::f16(v).bits == bits);
    if ((bits & 0x7fff) == 0x7bff) continue;
    dsx::f16 next;
    next.bits = std::uint16_t(bits + 1);
    const float w = float(next);  // the neighbour further from zero
    const float mid = v + (w - v) / 2;
    const std::uint16_t even = (bits & 1) ? next.bits : x.bits;
    REQUIRE(dsx::f16(mid).bits == even);
    REQUIRE(dsx::f16(std::nextafter(mid, w)).bits == next.bits);
    REQUIRE(dsx::f16(std::nextafter(mid, v)).bits == x.bits);
  }
}

TEST_CASE("tiny-v3 safetensors files hold the documented tensors", "[io]") {
  const reader model(data_dir() / "tiny-v3" / "model.safetensors");
  const auto& cfg = dsx::presets::tiny_v3;
  std::set<std::string> expected;
  dsx::for_each_param(cfg, [&](const dsx::param_spec& p) {
    const std::string name = dsx::hf_name(p);
    expected.insert(name);
    const auto* t = model.find(name);
    INFO(name);
    REQUIRE(t != nullptr);
    CHECK(t->type == dtype::f32);
    CHECK(t->shape == shape_of(p));
  });
  CHECK(model.tensors().size() == expected.size());

  const reader golden(data_dir() / "tiny-v3" / "golden.safetensors");
  const auto check = [&](const std::string& name, dtype type, std::vector<std::int64_t> shape) {
    INFO(name);
    const auto* t = golden.find(name);
    REQUIRE(t != nullptr);
    CHECK(t->type == type);
    CHECK(t->shape == shape);
  };
  check("inputs.tokens", dtype::i64, {2, 13});
  check("expected.logits", dtype::f64, {2, 13, 96});
  check("expected.loss", dtype::f64, {});
  check("inputs.prompt_len", dtype::i64, {1});
  check("expected.greedy", dtype::i64, {2, 8});
  CHECK(golden.read<std::int64_t>("inputs.prompt_len") == std::vector<std::int64_t>{5});
  for (const auto& token : golden.read<std::int64_t>("inputs.tokens")) CHECK((token >= 0 && token < cfg.vocab));
  CHECK(std::isfinite(golden.read<double>("expected.loss")[0]));

  // Gradients: one per trained weight of the model, with its shape, except for routed experts no
  // token picked (their gradient is zero and the reference leaves it out).
  std::set<std::string> routed_to;
  for (int layer = cfg.dense_layers; layer < cfg.layers; ++layer) {
    const std::string name = "expected.topk.layer" + std::to_string(layer);
    check(name, dtype::i64, {2 * 13, cfg.moe.top_k});
    for (const auto& e : golden.read<std::int64_t>(name)) {
      CHECK((e >= 0 && e < cfg.moe.routed));
      routed_to.insert(std::to_string(layer) + "." + std::to_string(e));
    }
  }
  std::size_t grads = 0;
  dsx::for_each_param(cfg, [&](const dsx::param_spec& p) {
    const std::string name = "expected.grad." + dsx::hf_name(p);
    const bool used = p.expert < 0 || routed_to.contains(std::to_string(p.layer) + "." + std::to_string(p.expert));
    INFO(name);
    if (!p.trained() || !used) {
      CHECK(golden.find(name) == nullptr);
      return;
    }
    check(name, dtype::f64, shape_of(p));
    ++grads;
  });
  CHECK(golden.tensors().size() == grads + 5 + std::size_t(cfg.moe_layers()));
}
