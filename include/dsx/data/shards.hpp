// dsx token shards: documents → token ids in safetensors files, and back.
//
// Documents come from JSONL files (one {"text": ...} object per line, see data/jsonl.hpp) or plain
// text files. In a plain text file, documents are separated by blank lines (lines holding only spaces,
// tabs or '\r'): each maximal run of non-blank lines is one document, its lines joined by '\n' (CRLF
// becomes LF); a file without blank lines is one document. A file is read as JSONL when its name ends
// in ".jsonl", as plain text otherwise. Plain text must be valid UTF-8 (an error names the file, the
// line and the byte). Empty documents are skipped: they would add nothing but an EOS.
//
// A shard is a safetensors file with two tensors and string metadata:
//   doc_offsets  I64 (documents + 1)  doc_offsets[0] = 0, strictly increasing, last = token count;
//                                     document d is tokens[doc_offsets[d], doc_offsets[d + 1])
//   tokens       I32 (token count)    every document's ids followed by EOS (so each range ends in EOS)
//   __metadata__ format = "dsx-token-shard-1", vocab_size, eos_id, tokenizer (tokenizer_fingerprint),
//                sources (a JSON array of the files the documents came from)
// Files are written atomically (io/safetensors.hpp). token_shard::open maps a file and validates all of
// it (structure, metadata, offsets, every id below vocab_size) before handing out a token, with errors
// that name the shard; the tokens are then read in place from the mapping.
//
// Tokenization runs over the documents in parallel (OpenMP; bpe_tokenizer::encode is thread-safe) and
// its output does not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <istream>
#include <limits>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"
#include "dsx/data/jsonl.hpp"
#include "dsx/data/tokenizer.hpp"
#include "dsx/io/safetensors.hpp"

namespace dsx {

// ---------------------------------------------------------------------------------------------------
// Documents

// Calls fn(std::string_view text, const source_line& at) for every document of a plain text stream
// (rules at the top of this file); `at` is the document's first line.
template <class F>
void for_each_text_document(std::istream& in, const std::string& file, F&& fn) {
  std::string line, doc;
  std::size_t number = 0, first = 0;
  const auto flush = [&] {
    if (!doc.empty()) fn(std::string_view(doc), source_line{file, first});
    doc.clear();
  };
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      flush();
      continue;
    }
    if (const std::size_t bad = tokenizer_detail::invalid_utf8_at(line); bad != std::string::npos) {
      char byte[8];
      std::snprintf(byte, sizeof byte, "0x%02X", unsigned(static_cast<unsigned char>(line[bad])));
      throw error(file + ":" + std::to_string(number) + ": expected UTF-8 text, found the invalid byte " + byte +
                  " at column " + std::to_string(bad + 1));
    }
    if (doc.empty()) first = number;
    else doc += '\n';
    doc += line;
  }
  if (in.bad()) throw error(file + ": read error after line " + std::to_string(number));
  flush();
}

// Every document of a file: JSONL when the name ends in ".jsonl", plain text otherwise.
template <class F>
void for_each_document(const std::filesystem::path& path, F&& fn) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error("cannot open document file '" + path.string() + "'");
  if (path.extension() == ".jsonl")
    for_each_jsonl_text(in, path.string(), [&](const std::string& text, const source_line& at) { fn(std::string_view(text), at); });
  else
    for_each_text_document(in, path.string(), fn);
}

// ---------------------------------------------------------------------------------------------------
// Shards

inline constexpr std::string_view token_shard_format = "dsx-token-shard-1";

// 64-bit FNV-1a of the tokenizer's tokenizer.json text, as 16 hex digits: two tokenizers with the same
// fingerprint encode identically (barring a 64-bit hash collision).
inline std::string tokenizer_fingerprint(const bpe_tokenizer& tokenizer) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : tokenizer.to_json()) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

// What a shard records about how it was made.
struct shard_info {
  std::int32_t vocab_size = 0;       // every id is below this
  std::int32_t eos_id = 0;           // ends every document
  std::string tokenizer;             // tokenizer_fingerprint of the tokenizer that made it
  std::vector<std::string> sources;  // the files (or descriptions) its documents came from
};

// One shard's tokens and document offsets, in memory or mapped from a file; cheap to copy (copies
// share the storage). Always valid: both constructors validate everything.
class token_shard {
 public:
  // Maps and validates a shard file (see the top of this file); errors name the file.
  static token_shard open(const std::filesystem::path& path) {
    auto file = std::make_shared<safetensors::reader>(path);
    const std::string where = "token shard '" + path.string() + "'";
    for (const auto& t : file->tensors())
      if (t.name != "tokens" && t.name != "doc_offsets")
        throw error(where + ": expected only the tensors 'tokens' and 'doc_offsets', found '" + t.name + "'");
    const auto tokens = tensor_span<std::int32_t>(*file, "tokens", where);
    const auto offsets = tensor_span<std::int64_t>(*file, "doc_offsets", where);
    token_shard s(read_info(file->metadata(), where), where);
    s.owner_ = file;
    s.tokens_ = tokens;
    s.offsets_ = offsets;
    s.validate();
    return s;
  }

  // A shard over tokens in memory; `name` describes it in errors. Validated like a file.
  token_shard(std::vector<std::int32_t> tokens, std::vector<std::int64_t> doc_offsets, shard_info info, std::string name)
      : info_(std::move(info)), where_(std::move(name)) {
    auto owned = std::make_shared<owned_storage>(owned_storage{std::move(tokens), std::move(doc_offsets)});
    tokens_ = owned->tokens;
    offsets_ = owned->offsets;
    owner_ = std::move(owned);
    validate();
  }

  std::span<const std::int32_t> tokens() const { return tokens_; }
  std::span<const std::int64_t> doc_offsets() const { return offsets_; }
  std::int64_t documents() const { return std::int64_t(offsets_.size()) - 1; }
  // Document d's ids, its EOS included.
  std::span<const std::int32_t> document(std::int64_t d) const {
    require(d >= 0 && d < documents(), where_ + ": document " + std::to_string(d) + " is outside 0.." + std::to_string(documents() - 1));
    return tokens_.subspan(std::size_t(offsets_[std::size_t(d)]), std::size_t(offsets_[std::size_t(d + 1)] - offsets_[std::size_t(d)]));
  }
  const shard_info& info() const { return info_; }
  const std::string& name() const { return where_; }

  // Refuses (dsx::error naming the shard) a shard made by another tokenizer than `tokenizer`.
  void require_tokenizer(const bpe_tokenizer& tokenizer) const {
    const std::string fingerprint = tokenizer_fingerprint(tokenizer);
    if (fingerprint != info_.tokenizer)
      throw error(where_ + ": was tokenized by tokenizer " + info_.tokenizer + " (vocab " + std::to_string(info_.vocab_size) +
                  "), but the tokenizer in use is " + fingerprint + " (vocab " + std::to_string(tokenizer.vocab_size()) + ")");
  }

  // Writes the shard as a safetensors file, atomically.
  void write(const std::filesystem::path& path) const {
    safetensors::writer w;
    w.add<std::int64_t>("doc_offsets", offsets_, {std::int64_t(offsets_.size())});  // first: 8-byte aligned
    w.add<std::int32_t>("tokens", tokens_, {std::int64_t(tokens_.size())});
    w.set_metadata("format", std::string(token_shard_format));
    w.set_metadata("vocab_size", std::to_string(info_.vocab_size));
    w.set_metadata("eos_id", std::to_string(info_.eos_id));
    w.set_metadata("tokenizer", info_.tokenizer);
    w.set_metadata("sources", nlohmann::json(info_.sources).dump());
    w.write(path);
  }

 private:
  struct owned_storage {
    std::vector<std::int32_t> tokens;
    std::vector<std::int64_t> offsets;
  };

  token_shard(shard_info info, std::string where) : info_(std::move(info)), where_(std::move(where)) {}

  // A 1-D tensor of exactly type T, read in place (the writer aligns the data; a file from elsewhere
  // that is not aligned is refused rather than read misaligned).
  template <class T>
  static std::span<const T> tensor_span(const safetensors::reader& file, std::string_view name, const std::string& where) {
    const safetensors::tensor_info* t = file.find(name);
    if (!t) throw error(where + ": expected a tensor '" + std::string(name) + "', found none");
    if (t->type != safetensors::dtype_of<T>() || t->shape.size() != 1)
      throw error(where + ": expected tensor '" + std::string(name) + "' to be 1-D " +
                  std::string(safetensors_name(safetensors::dtype_of<T>())) + ", found " +
                  std::string(safetensors_name(t->type)) + " of shape " + safetensors::shape_string(t->shape));
    const std::span<const std::byte> bytes = file.bytes(*t);
    if (reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(T) != 0)
      throw error(where + ": tensor '" + std::string(name) + "' is not aligned to " + std::to_string(alignof(T)) +
                  " bytes in the file (written by another tool?)");
    return {reinterpret_cast<const T*>(bytes.data()), std::size_t(t->numel())};
  }

  static shard_info read_info(const std::map<std::string, std::string>& meta, const std::string& where) {
    const auto get = [&](const char* key) -> const std::string& {
      const auto it = meta.find(key);
      if (it == meta.end()) throw error(where + ": expected metadata \"" + key + "\", found none");
      return it->second;
    };
    const auto integer = [&](const char* key) {
      const std::string& text = get(key);
      std::size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != text.size() || v < 0 || v > std::numeric_limits<std::int32_t>::max())
        throw error(where + ": expected metadata \"" + key + "\" to be a non-negative 32-bit integer, found \"" + text + "\"");
      return std::int32_t(v);
    };
    if (get("format") != token_shard_format)
      throw error(where + ": expected metadata format \"" + std::string(token_shard_format) + "\", found \"" + get("format") + "\"");
    shard_info info;
    info.vocab_size = integer("vocab_size");
    info.eos_id = integer("eos_id");
    info.tokenizer = get("tokenizer");
    nlohmann::json sources;
    try {
      sources = nlohmann::json::parse(get("sources"));
    } catch (const nlohmann::json::exception&) {
      sources = nullptr;
    }
    if (!sources.is_array() || !std::all_of(sources.begin(), sources.end(), [](const auto& s) { return s.is_string(); }))
      throw error(where + ": expected metadata \"sources\" to be a JSON array of strings, found " + get("sources"));
    info.sources = sources.get<std::vector<std::string>>();
    return info;
  }

  void validate() const {
    const std::string& w = where_;
    require(info_.vocab_size > 0, w + ": expected a positive vocab_size, found " + std::to_string(info_.vocab_size));
    require(info_.eos_id >= 0 && info_.eos_id < info_.vocab_size,
            w + ": expected eos_id in 0.." + std::to_string(info_.vocab_size - 1) + ", found " + std::to_string(info_.eos_id));
    require(!offsets_.empty() && offsets_.front() == 0,
            w + ": expected doc_offsets to start with 0, found " + (offsets_.empty() ? std::string("no offsets") : std::to_string(offsets_.front())));
    for (std::size_t d = 1; d < offsets_.size(); ++d)
      if (offsets_[d] <= offsets_[d - 1])
        throw error(w + ": expected strictly increasing doc_offsets, found " + std::to_string(offsets_[d]) + " after " +
                    std::to_string(offsets_[d - 1]) + " (document " + std::to_string(d - 1) + ")");
    require(offsets_.back() == std::int64_t(tokens_.size()),
            w + ": expected the last doc_offset to equal the token count " + std::to_string(tokens_.size()) + ", found " +
                std::to_string(offsets_.back()));
    for (std::size_t i = 0; i < tokens_.size(); ++i)
      if (tokens_[i] < 0 || tokens_[i] >= info_.vocab_size)
        throw error(w + ": expected token ids in 0.." + std::to_string(info_.vocab_size - 1) + ", found " +
                    std::to_string(tokens_[i]) + " at position " + std::to_string(i));
    for (std::size_t d = 1; d < offsets_.size(); ++d)
      if (tokens_[std::size_t(offsets_[d] - 1)] != info_.eos_id)
        throw error(w + ": expected document " + std::to_string(d - 1) + " to end with EOS " + std::to_string(info_.eos_id) +
                    ", found " + std::to_string(tokens_[std::size_t(offsets_[d] - 1)]));
  }

  shard_info info_;
  std::string where_;
  std::shared_ptr<const void> owner_;  // the mapping or the vectors the spans point into
  std::span<const std::int32_t> tokens_;
  std::span<const std::int64_t> offsets_;
};

namespace shard_detail {

// A document waiting to be tokenized and where it came from (for errors).
struct pending {
  std::string text;
  std::size_t source;  // index into the list of sources
  std::size_t line;    // its first line in that source (the document number for documents in memory)
};

// Encodes docs in parallel into `tokens` (appended; each document followed by EOS) and appends each
// document's end offset to `offsets`. The first failing document (in input order) is reported as
// "<source>:<line>", whatever the thread count.
inline void encode_all(std::span<const pending> docs, std::span<const std::string> sources, const bpe_tokenizer& tokenizer,
                       std::int32_t eos, std::vector<std::int32_t>& tokens, std::vector<std::int64_t>& offsets) {
  const std::int64_t n = std::int64_t(docs.size());
  std::vector<std::vector<std::int32_t>> ids(docs.size());
  std::vector<std::string> failure(docs.size());
#pragma omp parallel for schedule(dynamic, 16)
  for (std::int64_t i = 0; i < n; ++i) {
    try {
      tokenizer.encode_into(docs[std::size_t(i)].text, false, ids[std::size_t(i)]);
      ids[std::size_t(i)].push_back(eos);
    } catch (const std::exception& e) {
      failure[std::size_t(i)] = e.what();
    }
  }
  for (std::size_t i = 0; i < docs.size(); ++i) {
    if (!failure[i].empty())
      throw error(sources[docs[i].source] + ":" + std::to_string(docs[i].line) + ": cannot tokenize the document: " + failure[i]);
    tokens.insert(tokens.end(), ids[i].begin(), ids[i].end());
    offsets.push_back(std::int64_t(tokens.size()));
  }
}

inline std::int32_t eos_of(const bpe_tokenizer& tokenizer) {
  const auto eos = tokenizer.eos_id();
  require(eos.has_value(), "token shards: the tokenizer has no EOS token (looked for <｜end▁of▁sentence｜>, </s>, <|endoftext|> and others)");
  return *eos;
}

}  // namespace shard_detail

// Tokenizes documents held in memory into one in-memory shard; `source` describes them in the metadata
// and in errors ("<source>:<n>" for the n-th document, from 1). Empty documents are skipped.
inline token_shard tokenize_documents(std::span<const std::string> docs, const bpe_tokenizer& tokenizer, const std::string& source) {
  const std::int32_t eos = shard_detail::eos_of(tokenizer);
  std::vector<shard_detail::pending> pending;
  pending.reserve(docs.size());
  for (std::size_t i = 0; i < docs.size(); ++i)
    if (!docs[i].empty()) pending.push_back({docs[i], 0, i + 1});
  std::vector<std::int32_t> tokens;
  std::vector<std::int64_t> offsets{0};
  const std::string sources[] = {source};
  shard_detail::encode_all(pending, sources, tokenizer, eos, tokens, offsets);
  require(offsets.size() > 1, source + ": no non-empty document to tokenize");
  return token_shard(std::move(tokens), std::move(offsets),
                     shard_info{tokenizer.vocab_size(), eos, tokenizer_fingerprint(tokenizer), {source}}, source);
}

struct shard_options {
  std::int64_t tokens_per_shard = std::int64_t(1) << 26;  // a shard is closed after the document that reaches this
  std::size_t chunk_bytes = std::size_t(1) << 26;         // text tokenized per parallel pass (bounds memory)
  std::string prefix = "shard";                           // files are <prefix>-00000.safetensors, ...
};

struct shard_summary {
  std::vector<std::filesystem::path> files;
  std::int64_t documents = 0, tokens = 0;
};

// Tokenizes every document of `inputs` (files, or folders whose *.jsonl and *.txt files are taken in
// name order) into shards in `out_dir` (created if needed). Documents keep their input order and are
// never split across shards. Refuses an out_dir that already holds shards with this prefix, so that a
// folder never mixes two runs.
inline shard_summary write_shards(std::span<const std::filesystem::path> inputs, const bpe_tokenizer& tokenizer,
                                  const std::filesystem::path& out_dir, const shard_options& options = {}) {
  namespace fs = std::filesystem;
  require(options.tokens_per_shard > 0, "write_shards: tokens_per_shard must be positive, found " + std::to_string(options.tokens_per_shard));
  const std::int32_t eos = shard_detail::eos_of(tokenizer);
  const std::string fingerprint = tokenizer_fingerprint(tokenizer);

  std::vector<fs::path> files;
  for (const fs::path& p : inputs) {
    if (fs::is_directory(p)) {
      std::vector<fs::path> found;
      for (const auto& e : fs::directory_iterator(p))
        if (e.is_regular_file() && (e.path().extension() == ".jsonl" || e.path().extension() == ".txt")) found.push_back(e.path());
      std::sort(found.begin(), found.end());
      require(!found.empty(), "write_shards: folder '" + p.string() + "' holds no .jsonl or .txt file");
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.push_back(p);
    }
  }
  require(!files.empty(), "write_shards: no input files");

  fs::create_directories(out_dir);
  const std::string stem = options.prefix + "-";
  std::vector<std::string> existing;
  for (const auto& e : fs::directory_iterator(out_dir)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with(stem) && e.path().extension() == ".safetensors") existing.push_back(name);
  }
  if (!existing.empty())
    throw error("write_shards: output folder '" + out_dir.string() + "' already holds shard '" +
                *std::min_element(existing.begin(), existing.end()) + "'; choose an empty folder or another prefix");

  std::vector<std::string> sources;
  for (const fs::path& f : files) sources.push_back(f.string());
  shard_summary summary;
  std::vector<std::int32_t> tokens;
  std::vector<std::int64_t> offsets{0};
  std::vector<std::size_t> used;  // indices of the sources in the current shard
  std::vector<shard_detail::pending> chunk;
  std::size_t chunk_bytes = 0;

  const auto close_shard = [&] {
    if (tokens.empty()) return;
    char number[16];
    std::snprintf(number, sizeof number, "%05zu", summary.files.size());
    const fs::path path = out_dir / (stem + number + ".safetensors");
    shard_info info{tokenizer.vocab_size(), eos, fingerprint, {}};
    for (std::size_t s : used) info.sources.push_back(sources[s]);
    summary.documents += std::int64_t(offsets.size()) - 1;
    summary.tokens += std::int64_t(tokens.size());
    token_shard(std::move(tokens), std::move(offsets), std::move(info), path.string()).write(path);
    summary.files.push_back(path);
    tokens.clear();
    offsets.assign(1, 0);
    used.clear();
  };
  // Tokenizes the chunk, then moves documents into shards, closing each shard at the size limit.
  const auto flush_chunk = [&] {
    std::vector<std::int32_t> ids;
    std::vector<std::int64_t> ends{0};
    shard_detail::encode_all(chunk, sources, tokenizer, eos, ids, ends);
    for (std::size_t d = 0; d < chunk.size(); ++d) {
      tokens.insert(tokens.end(), ids.begin() + ends[d], ids.begin() + ends[d + 1]);
      offsets.push_back(std::int64_t(tokens.size()));
      if (used.empty() || used.back() != chunk[d].source) used.push_back(chunk[d].source);
      if (std::int64_t(tokens.size()) >= options.tokens_per_shard) close_shard();
    }
    chunk.clear();
    chunk_bytes = 0;
  };

  for (std::size_t f = 0; f < files.size(); ++f) {
    for_each_document(files[f], [&](std::string_view text, const source_line& at) {
      if (text.empty()) return;
      chunk.push_back({std::string(text), f, at.line});
      chunk_bytes += text.size();
      if (chunk_bytes >= options.chunk_bytes) flush_chunk();
    });
  }
  flush_chunk();
  close_shard();
  require(!summary.files.empty(), "write_shards: the inputs hold no non-empty document");
  return summary;
}

// The shard files at `path`: the file itself, or a folder's *.safetensors files in name order.
inline std::vector<std::filesystem::path> list_shards(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(path)) {
    require(fs::is_regular_file(path), "no token shard file or folder at '" + path.string() + "'");
    return {path};
  }
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(path))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") out.push_back(e.path());
  std::sort(out.begin(), out.end());
  require(!out.empty(), "folder '" + path.string() + "' holds no .safetensors token shard");
  return out;
}

// Opens and validates every shard at `path` (see list_shards).
inline std::vector<token_shard> open_shards(const std::filesystem::path& path) {
  std::vector<token_shard> out;
  for (const auto& p : list_shards(path)) out.push_back(token_shard::open(p));
  return out;
}

}  // namespace dsx
