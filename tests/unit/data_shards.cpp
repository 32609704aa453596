// Token shards (data/shards.hpp): plain text documents, tokenization into shards against the tokenizer
// itself (each document's encode() followed by EOS), the file round trip, and the reader's validation
// with errors that name the shard.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "dsx/data/shards.hpp"
#include "support/files.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
using dsx::test::error_of;
using dsx::test::temp_dir;

namespace {

const std::vector<std::string>& training_texts() {
  static const std::vector<std::string> texts{
      "The quick brown fox jumps over the lazy dog.", "A small shard holds tokens and document offsets.",
      "Numbers like 12, 345 and 6789 are split into digits.", "Documents end with an end-of-text token."};
  return texts;
}

// A small byte-level BPE whose EOS is <|endoftext|>.
const dsx::bpe_tokenizer& tokenizer() {
  static const dsx::bpe_tokenizer t = dsx::bpe_tokenizer::train(training_texts(), 256 + 1 + 40, {"<|endoftext|>"}, dsx::pretokenizer::gpt2);
  return t;
}

std::int32_t eos() { return *tokenizer().eos_id(); }

// The reference: every document's ids followed by EOS, concatenated, and the document end offsets.
std::pair<std::vector<std::int32_t>, std::vector<std::int64_t>> reference(const std::vector<std::string>& docs) {
  std::vector<std::int32_t> tokens;
  std::vector<std::int64_t> offsets{0};
  for (const std::string& d : docs) {
    if (d.empty()) continue;
    const auto ids = tokenizer().encode(d);
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    tokens.push_back(eos());
    offsets.push_back(std::int64_t(tokens.size()));
  }
  return {tokens, offsets};
}

std::vector<std::pair<std::string, std::size_t>> text_documents(const std::string& content) {
  std::istringstream in(content);
  std::vector<std::pair<std::string, std::size_t>> out;
  dsx::for_each_text_document(in, "notes.txt", [&](std::string_view text, const dsx::source_line& at) { out.emplace_back(text, at.line); });
  return out;
}

// Writes a shard file directly (bypassing token_shard's validation) to test the reader.
void write_raw(const fs::path& p, const std::vector<std::int32_t>& tokens, const std::vector<std::int64_t>& offsets,
               std::vector<std::pair<std::string, std::string>> metadata) {
  dsx::safetensors::writer w;
  w.add<std::int64_t>("doc_offsets", offsets, {std::int64_t(offsets.size())});
  w.add<std::int32_t>("tokens", tokens, {std::int64_t(tokens.size())});
  for (auto& [k, v] : metadata) w.set_metadata(k, v);
  w.write(p);
}

std::vector<std::pair<std::string, std::string>> good_metadata() {
  return {{"format", "dsx-token-shard-1"}, {"vocab_size", "10"}, {"eos_id", "9"}, {"tokenizer", "0123456789abcdef"}, {"sources", "[\"a.txt\"]"}};
}

}  // namespace

TEST_CASE("plain text: blank lines separate documents, CRLF becomes LF, the first line is reported", "[unit]") {
  const auto docs = text_documents("\n\nfirst line\r\nsecond line\r\n \t\r\nnext\n\n\n\nlast one\nend without newline");
  REQUIRE(docs.size() == 3);
  CHECK(docs[0] == std::pair<std::string, std::size_t>{"first line\nsecond line", 3});
  CHECK(docs[1] == std::pair<std::string, std::size_t>{"next", 6});
  CHECK(docs[2] == std::pair<std::string, std::size_t>{"last one\nend without newline", 10});
  CHECK(text_documents("").empty());
  CHECK(text_documents("\n \n\t\n").empty());
  CHECK_THAT(error_of([] { text_documents("fine\n\nstill fine\nbad \xC3\x28 here\n"); }),
             Equals("notes.txt:4: expected UTF-8 text, found the invalid byte 0xC3 at column 5"));
}

TEST_CASE("tokenize_documents: each document's ids followed by EOS, empty documents skipped", "[unit]") {
  std::vector<std::string> docs = training_texts();
  docs.insert(docs.begin() + 1, "");
  docs.push_back("Text the tokenizer never saw: zebra quartz!");
  const dsx::token_shard shard = dsx::tokenize_documents(docs, tokenizer(), "memory");
  const auto [tokens, offsets] = reference(docs);
  CHECK(std::vector<std::int32_t>(shard.tokens().begin(), shard.tokens().end()) == tokens);
  CHECK(std::vector<std::int64_t>(shard.doc_offsets().begin(), shard.doc_offsets().end()) == offsets);
  CHECK(shard.documents() == std::int64_t(docs.size()) - 1);
  const auto last = shard.document(shard.documents() - 1);
  CHECK(tokenizer().decode(last.first(last.size() - 1)) == docs.back());
  CHECK(shard.info().vocab_size == tokenizer().vocab_size());
  CHECK(shard.info().eos_id == eos());
  CHECK(shard.info().tokenizer == dsx::tokenizer_fingerprint(tokenizer()));
  CHECK(shard.info().sources == std::vector<std::string>{"memory"});
  CHECK_THAT(error_of([&] { shard.document(shard.documents()); }), Contains("memory") && Contains("outside"));

  const std::vector<std::string> none{"", ""};
  CHECK_THAT(error_of([&] { dsx::tokenize_documents(none, tokenizer(), "memory"); }), Contains("no non-empty document"));
  const auto no_eos = dsx::bpe_tokenizer::train(training_texts(), 256 + 1, {"<pad>"}, dsx::pretokenizer::gpt2);
  CHECK_THAT(error_of([&] { dsx::tokenize_documents(docs, no_eos, "memory"); }), Contains("no EOS"));
}

TEST_CASE("write_shards: JSONL, text files and folders round-trip through shard files", "[unit]") {
  temp_dir in, out;
  const std::vector<std::string> jsonl_docs{"The quick brown fox.", "", "Jumps over the lazy dog 42 times."};
  in.write("a.jsonl", "{\"text\": \"The quick brown fox.\"}\n{\"text\": \"\"}\n\n{\"text\": \"Jumps over the lazy dog 42 times.\"}\n");
  in.write("b.txt", "A paragraph of text\nthat spans two lines.\n\nAnother paragraph.\n");
  fs::create_directories(in.path / "more");
  in.write("more/d.txt", "From a folder, read second.\n");
  in.write("more/c.jsonl", "{\"text\": \"From a folder, read first.\"}\n");
  in.write("more/ignored.md", "not a document file\n");
  const std::vector<std::string> all{"The quick brown fox.", "Jumps over the lazy dog 42 times.",
                                     "A paragraph of text\nthat spans two lines.", "Another paragraph.",
                                     "From a folder, read first.", "From a folder, read second."};

  const fs::path inputs[] = {in.path / "a.jsonl", in.path / "b.txt", in.path / "more"};
  dsx::shard_options options;
  options.tokens_per_shard = 12;  // most documents close a shard
  options.chunk_bytes = 40;       // several parallel passes
  options.prefix = "train";
  const dsx::shard_summary summary = dsx::write_shards(inputs, tokenizer(), out.path / "shards", options);

  const auto [tokens, offsets] = reference(all);
  CHECK(summary.documents == std::int64_t(all.size()));
  CHECK(summary.tokens == std::int64_t(tokens.size()));
  REQUIRE(summary.files.size() > 2);
  CHECK(summary.files.front().filename() == "train-00000.safetensors");
  CHECK(summary.files.back().filename() == "train-0000" + std::to_string(summary.files.size() - 1) + ".safetensors");
  CHECK(dsx::list_shards(out.path / "shards") == summary.files);

  // The shards, concatenated, are the reference stream; documents are whole and in input order.
  std::vector<std::int32_t> joined;
  std::vector<std::string> decoded;
  std::vector<std::string> sources;
  const std::vector<dsx::token_shard> shards = dsx::open_shards(out.path / "shards");
  REQUIRE(shards.size() == summary.files.size());
  for (const dsx::token_shard& s : shards) {
    CHECK(s.info().tokenizer == dsx::tokenizer_fingerprint(tokenizer()));
    CHECK(s.info().vocab_size == tokenizer().vocab_size());
    CHECK(s.info().eos_id == eos());
    s.require_tokenizer(tokenizer());
    // A shard closes at the first document that reaches the limit.
    if (&s != &shards.back()) {
      CHECK(s.tokens().size() >= std::size_t(options.tokens_per_shard));
      CHECK(s.tokens().size() - s.document(s.documents() - 1).size() < std::size_t(options.tokens_per_shard));
    }
    joined.insert(joined.end(), s.tokens().begin(), s.tokens().end());
    for (std::int64_t d = 0; d < s.documents(); ++d) {
      const auto ids = s.document(d);
      decoded.push_back(tokenizer().decode(ids.first(ids.size() - 1)));
    }
    sources.insert(sources.end(), s.info().sources.begin(), s.info().sources.end());
  }
  CHECK(joined == tokens);
  CHECK(decoded == all);
  // Each shard lists the files its documents came from.
  CHECK(sources.front() == (in.path / "a.jsonl").string());
  CHECK(sources.back() == (in.path / "more" / "d.txt").string());

  // A folder that already holds shards of this prefix is refused; another prefix is fine.
  CHECK_THAT(error_of([&] { dsx::write_shards(inputs, tokenizer(), out.path / "shards", options); }),
             Contains("already holds shard 'train-00000.safetensors'"));
  options.prefix = "other";
  options.tokens_per_shard = 1 << 20;
  const auto one = dsx::write_shards(inputs, tokenizer(), out.path / "shards", options);
  CHECK(one.files.size() == 1);
  CHECK(dsx::token_shard::open(one.files[0]).tokens().size() == tokens.size());
}

TEST_CASE("write_shards names the file and line of bad input", "[unit]") {
  temp_dir in, out;
  const fs::path bad_json = in.write("bad.jsonl", "{\"text\": \"fine\"}\n{\"text\": [1]}\n");
  const fs::path bad_text = in.write("bad.txt", "fine\n\nfine\nnot \xFF fine\n");
  CHECK_THAT(error_of([&] { dsx::write_shards(std::span(&bad_json, 1), tokenizer(), out.path / "a"); }),
             Equals(bad_json.string() + ":2: expected a JSON object with a string field \"text\", found an array"));
  CHECK_THAT(error_of([&] { dsx::write_shards(std::span(&bad_text, 1), tokenizer(), out.path / "b"); }),
             Equals(bad_text.string() + ":4: expected UTF-8 text, found the invalid byte 0xFF at column 5"));
  const fs::path missing = in.path / "missing.txt";
  CHECK_THAT(error_of([&] { dsx::write_shards(std::span(&missing, 1), tokenizer(), out.path / "c"); }), Contains("missing.txt"));
  const fs::path empty = in.write("empty.jsonl", "{\"text\": \"\"}\n");
  CHECK_THAT(error_of([&] { dsx::write_shards(std::span(&empty, 1), tokenizer(), out.path / "d"); }), Contains("no non-empty document"));
  fs::create_directories(in.path / "nothing");
  const fs::path nothing = in.path / "nothing";
  CHECK_THAT(error_of([&] { dsx::write_shards(std::span(&nothing, 1), tokenizer(), out.path / "e"); }),
             Contains("nothing") && Contains("no .jsonl or .txt file"));
}

TEST_CASE("token_shard::open validates the file and names the shard in every error", "[unit]") {
  temp_dir dir;
  const fs::path p = dir.path / "s.safetensors";
  const std::vector<std::int32_t> tokens{1, 2, 9, 3, 9};
  const std::vector<std::int64_t> offsets{0, 3, 5};

  write_raw(p, tokens, offsets, good_metadata());
  const dsx::token_shard good = dsx::token_shard::open(p);
  CHECK(good.documents() == 2);
  CHECK(std::vector<std::int32_t>(good.document(1).begin(), good.document(1).end()) == std::vector<std::int32_t>{3, 9});
  CHECK(good.info().sources == std::vector<std::string>{"a.txt"});

  const auto open_error = [&](const std::vector<std::int32_t>& t, const std::vector<std::int64_t>& o,
                              std::vector<std::pair<std::string, std::string>> meta) {
    write_raw(p, t, o, std::move(meta));
    return error_of([&] { dsx::token_shard::open(p); });
  };
  const std::string shard = "token shard '" + p.string() + "': ";
  CHECK_THAT(open_error({1, 2, 9, 10, 9}, offsets, good_metadata()),
             Equals(shard + "expected token ids in 0..9, found 10 at position 3"));
  CHECK_THAT(open_error({1, -1, 9, 3, 9}, offsets, good_metadata()), Contains(shard) && Contains("found -1 at position 1"));
  CHECK_THAT(open_error(tokens, {0, 3, 3, 5}, good_metadata()),
             Equals(shard + "expected strictly increasing doc_offsets, found 3 after 3 (document 1)"));
  CHECK_THAT(open_error(tokens, {1, 3, 5}, good_metadata()), Equals(shard + "expected doc_offsets to start with 0, found 1"));
  CHECK_THAT(open_error(tokens, {0, 3}, good_metadata()),
             Equals(shard + "expected the last doc_offset to equal the token count 5, found 3"));
  CHECK_THAT(open_error({1, 2, 3, 3, 9}, offsets, good_metadata()), Equals(shard + "expected document 0 to end with EOS 9, found 3"));

  auto meta = good_metadata();
  meta.erase(meta.begin() + 1);  // vocab_size
  CHECK_THAT(open_error(tokens, offsets, meta), Equals(shard + "expected metadata \"vocab_size\", found none"));
  meta = good_metadata();
  meta[0].second = "something-else";
  CHECK_THAT(open_error(tokens, offsets, meta), Contains(shard) && Contains("format") && Contains("something-else"));
  meta = good_metadata();
  meta[2].second = "9x";
  CHECK_THAT(open_error(tokens, offsets, meta), Contains(shard) && Contains("\"eos_id\"") && Contains("\"9x\""));
  meta = good_metadata();
  meta[2].second = "10";
  CHECK_THAT(open_error(tokens, offsets, meta), Equals(shard + "expected eos_id in 0..9, found 10"));
  meta = good_metadata();
  meta[4].second = "[1]";
  CHECK_THAT(open_error(tokens, offsets, meta), Contains(shard) && Contains("\"sources\""));

  // Wrong tensor types and extra tensors.
  {
    dsx::safetensors::writer w;
    const std::vector<std::int64_t> wide(tokens.begin(), tokens.end());
    w.add<std::int64_t>("doc_offsets", offsets, {3});
    w.add<std::int64_t>("tokens", wide, {5});
    for (auto& [k, v] : good_metadata()) w.set_metadata(k, v);
    w.write(p);
    CHECK_THAT(error_of([&] { dsx::token_shard::open(p); }), Equals(shard + "expected tensor 'tokens' to be 1-D I32, found I64 of shape [5]"));
  }
  {
    dsx::safetensors::writer w;
    w.add<std::int64_t>("doc_offsets", offsets, {3});
    w.add<std::int32_t>("tokens", tokens, {5});
    w.add<std::int32_t>("labels", tokens, {5});
    for (auto& [k, v] : good_metadata()) w.set_metadata(k, v);
    w.write(p);
    CHECK_THAT(error_of([&] { dsx::token_shard::open(p); }), Contains(shard) && Contains("found 'labels'"));
  }
  {
    dsx::safetensors::writer w;
    w.add<std::int32_t>("tokens", tokens, {5});
    for (auto& [k, v] : good_metadata()) w.set_metadata(k, v);
    w.write(p);
    CHECK_THAT(error_of([&] { dsx::token_shard::open(p); }), Equals(shard + "expected a tensor 'doc_offsets', found none"));
  }
  CHECK_THAT(error_of([&] { dsx::token_shard::open(dir.path / "absent.safetensors"); }), Contains("absent.safetensors"));
  CHECK_THAT(error_of([&] { dsx::list_shards(dir.path / "absent"); }), Contains("absent"));
}

TEST_CASE("a shard written by token_shard::write reads back identically; another tokenizer is refused", "[unit]") {
  temp_dir dir;
  const dsx::token_shard shard = dsx::tokenize_documents(training_texts(), tokenizer(), "memory");
  shard.write(dir.path / "x.safetensors");
  const dsx::token_shard back = dsx::token_shard::open(dir.path / "x.safetensors");
  CHECK(std::vector<std::int32_t>(back.tokens().begin(), back.tokens().end()) ==
        std::vector<std::int32_t>(shard.tokens().begin(), shard.tokens().end()));
  CHECK(std::vector<std::int64_t>(back.doc_offsets().begin(), back.doc_offsets().end()) ==
        std::vector<std::int64_t>(shard.doc_offsets().begin(), shard.doc_offsets().end()));
  CHECK(back.info().tokenizer == shard.info().tokenizer);
  CHECK(back.info().sources == shard.info().sources);

  const auto other = dsx::bpe_tokenizer::train(training_texts(), 256 + 1 + 10, {"<|endoftext|>"}, dsx::pretokenizer::gpt2);
  CHECK(dsx::tokenizer_fingerprint(other) != dsx::tokenizer_fingerprint(tokenizer()));
  CHECK_THAT(error_of([&] { back.require_tokenizer(other); }),
             Contains("x.safetensors") && Contains(dsx::tokenizer_fingerprint(other)) && Contains(back.info().tokenizer));
  // The in-memory constructor validates like the reader.
  CHECK_THAT(error_of([] { dsx::token_shard({1, 2}, {0, 2}, dsx::shard_info{10, 9, "f", {}}, "handmade"); }),
             Equals("handmade: expected document 0 to end with EOS 9, found 2"));
}
