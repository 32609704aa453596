// bpe_tokenizer against the HF `tokenizers` library: every expected id and text here was produced by
// tests/data/tokenizer/generate.py with that library, on the corpus in tests/data/tokenizer/corpus.jsonl.
// Covers DeepSeek-V3's own tokenizer.json, a GPT-2-style tokenizer trained by HF with added tokens using
// every flag, pre-tokenizer/model variants, dsx's training (merges identical to HF's), save/load, the
// JSONL tool function and malformed files.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/data/tokenizer.hpp"
#include "support/files.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using dsx::test::error_of;
using dsx::test::temp_dir;
using json = nlohmann::json;

namespace {

fs::path data_dir() { return dsx::test::data_dir() / "tokenizer"; }

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

json read_json(const fs::path& p) { return json::parse(read_text(p)); }

std::vector<std::string> read_texts(const fs::path& p) {
  std::vector<std::string> out;
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in);
  for (std::string line; std::getline(in, line);) out.push_back(json::parse(line).at("text").get<std::string>());
  return out;
}

const std::vector<std::string>& corpus() {
  static const std::vector<std::string> lines = read_texts(data_dir() / "corpus.jsonl");
  return lines;
}

const dsx::bpe_tokenizer& deepseek() {
  static const dsx::bpe_tokenizer t = dsx::bpe_tokenizer::load(data_dir() / "deepseek_v3.tokenizer.json.gz");
  return t;
}

std::vector<std::int32_t> ids_of(const json& j) { return j.get<std::vector<std::int32_t>>(); }

// Whether decode(encode(text)) must give `text` back: always, except where an added token with lstrip
// or rstrip (gpt2_style's [NOTE], <tab>, <sep>) absorbs the white space next to it.
bool lossless(const std::string& text) {
  for (const char* stripping : {"[NOTE]", "<tab>", "<sep>"})
    if (text.find(stripping) != std::string::npos) return false;
  return true;
}

// Every check an expected_<name>.json holds, for the lines it covers.
void check_against(const dsx::bpe_tokenizer& t, const json& expected) {
  const auto& lines = corpus();
  const json& enc = expected.at("encode");
  REQUIRE(enc.size() == lines.size());
  for (std::size_t i = 0; i < lines.size(); ++i) {
    INFO("corpus line " << i << ": " << json(lines[i]).dump());
    const auto ids = t.encode(lines[i]);
    CHECK(ids == ids_of(enc[i]));
    CHECK(t.decode(ids) == expected.at("decode")[i].get<std::string>());
    CHECK(t.decode(ids, true) == expected.at("decode_skip_special")[i].get<std::string>());
    if (lossless(lines[i])) CHECK(t.decode(ids) == lines[i]);
  }
  const json& special = expected.at("encode_special");
  for (std::size_t i = 0; i < special.size(); ++i) {
    INFO("corpus line " << i << " with special tokens");
    CHECK(t.encode(lines[i], true) == ids_of(special[i]));
  }
  for (const json& s : expected.at("decode_slices")) {
    const auto ids = ids_of(enc[s.at("line").get<std::size_t>()]);
    const auto begin = s.at("begin").get<std::size_t>(), end = s.at("end").get<std::size_t>();
    INFO("slice [" << begin << ", " << end << ") of line " << s.at("line"));
    CHECK(t.decode(std::span(ids).subspan(begin, end - begin)) == s.at("text").get<std::string>());
  }
}

// The edits generate.py's apply_patch makes to a tokenizer.json.
json patched(json data, const json& patch) {
  for (const char* key : {"pre_tokenizer", "post_processor", "decoder"})
    if (patch.contains(key)) data[key] = patch[key];
  if (patch.contains("model")) {
    const json& m = patch["model"];
    for (const char* key : {"unk_token", "fuse_unk", "ignore_merges"})
      if (m.contains(key)) data["model"][key] = m[key];
    if (m.contains("remove_vocab"))
      for (const json& token : m["remove_vocab"]) data["model"]["vocab"].erase(token.get<std::string>());
  }
  return data;
}

// gpt2_style.tokenizer.json with one edit, loaded from text; returns the error message.
std::string load_error(const std::function<void(json&)>& edit) {
  json data = read_json(data_dir() / "gpt2_style.tokenizer.json");
  edit(data);
  return error_of([&] { dsx::bpe_tokenizer::from_json(data.dump(), "edited.json"); });
}

}  // namespace

TEST_CASE("DeepSeek-V3's tokenizer.json encodes and decodes the corpus exactly as HF tokenizers", "[unit]") {
  const auto& t = deepseek();
  check_against(t, read_json(data_dir() / "expected_deepseek_v3.json"));
  // Its special tokens by name: the ids HF gives their text.
  REQUIRE(t.bos_id().has_value());
  REQUIRE(t.eos_id().has_value());
  CHECK(t.token_to_id("<｜begin▁of▁sentence｜>") == t.bos_id());
  CHECK(t.token_to_id("<｜end▁of▁sentence｜>") == t.eos_id());
  CHECK(t.is_special(*t.bos_id()));
  CHECK(t.id_to_token(*t.eos_id()) == "<｜end▁of▁sentence｜>");
  std::size_t added_seen = 0;
  for (const dsx::added_token& a : t.added_tokens()) {
    CHECK(t.token_to_id(a.content) == a.id);
    if (t.encode(a.content) == std::vector<std::int32_t>{a.id}) ++added_seen;
  }
  CHECK(added_seen == t.added_tokens().size());  // each added token's text encodes to its id alone
}

TEST_CASE("a GPT-2-style tokenizer with flagged added tokens and a template matches HF tokenizers", "[unit]") {
  const auto t = dsx::bpe_tokenizer::load(data_dir() / "gpt2_style.tokenizer.json");
  check_against(t, read_json(data_dir() / "expected_gpt2_style.json"));
  CHECK(t.bos_id() == t.token_to_id("<|bos|>"));
  CHECK(t.eos_id() == t.token_to_id("<|endoftext|>"));
  CHECK(t.special_id("<sep>") == t.token_to_id("<sep>"));
  CHECK_FALSE(t.special_id("<mask>").has_value());  // added, not special
}

TEST_CASE("pre-tokenizer and model variants match HF tokenizers", "[unit]") {
  const json variants = read_json(data_dir() / "variants.json");
  const auto& lines = corpus();
  for (const json& v : variants.at("variants")) {
    const std::string name = v.at("name").get<std::string>();
    INFO("variant " << name);
    const json data = patched(read_json(data_dir() / v.at("base").get<std::string>()), v.at("patch"));
    const auto t = dsx::bpe_tokenizer::from_json(data.dump(), name);
    const json& enc = v.at("encode");
    for (std::size_t i = 0; i < enc.size(); ++i) {
      INFO("corpus line " << i << ": " << json(lines[i]).dump());
      CHECK(t.encode(lines[i]) == ids_of(enc[i]));
    }
    const json& special = v.at("encode_special");
    for (std::size_t i = 0; i < special.size(); ++i) CHECK(t.encode(lines[i], true) == ids_of(special[i]));
    const json& decoded = v.at("decode");
    for (std::size_t i = 0; i < decoded.size(); ++i) CHECK(t.decode(ids_of(enc[i])) == decoded[i].get<std::string>());
  }
}

TEST_CASE("training gives HF's vocabulary and merges, and HF encodes the saved file as dsx does", "[unit]") {
  const auto texts = read_texts(data_dir() / "train_corpus.jsonl");
  const json config = read_json(data_dir() / "train_config.json");
  for (const auto& [kind, name] : {std::pair{dsx::pretokenizer::gpt2, "gpt2"}, std::pair{dsx::pretokenizer::deepseek_v3, "deepseek_v3"}}) {
    INFO("pre-tokenizer " << name);
    const json& c = config.at(name);
    const auto trained = dsx::bpe_tokenizer::train(texts, c.at("vocab_size").get<int>(),
                                                   c.at("special_tokens").get<std::vector<std::string>>(), kind);
    // HF's own training on the same corpus and settings.
    const fs::path hf_file = data_dir() / (std::string("hf_trained_") + name + ".tokenizer.json");
    const auto hf = dsx::bpe_tokenizer::load(hf_file);
    CHECK(trained.merges() == hf.merges());
    REQUIRE(trained.vocab_size() == hf.vocab_size());
    for (std::int32_t id = 0; id < hf.vocab_size(); ++id) CHECK(trained.id_to_token(id) == hf.id_to_token(id));
    for (const std::string& s : c.at("special_tokens").get<std::vector<std::string>>()) CHECK(trained.special_id(s) == hf.special_id(s));
    // The pre-tokenizer written into the trained file is the one HF trained with (for deepseek_v3:
    // the one of DeepSeek-V3's tokenizer.json, copied by generate.py).
    CHECK(json::parse(trained.to_json()).at("pre_tokenizer") == read_json(hf_file).at("pre_tokenizer"));
    // What HF encodes with the file dsx saved (generate.py loaded that file in HF).
    check_against(trained, read_json(data_dir() / (std::string("expected_cpp_trained_") + name + ".json")));
  }
}

TEST_CASE("training stops at the requested size and keeps special tokens first", "[unit]") {
  const std::vector<std::string> texts = {"low lower lowest", "newer newest wider", "low low low"};
  const auto t = dsx::bpe_tokenizer::train(texts, 256 + 2 + 5, {"<s>", "</s>"}, dsx::pretokenizer::gpt2);
  CHECK(t.vocab_size() == 256 + 2 + 5);
  CHECK(t.token_to_id("<s>") == 0);
  CHECK(t.token_to_id("</s>") == 1);
  CHECK(t.merges().size() == 5);
  for (const std::string& s : texts) CHECK(t.decode(t.encode(s)) == s);
  CHECK(t.encode("<s>low") == std::vector<std::int32_t>{0, *t.token_to_id("low")});
  CHECK_THROWS_AS(dsx::bpe_tokenizer::train(texts, 0, {}, dsx::pretokenizer::gpt2), dsx::error);
}

TEST_CASE("save then load gives the same tokenizer", "[unit]") {
  temp_dir dir;
  const auto original = dsx::bpe_tokenizer::load(data_dir() / "gpt2_style.tokenizer.json");
  original.save(dir.path / "saved.json");
  const auto reloaded = dsx::bpe_tokenizer::load(dir.path / "saved.json");
  CHECK(reloaded.to_json() == original.to_json());
  for (const std::string& line : corpus()) {
    CHECK(reloaded.encode(line) == original.encode(line));
    CHECK(reloaded.encode(line, true) == original.encode(line, true));
  }
  CHECK_THROWS_WITH(original.save(dir.path / "missing-folder" / "x.json"), Contains("missing-folder"));
}

TEST_CASE("tokenize_jsonl writes one ids line per document and names the line of bad input", "[unit]") {
  const auto t = dsx::bpe_tokenizer::load(data_dir() / "gpt2_style.tokenizer.json");
  const json expected = read_json(data_dir() / "expected_gpt2_style.json");
  const auto& lines = corpus();
  std::stringstream in, out;
  for (std::size_t i = 0; i < 20; ++i) in << json{{"text", lines[i]}, {"id", i}}.dump() << "\n" << (i % 7 == 0 ? "\n" : "");
  dsx::tokenize_jsonl(t, in, out, false, "docs.jsonl");
  std::size_t n = 0;
  for (std::string line; std::getline(out, line); ++n) {
    REQUIRE(n < 20);
    CHECK(json::parse(line) == json{{"ids", expected.at("encode")[n]}});
  }
  CHECK(n == 20);

  std::stringstream special_in(json{{"text", lines[3]}}.dump() + "\n"), special_out;
  dsx::tokenize_jsonl(t, special_in, special_out, true, "docs.jsonl");
  CHECK(json::parse(special_out.str()) == json{{"ids", expected.at("encode_special")[3]}});

  const auto bad = [&](const std::string& text) {
    std::stringstream i(text), o;
    return error_of([&] { dsx::tokenize_jsonl(t, i, o, false, "docs.jsonl"); });
  };
  CHECK_THAT(bad("{\"text\": \"ok\"}\n{\"text\": \"unterminated\n"), Contains("docs.jsonl:2") && Contains("not JSON"));
  CHECK_THAT(bad("\n[1, 2]\n"), Contains("docs.jsonl:2") && Contains("an array"));
  CHECK_THAT(bad("{\"body\": \"x\"}\n"), Contains("docs.jsonl:1") && Contains("\"text\""));
  CHECK_THAT(bad("{\"text\": 5}\n"), Contains("docs.jsonl:1") && Contains("a number"));
}

TEST_CASE("bad tokenizer files and bad input give errors that name the file and the field", "[unit]") {
  temp_dir dir;
  CHECK_THAT(error_of([&] { dsx::bpe_tokenizer::load(dir.path / "absent.json"); }), Contains("absent.json"));

  std::ofstream(dir.path / "not.json") << "{\"model\": ";
  CHECK_THAT(error_of([&] { dsx::bpe_tokenizer::load(dir.path / "not.json"); }), Contains("not.json") && Contains("not valid JSON"));

  // A gzip stream cut in half.
  const std::string gz = read_text(data_dir() / "deepseek_v3.tokenizer.json.gz");
  std::ofstream(dir.path / "cut.json.gz", std::ios::binary) << gz.substr(0, gz.size() / 2);
  CHECK_THAT(error_of([&] { dsx::bpe_tokenizer::load(dir.path / "cut.json.gz"); }), Contains("cut.json.gz") && Contains("gzip"));

  CHECK_THAT(load_error([](json& d) { d.erase("model"); }), Contains("edited.json") && Contains("field 'model': missing"));
  CHECK_THAT(load_error([](json& d) { d["model"]["type"] = "WordPiece"; }), Contains("model.type") && Contains("WordPiece"));
  CHECK_THAT(load_error([](json& d) { d["model"]["vocab"] = json::array(); }), Contains("model.vocab") && Contains("an array"));
  CHECK_THAT(load_error([](json& d) { d["model"]["merges"][0] = json::array({"Ġ", "no-such-token"}); }),
             Contains("model.merges[0]") && Contains("no-such-token"));
  CHECK_THAT(load_error([](json& d) { d["model"]["merges"][1] = "three part merge"; }), Contains("model.merges[1]"));
  CHECK_THAT(load_error([](json& d) { d["model"]["dropout"] = 0.1; }), Contains("model.dropout"));
  CHECK_THAT(load_error([](json& d) { d["model"]["byte_fallback"] = true; }), Contains("model.byte_fallback"));
  CHECK_THAT(load_error([](json& d) { d["normalizer"] = json{{"type", "NFC"}}; }), Contains("'normalizer'") && Contains("NFC"));
  CHECK_THAT(load_error([](json& d) { d["pre_tokenizer"] = json{{"type", "Metaspace"}, {"replacement", "_"}}; }),
             Contains("'pre_tokenizer'") && Contains("Metaspace"));
  CHECK_THAT(load_error([](json& d) {
               d["pre_tokenizer"] = json{{"type", "Sequence"}, {"pretokenizers", json::array({d["pre_tokenizer"], json{{"type", "Digits"}}})}};
             }),
             Contains("pre_tokenizer.pretokenizers[1]") && Contains("after ByteLevel"));
  CHECK_THAT(load_error([](json& d) {
               d["pre_tokenizer"] = json{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}, {"invert", false}};
             }),
             Contains("pre_tokenizer.pattern.Regex") && Contains("(unclosed"));
  CHECK_THAT(load_error([](json& d) { d["pre_tokenizer"]["add_prefix_space"] = "yes"; }), Contains("pre_tokenizer.add_prefix_space"));
  CHECK_THAT(load_error([](json& d) { d["decoder"] = json{{"type", "WordPiece"}}; }), Contains("'decoder'") && Contains("WordPiece"));
  CHECK_THAT(load_error([](json& d) { d["post_processor"] = json{{"type", "Unknown"}}; }), Contains("'post_processor'") && Contains("Unknown"));
  CHECK_THAT(load_error([](json& d) { d["truncation"] = json{{"max_length", 8}}; }), Contains("'truncation'"));
  CHECK_THAT(load_error([](json& d) { d["added_tokens"].back()["id"] = 5000; }), Contains("added_tokens[") && Contains(".id") && Contains("5000"));
  CHECK_THAT(load_error([](json& d) { d["added_tokens"][0]["content"] = 7; }), Contains("added_tokens[0].content") && Contains("a number"));

  const auto t = dsx::bpe_tokenizer::load(data_dir() / "gpt2_style.tokenizer.json");
  CHECK_THAT(error_of([&] { t.encode(std::string("ok \xC3\x28 bad")); }), Contains("UTF-8") && Contains("byte 3"));
  const std::vector<std::int32_t> out_of_range = {1, t.vocab_size()};
  CHECK_THAT(error_of([&] { t.decode(out_of_range); }), Contains(std::to_string(t.vocab_size())));
  CHECK_THAT(error_of([&] { t.id_to_token(-1); }), Contains("-1"));
}
