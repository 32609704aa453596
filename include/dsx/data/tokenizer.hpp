// dsx::bpe_tokenizer — byte-level BPE over HF `tokenizer.json` files: load, save, encode, decode, train.
//
// Contract: for every file this class accepts, encode() returns exactly the ids that the HF `tokenizers`
// library returns for `Tokenizer.from_file(path).encode(text, add_special_tokens=add_special).ids`, and
// decode() returns what its `decode(ids, skip_special_tokens=skip_special)` returns. A file with a
// component outside the supported set is refused with a dsx::error naming the field and the component
// instead of being encoded differently. The pipeline, in HF's order:
//
//   1. added tokens are split out of the raw text: first those with normalized=false, then (on the
//      remaining pieces, after the normalizer) those with normalized=true; each set is matched
//      leftmost-longest, honouring single_word, lstrip and rstrip;
//   2. the remaining pieces go through the pre-tokenizer: any chain of Split (Regex or String pattern,
//      behaviour Removed/Isolated/MergedWithPrevious/MergedWithNext/Contiguous, invert) and Digits, then
//      a final ByteLevel (with or without its own GPT-2 regex, with or without add_prefix_space);
//   3. each piece becomes bytes, one initial symbol per byte, and merges are applied lowest rank first
//      (leftmost on a tie) with a priority queue over a linked list of symbols; results for short pieces
//      are cached;
//   4. with add_special, the post-processor adds its tokens (TemplateProcessing, Roberta/BertProcessing;
//      ByteLevel adds none — DeepSeek-V3's file is such a file: its BOS comes from transformers'
//      tokenizer_config.json, not from tokenizer.json, so callers prepend bos_id() themselves).
//
// Supported: normalizer null or an empty Sequence; model BPE without dropout, continuing_subword_prefix,
// end_of_word_suffix or byte_fallback (unk_token, fuse_unk and ignore_merges are honoured); decoder
// ByteLevel or null; truncation and padding null. Regular expressions are compiled by Oniguruma with
// its default syntax and UTF-8, the engine and settings the HF library uses.
//
// Files may be gzip-compressed (detected from the content, not the name). Link with -lonig -lz.
// A bpe_tokenizer is immutable after construction; encode/decode may be called from several threads.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <istream>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <oniguruma.h>
#include <zlib.h>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"

namespace dsx {

// The pre-tokenizer a trained tokenizer gets. gpt2: ByteLevel with its own regex. deepseek_v3: the
// pre-tokenizer of DeepSeek-V3's tokenizer.json (Splits for digit runs of 1-3, CJK runs and a
// letters/marks/punctuation pattern, then ByteLevel without regex).
enum class pretokenizer { gpt2, deepseek_v3 };

// An entry of tokenizer.json's "added_tokens", with HF's defaults for absent flags.
struct added_token {
  std::int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

namespace tokenizer_detail {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------------
// UTF-8

// Decodes the scalar value at s[i], advancing i; returns -1 (and leaves i) for an ill-formed sequence
// (overlong forms, surrogates and values above U+10FFFF included).
inline std::int32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) return static_cast<std::int32_t>(s[i++] & 0x7F);
  int len = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  std::int32_t cp = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) { len = 2; cp = b0 & 0x1F; }
  else if (b0 >= 0xE0 && b0 <= 0xEF) { len = 3; cp = b0 & 0x0F; if (b0 == 0xE0) lo = 0xA0; if (b0 == 0xED) hi = 0x9F; }
  else if (b0 >= 0xF0 && b0 <= 0xF4) { len = 4; cp = b0 & 0x07; if (b0 == 0xF0) lo = 0x90; if (b0 == 0xF4) hi = 0x8F; }
  else return -1;
  if (i + len > s.size()) return -1;
  for (int k = 1; k < len; ++k) {
    const unsigned char b = byte(i + k);
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return -1;
    cp = (cp << 6) | (b & 0x3F);
  }
  i += len;
  return cp;
}

inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) { out += static_cast<char>(cp); }
  else if (cp < 0x800) { out += static_cast<char>(0xC0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
  else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12)); out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18)); out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// The byte offset of the first ill-formed sequence, or npos when `s` is valid UTF-8.
inline std::size_t invalid_utf8_at(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) { ++i; continue; }
    const std::size_t at = i;
    if (next_code_point(s, i) < 0) return at;
  }
  return std::string_view::npos;
}

// Bytes to text the way Rust's String::from_utf8_lossy does (what HF's ByteLevel decoder returns): each
// maximal prefix of a well-formed sequence that cannot be completed becomes one U+FFFD.
inline std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    const std::size_t start = i;
    if (next_code_point(s, i) >= 0) { out.append(s.substr(start, i - start)); continue; }
    // Skip the lead byte and every continuation byte that was still acceptable at its position.
    const unsigned char b0 = static_cast<unsigned char>(s[start]);
    std::size_t k = start + 1;
    int len = b0 >= 0xC2 && b0 <= 0xDF ? 2 : b0 >= 0xE0 && b0 <= 0xEF ? 3 : b0 >= 0xF0 && b0 <= 0xF4 ? 4 : 1;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
    for (int n = 1; n < len && k < s.size(); ++n, ++k) {
      const unsigned char b = static_cast<unsigned char>(s[k]);
      if (b < (n == 1 ? lo : 0x80) || b > (n == 1 ? hi : 0xBF)) break;
    }
    out += "\xEF\xBF\xBD";
    i = k;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// The GPT-2 byte <-> character table: printable Latin-1 bytes stand for themselves, the other bytes take
// the code points 256, 257, ... in byte order.
struct byte_table {
  std::array<std::uint32_t, 256> code{};      // byte -> code point
  std::array<std::string, 256> utf8;          // byte -> that code point in UTF-8
  std::array<std::int16_t, 324> byte_of{};    // code point -> byte, -1 where none (all code points < 324)

  byte_table() {
    byte_of.fill(-1);
    std::uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      code[b] = printable ? static_cast<std::uint32_t>(b) : next++;
      append_utf8(utf8[b], code[b]);
      byte_of[code[b]] = static_cast<std::int16_t>(b);
    }
  }
  static const byte_table& get() {
    static const byte_table table;
    return table;
  }
  // The bytes a token string stands for, or nullopt when one of its characters is not in the table.
  std::optional<std::string> to_bytes(std::string_view token) const {
    std::string out;
    out.reserve(token.size());
    std::size_t i = 0;
    while (i < token.size()) {
      const std::int32_t cp = next_code_point(token, i);
      if (cp < 0 || cp >= static_cast<std::int32_t>(byte_of.size()) || byte_of[cp] < 0) return std::nullopt;
      out += static_cast<char>(byte_of[cp]);
    }
    return out;
  }
  std::string to_token(std::string_view bytes) const {
    std::string out;
    out.reserve(bytes.size() * 2);
    for (const char c : bytes) out += utf8[static_cast<unsigned char>(c)];
    return out;
  }
};

// ---------------------------------------------------------------------------------------------------
// Oniguruma

inline void onig_setup() {
  static const bool done = [] {
    OnigEncoding encodings[1] = {ONIG_ENCODING_UTF8};
    onig_initialize(encodings, 1);
    return true;
  }();
  (void)done;
}

struct region_deleter {
  void operator()(OnigRegion* r) const { onig_region_free(r, 1); }
};
using region_ptr = std::unique_ptr<OnigRegion, region_deleter>;
inline region_ptr new_region() {
  region_ptr r(onig_region_new());
  if (!r) throw error("tokenizer: out of memory allocating an Oniguruma region");
  return r;
}

// A compiled pattern (Oniguruma default syntax, UTF-8, no options: what HF's `onig::Regex::new` does).
class unicode_regex {
 public:
  unicode_regex(const std::string& pattern, const std::string& where) {
    onig_setup();
    regex_t* raw = nullptr;
    OnigErrorInfo info;
    const auto* p = reinterpret_cast<const OnigUChar*>(pattern.data());
    const int rc = onig_new(&raw, p, p + pattern.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &info);
    if (rc != ONIG_NORMAL) {
      OnigUChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
      onig_error_code_to_str(message, rc, &info);
      throw error(where + ": the regular expression does not compile (" + reinterpret_cast<const char*>(message) +
                  "): " + pattern);
    }
    re_.reset(raw, onig_free);
  }
  // Searches text[from, size) with text as the subject (look-behind sees text[0, from)). On a match
  // stores its byte offsets in [begin, end) and returns true.
  bool search(std::string_view text, std::size_t from, OnigRegion* region, std::size_t& begin, std::size_t& end) const {
    const auto* s = reinterpret_cast<const OnigUChar*>(text.data());
    const auto* e = s + text.size();
    const int rc = onig_search(re_.get(), s, e, s + from, e, region, ONIG_OPTION_NONE);
    if (rc == ONIG_MISMATCH) return false;
    if (rc < 0) {
      OnigUChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
      onig_error_code_to_str(message, rc);
      throw error(std::string("tokenizer: regular expression search failed: ") + reinterpret_cast<const char*>(message));
    }
    begin = static_cast<std::size_t>(region->beg[0]);
    end = static_cast<std::size_t>(region->end[0]);
    return true;
  }
  // Whether the whole of `text` matches.
  bool full_match(std::string_view text, OnigRegion* region) const {
    const auto* s = reinterpret_cast<const OnigUChar*>(text.data());
    const int rc = onig_match(re_.get(), s, s + text.size(), s, region, ONIG_OPTION_NONE);
    return rc >= 0 && static_cast<std::size_t>(rc) == text.size();
  }

 private:
  std::shared_ptr<regex_t> re_;
};

// Byte ranges of `text` with a flag telling whether the range is a match of the pattern.
struct span {
  std::size_t begin, end;
  bool match;
};

// Non-overlapping matches of `re` over the whole of `text`, the gaps between them included, in the
// order onig's find_iter gives (an empty match right after the previous match is skipped).
inline void regex_spans(const unicode_regex& re, std::string_view text, OnigRegion* region, std::vector<span>& out) {
  out.clear();
  std::size_t prev = 0, last_end = 0;
  std::optional<std::size_t> last_match_end;
  while (last_end <= text.size()) {
    std::size_t b = 0, e = 0;
    if (!re.search(text, last_end, region, b, e)) break;
    if (b == e && last_match_end && *last_match_end == e) {
      // Step one character past the empty match.
      std::size_t i = last_end;
      if (i < text.size()) { if (next_code_point(text, i) < 0) i = last_end + 1; } else { i = last_end + 1; }
      last_end = i;
      continue;
    }
    last_end = e;
    last_match_end = e;
    if (prev != b) out.push_back({prev, b, false});
    out.push_back({b, e, true});
    prev = e;
  }
  if (prev != text.size()) out.push_back({prev, text.size(), false});
}

// ---------------------------------------------------------------------------------------------------
// The merge table: (left id, right id) -> (rank, merged id), open addressing on a 64-bit key.
class pair_table {
 public:
  struct entry {
    std::int32_t rank, id;
  };
  void reserve(std::size_t n) {
    std::size_t cap = 16;
    while (cap < 2 * n + 1) cap *= 2;
    keys_.assign(cap, empty);
    values_.assign(cap, entry{0, 0});
    mask_ = cap - 1;
    size_ = 0;
  }
  // Inserts or overwrites (a later duplicate merge wins, as in HF's map).
  void set(std::int32_t a, std::int32_t b, entry v) {
    if (keys_.empty() || 2 * (size_ + 1) > keys_.size()) grow();
    const std::uint64_t k = key(a, b);
    std::size_t i = slot(k);
    while (keys_[i] != empty && keys_[i] != k) i = (i + 1) & mask_;
    if (keys_[i] == empty) ++size_;
    keys_[i] = k;
    values_[i] = v;
  }
  const entry* find(std::int32_t a, std::int32_t b) const {
    if (keys_.empty()) return nullptr;
    const std::uint64_t k = key(a, b);
    for (std::size_t i = slot(k);; i = (i + 1) & mask_) {
      if (keys_[i] == k) return &values_[i];
      if (keys_[i] == empty) return nullptr;
    }
  }

 private:
  static constexpr std::uint64_t empty = ~std::uint64_t{0};
  static std::uint64_t key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }
  std::size_t slot(std::uint64_t k) const { return static_cast<std::size_t>((k * 0x9E3779B97F4A7C15ull) >> 17) & mask_; }
  void grow() {
    std::vector<std::uint64_t> old_keys = std::move(keys_);
    std::vector<entry> old_values = std::move(values_);
    reserve(std::max<std::size_t>(16, old_keys.size()));
    for (std::size_t i = 0; i < old_keys.size(); ++i)
      if (old_keys[i] != empty) set(static_cast<std::int32_t>(old_keys[i] >> 32), static_cast<std::int32_t>(old_keys[i] & 0xFFFFFFFFu), old_values[i]);
  }
  std::vector<std::uint64_t> keys_;
  std::vector<entry> values_;
  std::size_t mask_ = 0, size_ = 0;
};

// ---------------------------------------------------------------------------------------------------
// Leftmost-longest matching of a set of strings (the added tokens).
class token_matcher {
 public:
  void add(std::string_view pattern, std::int32_t id) {
    if (pattern.empty()) return;
    if (nodes_.empty()) nodes_.emplace_back();
    std::size_t n = 0;
    for (const char c : pattern) {
      const auto b = static_cast<unsigned char>(c);
      std::int32_t child = -1;
      for (const auto& [byte, index] : nodes_[n].children)
        if (byte == b) { child = index; break; }
      if (child < 0) {
        child = static_cast<std::int32_t>(nodes_.size());
        nodes_[n].children.emplace_back(b, child);
        nodes_.emplace_back();
      }
      n = static_cast<std::size_t>(child);
    }
    if (nodes_[n].id < 0) nodes_[n].id = id;  // an earlier pattern with the same content wins
    first_[static_cast<unsigned char>(pattern[0])] = true;
  }
  bool empty() const { return nodes_.empty(); }
  // The leftmost match starting at or after `from`, the longest among those starting there.
  bool find(std::string_view s, std::size_t from, std::size_t& begin, std::size_t& end, std::int32_t& id) const {
    if (nodes_.empty()) return false;
    for (std::size_t i = from; i < s.size(); ++i) {
      if (!first_[static_cast<unsigned char>(s[i])]) continue;
      std::size_t n = 0;
      std::int32_t best = -1;
      std::size_t best_end = 0;
      for (std::size_t k = i; k < s.size(); ++k) {
        const auto b = static_cast<unsigned char>(s[k]);
        std::int32_t child = -1;
        for (const auto& [byte, index] : nodes_[n].children)
          if (byte == b) { child = index; break; }
        if (child < 0) break;
        n = static_cast<std::size_t>(child);
        if (nodes_[n].id >= 0) { best = nodes_[n].id; best_end = k + 1; }
      }
      if (best >= 0) {
        begin = i;
        end = best_end;
        id = best;
        return true;
      }
    }
    return false;
  }

 private:
  struct node {
    std::vector<std::pair<unsigned char, std::int32_t>> children;
    std::int32_t id = -1;
  };
  std::vector<node> nodes_;
  std::array<bool, 256> first_{};
};

// ---------------------------------------------------------------------------------------------------
// Unicode character classes of HF's added-token options (Rust's regex `\w` and `\s`).
inline bool is_white_space(std::int32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

inline const unicode_regex& word_char_regex() {
  static const unicode_regex re(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])", "tokenizer: word character class");
  return re;
}

inline bool ends_with_word(std::string_view s, OnigRegion* region) {
  if (s.empty()) return false;
  std::size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return word_char_regex().full_match(s.substr(start), region);
}

inline bool starts_with_word(std::string_view s, OnigRegion* region) {
  if (s.empty()) return false;
  std::size_t i = 0;
  if (next_code_point(s, i) < 0) return false;
  return word_char_regex().full_match(s.substr(0, i), region);
}

// ---------------------------------------------------------------------------------------------------
// JSON access with errors that name the file and the field.
struct json_context {
  std::string source;

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw error("tokenizer file '" + source + "': field '" + field + "': " + what);
  }
  static std::string kind(const json& j) {
    if (j.is_null()) return "null";
    if (j.is_boolean()) return "a boolean";
    if (j.is_number()) return "a number";
    if (j.is_string()) return "a string";
    if (j.is_array()) return "an array";
    return "an object";
  }
  // `field` is the path of `obj` ("" for the top level).
  static std::string join(const std::string& field, const char* key) { return field.empty() ? key : field + "." + key; }
  const json& member(const json& obj, const std::string& field, const char* key) const {
    const auto it = obj.find(key);
    if (it == obj.end()) fail(join(field, key), "missing");
    return *it;
  }
  const json& object(const json& j, const std::string& field) const {
    if (!j.is_object()) fail(field, "expected an object, found " + kind(j));
    return j;
  }
  const json& array(const json& j, const std::string& field) const {
    if (!j.is_array()) fail(field, "expected an array, found " + kind(j));
    return j;
  }
  std::string string(const json& j, const std::string& field) const {
    if (!j.is_string()) fail(field, "expected a string, found " + kind(j));
    return j.get<std::string>();
  }
  bool boolean(const json& obj, const std::string& field, const char* key, std::optional<bool> fallback) const {
    const auto it = obj.find(key);
    if (it == obj.end()) {
      if (!fallback) fail(join(field, key), "missing (expected true or false)");
      return *fallback;
    }
    if (!it->is_boolean()) fail(join(field, key), "expected true or false, found " + kind(*it));
    return it->get<bool>();
  }
  std::int32_t id(const json& j, const std::string& field) const {
    if (!j.is_number_integer() || j.get<std::int64_t>() < 0 || j.get<std::int64_t>() > std::numeric_limits<std::int32_t>::max())
      fail(field, "expected a token id (an integer in [0, 2^31)), found " + (j.is_number() ? j.dump() : kind(j)));
    return static_cast<std::int32_t>(j.get<std::int64_t>());
  }
  std::string type(const json& obj, const std::string& field) const {
    return string(member(object(obj, field), field, "type"), field + ".type");
  }
};

enum class split_behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

// One pre-tokenizer step before the final ByteLevel.
struct split_step {
  enum class kind { regex, literal, digits } what = kind::regex;
  std::shared_ptr<unicode_regex> re;
  std::string literal;
  split_behavior behavior = split_behavior::isolated;
  bool invert = false;
};

inline std::vector<span> apply_behavior(const std::vector<span>& spans, split_behavior behavior) {
  std::vector<span> out;
  out.reserve(spans.size());
  switch (behavior) {
    case split_behavior::removed:
      for (const span& s : spans)
        if (!s.match) out.push_back(s);
      break;
    case split_behavior::isolated:
      out = spans;
      break;
    case split_behavior::contiguous: {
      bool previous = false;
      for (const span& s : spans) {
        if (!out.empty() && s.match == previous) out.back().end = s.end;
        else out.push_back(s);
        previous = s.match;
      }
      break;
    }
    case split_behavior::merged_with_previous: {
      bool previous = false;
      for (const span& s : spans) {
        if (s.match && !previous && !out.empty()) out.back().end = s.end;
        else out.push_back(s);
        previous = s.match;
      }
      break;
    }
    case split_behavior::merged_with_next: {
      bool previous = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !previous && !out.empty()) out.back().begin = it->begin;
        else out.push_back(*it);
        previous = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  return out;
}

// The spans of one step over `text`, before the behaviour is applied.
inline void step_spans(const split_step& step, std::string_view text, OnigRegion* region, std::vector<span>& out) {
  out.clear();
  switch (step.what) {
    case split_step::kind::regex:
      regex_spans(*step.re, text, region, out);
      break;
    case split_step::kind::literal: {
      std::size_t prev = 0, at = 0;
      while ((at = text.find(step.literal, prev)) != std::string_view::npos) {
        if (at != prev) out.push_back({prev, at, false});
        out.push_back({at, at + step.literal.size(), true});
        prev = at + step.literal.size();
      }
      if (prev != text.size()) out.push_back({prev, text.size(), false});
      break;
    }
    case split_step::kind::digits: {
      // Every ASCII digit is its own match; the runs between digits are single non-matches.
      std::size_t last = 0;
      for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] >= '0' && text[i] <= '9') {
          if (last < i) out.push_back({last, i, false});
          out.push_back({i, i + 1, true});
          last = i + 1;
        }
      }
      if (last < text.size()) out.push_back({last, text.size(), false});
      break;
    }
  }
  if (step.invert)
    for (span& s : out) s.match = !s.match;
}

inline const char* gpt2_pattern() {
  return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
}

// The pre-tokenizer of DeepSeek-V3's tokenizer.json (the `pretokenizer::deepseek_v3` kind of train()).
inline json deepseek_v3_pre_tokenizer() {
  const auto split = [](const char* pattern) {
    return json{{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}};
  };
  return json{{"type", "Sequence"},
              {"pretokenizers",
               json::array({split(R"(\p{N}{1,3})"),
                            split("[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"),
                            split("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
                                  " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
                            json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}};
}

inline json gpt2_pre_tokenizer() {
  return json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
}

// Reads a whole file, inflating it when it starts with the gzip magic bytes.
inline std::string read_maybe_gzip(const std::filesystem::path& path) {
  const std::string where = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error("cannot open tokenizer file '" + where + "'");
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw error("cannot read tokenizer file '" + where + "'");
  if (raw.size() < 2 || static_cast<unsigned char>(raw[0]) != 0x1F || static_cast<unsigned char>(raw[1]) != 0x8B) return raw;
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) throw error("tokenizer file '" + where + "': cannot start gzip decompression");
  std::string out;
  std::array<char, 1 << 16> buffer;
  z.next_in = reinterpret_cast<Bytef*>(raw.data());
  z.avail_in = static_cast<uInt>(raw.size());
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    z.next_out = reinterpret_cast<Bytef*>(buffer.data());
    z.avail_out = static_cast<uInt>(buffer.size());
    rc = inflate(&z, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      const std::string reason = z.msg ? z.msg : (rc == Z_BUF_ERROR ? "truncated data" : "error " + std::to_string(rc));
      inflateEnd(&z);
      throw error("tokenizer file '" + where + "': corrupt gzip data (" + reason + ")");
    }
    out.append(buffer.data(), buffer.size() - z.avail_out);
    if (rc == Z_OK && z.avail_in == 0 && z.avail_out != 0) {
      inflateEnd(&z);
      throw error("tokenizer file '" + where + "': corrupt gzip data (truncated data)");
    }
  }
  inflateEnd(&z);
  return out;
}

}  // namespace tokenizer_detail

class bpe_tokenizer {
  using json = nlohmann::json;

 public:
  // Reads a tokenizer.json (plain or gzip-compressed). Errors name the file and the JSON field.
  static bpe_tokenizer load(const std::filesystem::path& path) {
    return from_json(tokenizer_detail::read_maybe_gzip(path), path.string());
  }

  // Parses tokenizer.json text; `source` names it in errors.
  static bpe_tokenizer from_json(std::string_view text, const std::string& source) {
    json root;
    try {
      root = json::parse(text);
    } catch (const json::exception& e) {
      throw error("tokenizer file '" + source + "': not valid JSON: " + e.what());
    }
    bpe_tokenizer t;
    t.build(root, tokenizer_detail::json_context{source});
    return t;
  }

  // Byte-level BPE training as HF's BpeTrainer does it with initial_alphabet = all 256 byte characters,
  // min_frequency 0 and no limit on the alphabet: special tokens take the first ids (in the given order),
  // then the 256 byte characters ordered by code point, then one token per merge; each merge takes the
  // pair with the highest count over the pre-tokenized words, ties going to the smallest (left id,
  // right id). Training stops when the vocabulary (special tokens included) reaches `vocab_size` or no
  // pair is left. Special tokens are not split out of the training texts (HF does not either); they
  // become special added tokens of the result.
  static bpe_tokenizer train(std::span<const std::string> texts, int vocab_size, std::vector<std::string> special_tokens,
                             pretokenizer kind) {
    namespace td = tokenizer_detail;
    require(vocab_size > 0, "bpe_tokenizer::train: vocab_size must be positive, found " + std::to_string(vocab_size));
    json pre = kind == pretokenizer::gpt2 ? td::gpt2_pre_tokenizer() : td::deepseek_v3_pre_tokenizer();
    bpe_tokenizer t;
    const td::json_context ctx{"<training>"};
    t.parse_pre_tokenizer(pre, ctx);
    t.pre_tokenizer_json_ = pre;

    // Word counts over the pre-tokenized texts, keyed by bytes.
    std::unordered_map<std::string, std::uint64_t> word_counts;
    {
      const td::region_ptr region = td::new_region();
      std::vector<std::string_view> pieces;
      for (std::size_t n = 0; n < texts.size(); ++n) {
        const std::string& text = texts[n];
        if (const std::size_t bad = td::invalid_utf8_at(text); bad != std::string_view::npos)
          throw error("bpe_tokenizer::train: text " + std::to_string(n) + " is not valid UTF-8 (at byte " + std::to_string(bad) + ")");
        pieces.assign(1, std::string_view(text));
        if (text.empty()) continue;
        t.pre_split(pieces, region.get());
        for (const std::string_view piece : pieces)
          t.byte_level_words(piece, region.get(), [&](std::string_view word) { ++word_counts[std::string(word)]; });
      }
    }
    const trained result = train_merges(word_counts, static_cast<std::size_t>(vocab_size), special_tokens);

    t.vocab_ = result.vocab;
    t.merge_list_ = result.merges;
    std::vector<added_token> added;
    std::unordered_set<std::string> seen;
    for (const std::string& s : special_tokens) {
      if (s.empty() || !seen.insert(s).second) continue;
      added.push_back({result.vocab.at(s), s, false, false, false, false, true});
    }
    t.decoder_json_ = json{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
    t.byte_level_decoder_ = true;
    t.post_processor_json_ = nullptr;
    t.normalizer_json_ = nullptr;
    t.set_added(added, ctx);
    t.finish(ctx);
    return t;
  }

  // Writes a tokenizer.json that HF `tokenizers` loads and that encodes as this tokenizer does.
  void save(const std::filesystem::path& path) const {
    const std::string text = to_json();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) throw error("cannot create tokenizer file '" + path.string() + "'");
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.close();
    if (!out) throw error("cannot write tokenizer file '" + path.string() + "'");
  }

  std::string to_json() const {
    const auto dump = [](const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::strict); };
    std::string s;
    s += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [";
    std::vector<added_token> sorted = added_;
    std::sort(sorted.begin(), sorted.end(), [](const added_token& a, const added_token& b) { return a.id < b.id; });
    for (std::size_t i = 0; i < sorted.size(); ++i) {
      const added_token& a = sorted[i];
      s += i ? ",\n    " : "\n    ";
      s += dump(json{{"id", a.id}, {"content", a.content}, {"single_word", a.single_word}, {"lstrip", a.lstrip},
                     {"rstrip", a.rstrip}, {"normalized", a.normalized}, {"special", a.special}});
    }
    s += sorted.empty() ? "],\n" : "\n  ],\n";
    s += "  \"normalizer\": " + dump(normalizer_json_) + ",\n";
    s += "  \"pre_tokenizer\": " + dump(pre_tokenizer_json_) + ",\n";
    s += "  \"post_processor\": " + dump(post_processor_json_) + ",\n";
    s += "  \"decoder\": " + dump(decoder_json_) + ",\n";
    s += "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": ";
    s += unk_ ? dump(json(id_token_[static_cast<std::size_t>(*unk_)])) : std::string("null");
    s += ",\n    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": ";
    s += fuse_unk_ ? "true" : "false";
    s += ",\n    \"byte_fallback\": false,\n    \"ignore_merges\": ";
    s += ignore_merges_ ? "true" : "false";
    s += ",\n    \"vocab\": {";
    std::vector<std::pair<std::int32_t, const std::string*>> by_id;
    by_id.reserve(vocab_.size());
    for (const auto& [token, id] : vocab_) by_id.emplace_back(id, &token);
    std::sort(by_id.begin(), by_id.end());
    for (std::size_t i = 0; i < by_id.size(); ++i) {
      s += i ? ",\n      " : "\n      ";
      s += dump(json(*by_id[i].second)) + ": " + std::to_string(by_id[i].first);
    }
    s += by_id.empty() ? "},\n" : "\n    },\n";
    s += "    \"merges\": [";
    const auto ranked = merges();
    for (std::size_t i = 0; i < ranked.size(); ++i) {
      s += i ? ",\n      " : "\n      ";
      s += dump(json::array({ranked[i].first, ranked[i].second}));
    }
    s += ranked.empty() ? "]\n  }\n}\n" : "\n    ]\n  }\n}\n";
    return s;
  }

  // Token ids of `text` (valid UTF-8, else a dsx::error); with add_special, the post-processor's tokens.
  std::vector<std::int32_t> encode(std::string_view text, bool add_special = false) const {
    std::vector<std::int32_t> ids;
    encode_into(text, add_special, ids);
    return ids;
  }

  // Appends the ids of `text` to `out` (encode() without the allocation).
  void encode_into(std::string_view text, bool add_special, std::vector<std::int32_t>& out) const {
    namespace td = tokenizer_detail;
    if (const std::size_t bad = td::invalid_utf8_at(text); bad != std::string_view::npos)
      throw error("bpe_tokenizer::encode: the text is not valid UTF-8 (ill-formed sequence at byte " + std::to_string(bad) + ")");
    if (add_special)
      for (const std::int32_t id : template_prefix_) out.push_back(id);
    const td::region_ptr region = td::new_region();
    // Pieces of the text in order; an added token is a piece with its id.
    struct piece {
      std::string_view text;
      std::int32_t id;  // -1: still to be tokenized
    };
    std::vector<piece> pieces{{text, -1}};
    for (const td::token_matcher* matcher : {&raw_tokens_, &normalized_tokens_}) {
      if (matcher->empty()) continue;
      std::vector<piece> next;
      for (const piece& p : pieces) {
        if (p.id >= 0) { next.push_back(p); continue; }
        split_added(p.text, *matcher, region.get(), [&](std::string_view s, std::int32_t id) { next.push_back({s, id}); });
      }
      pieces = std::move(next);
    }
    std::vector<std::string_view> words;
    for (const piece& p : pieces) {
      if (p.id >= 0) { out.push_back(p.id); continue; }
      if (p.text.empty()) continue;
      words.assign(1, p.text);
      pre_split(words, region.get());
      for (const std::string_view w : words)
        byte_level_words(w, region.get(), [&](std::string_view bytes) { bpe(bytes, out); });
    }
    if (add_special)
      for (const std::int32_t id : template_suffix_) out.push_back(id);
  }

  // The text of `ids` (HF's decode; invalid UTF-8 from partial characters becomes U+FFFD). An id outside
  // the vocabulary is a dsx::error.
  std::string decode(std::span<const std::int32_t> ids, bool skip_special = false) const {
    std::string bytes;
    bool first = true;
    for (const std::int32_t id : ids) {
      check_id(id, "bpe_tokenizer::decode");
      if (skip_special && special_[static_cast<std::size_t>(id)]) continue;
      if (byte_level_decoder_) {
        bytes += id_bytes_[static_cast<std::size_t>(id)];
      } else {
        if (!first) bytes += ' ';
        bytes += id_token_[static_cast<std::size_t>(id)];
      }
      first = false;
    }
    return byte_level_decoder_ ? tokenizer_detail::utf8_lossy(bytes) : bytes;
  }

  // The id of a token string (an added token's content, or a vocabulary entry in its byte-level form).
  std::optional<std::int32_t> token_to_id(std::string_view token) const {
    const std::string key(token);
    if (const auto it = added_ids_.find(key); it != added_ids_.end()) return it->second;
    if (const auto it = vocab_.find(key); it != vocab_.end()) return it->second;
    return std::nullopt;
  }

  const std::string& id_to_token(std::int32_t id) const {
    check_id(id, "bpe_tokenizer::id_to_token");
    return id_token_[static_cast<std::size_t>(id)];
  }

  // One more than the largest id (the size an embedding table needs).
  std::int32_t vocab_size() const { return static_cast<std::int32_t>(id_token_.size()); }

  // Special-token ids found by their conventional names (DeepSeek's, Llama-3's, GPT-2's, SentencePiece's).
  std::optional<std::int32_t> bos_id() const {
    return first_special({"<｜begin▁of▁sentence｜>", "<|begin_of_text|>", "<s>", "<bos>", "<|bos|>", "<|startoftext|>"});
  }
  std::optional<std::int32_t> eos_id() const {
    return first_special({"<｜end▁of▁sentence｜>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "<|endoftext|>"});
  }
  // The id of the special added token with this content.
  std::optional<std::int32_t> special_id(std::string_view content) const {
    const auto it = added_ids_.find(std::string(content));
    if (it == added_ids_.end() || !special_[static_cast<std::size_t>(it->second)]) return std::nullopt;
    return it->second;
  }
  bool is_special(std::int32_t id) const {
    return id >= 0 && id < vocab_size() && special_[static_cast<std::size_t>(id)];
  }
  const std::vector<added_token>& added_tokens() const { return added_; }

  // The effective merges in rank order (a pair listed twice keeps its last rank, as in HF), as token strings.
  std::vector<std::pair<std::string, std::string>> merges() const {
    std::vector<std::pair<std::string, std::string>> out;
    out.reserve(merge_list_.size());
    for (std::size_t r = 0; r < merge_list_.size(); ++r) {
      const auto [a, b] = merge_list_[r];
      const auto* e = merge_table_.find(a, b);
      if (e && e->rank == static_cast<std::int32_t>(r))
        out.emplace_back(id_token_[static_cast<std::size_t>(a)], id_token_[static_cast<std::size_t>(b)]);
    }
    return out;
  }

 private:
  bpe_tokenizer() = default;

  struct byte_level_config {
    bool add_prefix_space = false;
    bool use_regex = true;
  };

  struct cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<std::int32_t>> words;
  };
  static constexpr std::size_t cache_capacity = 1 << 17;
  static constexpr std::size_t cache_max_word = 64;

  struct trained {
    std::unordered_map<std::string, std::int32_t> vocab;
    std::vector<std::pair<std::int32_t, std::int32_t>> merges;
  };

  void check_id(std::int32_t id, const char* what) const {
    if (id < 0 || id >= vocab_size() || !present_[static_cast<std::size_t>(id)])
      throw error(std::string(what) + ": token id " + std::to_string(id) + " is not in the vocabulary (ids 0.." +
                  std::to_string(vocab_size() - 1) + ")");
  }

  std::optional<std::int32_t> first_special(std::initializer_list<std::string_view> names) const {
    for (const std::string_view n : names)
      if (const auto id = special_id(n)) return id;
    return std::nullopt;
  }

  // ---- loading

  void build(const json& root, const tokenizer_detail::json_context& ctx) {
    ctx.object(root, "(top level)");
    for (const char* key : {"truncation", "padding"}) {
      const auto it = root.find(key);
      if (it != root.end() && !it->is_null()) ctx.fail(key, "unsupported: expected null, found " + ctx.kind(*it));
    }
    const auto optional_member = [&](const char* key) -> json {
      const auto it = root.find(key);
      return it == root.end() ? json(nullptr) : *it;
    };
    normalizer_json_ = optional_member("normalizer");
    check_normalizer(normalizer_json_, "normalizer", ctx);
    pre_tokenizer_json_ = optional_member("pre_tokenizer");
    parse_pre_tokenizer(pre_tokenizer_json_, ctx);
    post_processor_json_ = optional_member("post_processor");
    decoder_json_ = optional_member("decoder");
    parse_decoder(ctx);
    parse_model(ctx.member(root, "", "model"), ctx);

    std::vector<added_token> added;
    const auto it = root.find("added_tokens");
    if (it != root.end() && !it->is_null()) {
      ctx.array(*it, "added_tokens");
      for (std::size_t i = 0; i < it->size(); ++i) {
        const std::string f = "added_tokens[" + std::to_string(i) + "]";
        const json& a = ctx.object((*it)[i], f);
        added_token t;
        t.id = ctx.id(ctx.member(a, f, "id"), f + ".id");
        t.content = ctx.string(ctx.member(a, f, "content"), f + ".content");
        t.single_word = ctx.boolean(a, f, "single_word", false);
        t.lstrip = ctx.boolean(a, f, "lstrip", false);
        t.rstrip = ctx.boolean(a, f, "rstrip", false);
        t.normalized = ctx.boolean(a, f, "normalized", true);
        t.special = ctx.boolean(a, f, "special", false);
        added.push_back(std::move(t));
      }
    }
    set_added(added, ctx);
    finish(ctx);
    parse_post_processor(ctx);
  }

  static void check_normalizer(const json& n, const std::string& field, const tokenizer_detail::json_context& ctx) {
    if (n.is_null()) return;
    const std::string type = ctx.type(n, field);
    if (type != "Sequence")
      ctx.fail(field, "unsupported normalizer '" + type + "' (supported: null or a Sequence of none)");
    const json& list = ctx.array(ctx.member(n, field, "normalizers"), field + ".normalizers");
    for (std::size_t i = 0; i < list.size(); ++i) check_normalizer(list[i], field + ".normalizers[" + std::to_string(i) + "]", ctx);
  }

  void parse_pre_tokenizer(const json& p, const tokenizer_detail::json_context& ctx) {
    namespace td = tokenizer_detail;
    std::vector<std::pair<const json*, std::string>> flat;
    if (p.is_null()) ctx.fail("pre_tokenizer", "missing: a byte-level BPE tokenizer needs a ByteLevel pre-tokenizer");
    if (ctx.type(p, "pre_tokenizer") == "Sequence") {
      const json& list = ctx.array(ctx.member(p, "pre_tokenizer", "pretokenizers"), "pre_tokenizer.pretokenizers");
      for (std::size_t i = 0; i < list.size(); ++i) flat.emplace_back(&list[i], "pre_tokenizer.pretokenizers[" + std::to_string(i) + "]");
    } else {
      flat.emplace_back(&p, "pre_tokenizer");
    }
    steps_.clear();
    bool have_byte_level = false;
    for (std::size_t i = 0; i < flat.size(); ++i) {
      const json& s = *flat[i].first;
      const std::string& f = flat[i].second;
      const std::string type = ctx.type(s, f);
      if (have_byte_level) ctx.fail(f, "unsupported: pre-tokenizer '" + type + "' after ByteLevel (ByteLevel must come last)");
      if (type == "ByteLevel") {
        byte_level_.add_prefix_space = ctx.boolean(s, f, "add_prefix_space", std::nullopt);
        byte_level_.use_regex = ctx.boolean(s, f, "use_regex", true);
        ctx.boolean(s, f, "trim_offsets", true);  // offsets only; checked for its type
        have_byte_level = true;
      } else if (type == "Split") {
        td::split_step step;
        const json& pattern = ctx.object(ctx.member(s, f, "pattern"), f + ".pattern");
        if (pattern.contains("Regex")) {
          step.what = td::split_step::kind::regex;
          step.re = std::make_shared<td::unicode_regex>(ctx.string(pattern["Regex"], f + ".pattern.Regex"),
                                                         "tokenizer file '" + ctx.source + "': field '" + f + ".pattern.Regex'");
        } else if (pattern.contains("String")) {
          step.what = td::split_step::kind::literal;
          step.literal = ctx.string(pattern["String"], f + ".pattern.String");
          if (step.literal.empty()) ctx.fail(f + ".pattern.String", "expected a non-empty string");
        } else {
          ctx.fail(f + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}, found " + pattern.dump());
        }
        const std::string behavior = ctx.string(ctx.member(s, f, "behavior"), f + ".behavior");
        if (behavior == "Removed") step.behavior = td::split_behavior::removed;
        else if (behavior == "Isolated") step.behavior = td::split_behavior::isolated;
        else if (behavior == "MergedWithPrevious") step.behavior = td::split_behavior::merged_with_previous;
        else if (behavior == "MergedWithNext") step.behavior = td::split_behavior::merged_with_next;
        else if (behavior == "Contiguous") step.behavior = td::split_behavior::contiguous;
        else ctx.fail(f + ".behavior", "expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous, found '" + behavior + "'");
        step.invert = ctx.boolean(s, f, "invert", false);
        steps_.push_back(std::move(step));
      } else if (type == "Digits") {
        td::split_step step;
        step.what = td::split_step::kind::digits;
        step.behavior = ctx.boolean(s, f, "individual_digits", false) ? td::split_behavior::isolated : td::split_behavior::contiguous;
        steps_.push_back(std::move(step));
      } else {
        ctx.fail(f, "unsupported pre-tokenizer '" + type + "' (supported: Sequence, Split, Digits, ByteLevel)");
      }
    }
    if (!have_byte_level) ctx.fail("pre_tokenizer", "a byte-level BPE tokenizer needs a ByteLevel pre-tokenizer (last in its Sequence)");
    if (byte_level_.use_regex) gpt2_regex_ = std::make_shared<td::unicode_regex>(td::gpt2_pattern(), "ByteLevel regex");
  }

  void parse_decoder(const tokenizer_detail::json_context& ctx) {
    if (decoder_json_.is_null()) { byte_level_decoder_ = false; return; }
    const std::string type = ctx.type(decoder_json_, "decoder");
    if (type != "ByteLevel") ctx.fail("decoder", "unsupported decoder '" + type + "' (supported: ByteLevel or null)");
    byte_level_decoder_ = true;
  }

  void parse_model(const json& m, const tokenizer_detail::json_context& ctx) {
    ctx.object(m, "model");
    if (const auto it = m.find("type"); it != m.end()) {
      const std::string type = ctx.string(*it, "model.type");
      if (type != "BPE") ctx.fail("model.type", "unsupported model '" + type + "' (supported: BPE)");
    }
    if (const auto it = m.find("dropout"); it != m.end() && !it->is_null() && !(it->is_number() && it->get<double>() == 0.0))
      ctx.fail("model.dropout", "unsupported: expected null (BPE dropout samples), found " + it->dump());
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (const auto it = m.find(key); it != m.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty()))
        ctx.fail(std::string("model.") + key, "unsupported in a byte-level BPE: expected null, found " + it->dump());
    if (ctx.boolean(m, "model", "byte_fallback", false)) ctx.fail("model.byte_fallback", "unsupported: expected false, found true");
    fuse_unk_ = ctx.boolean(m, "model", "fuse_unk", false);
    ignore_merges_ = ctx.boolean(m, "model", "ignore_merges", false);

    const json& vocab = ctx.object(ctx.member(m, "model", "vocab"), "model.vocab");
    vocab_.clear();
    vocab_.reserve(vocab.size());
    std::unordered_map<std::int32_t, const std::string*> owner;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const std::int32_t id = ctx.id(it.value(), "model.vocab[" + json(it.key()).dump() + "]");
      const auto [slot, fresh] = vocab_.emplace(it.key(), id);
      const auto [o, free] = owner.emplace(id, &slot->first);
      if (!free) ctx.fail("model.vocab", "tokens " + json(*o->second).dump() + " and " + json(it.key()).dump() + " share id " + std::to_string(id));
    }
    unk_.reset();
    if (const auto it = m.find("unk_token"); it != m.end() && !it->is_null()) {
      const std::string unk = ctx.string(*it, "model.unk_token");
      const auto v = vocab_.find(unk);
      if (v == vocab_.end()) ctx.fail("model.unk_token", json(unk).dump() + " is not in model.vocab");
      unk_ = v->second;
    }

    const json& merges = ctx.array(ctx.member(m, "model", "merges"), "model.merges");
    merge_list_.clear();
    merge_list_.reserve(merges.size());
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const std::string f = "model.merges[" + std::to_string(r) + "]";
      std::string a, b;
      const json& e = merges[r];
      if (e.is_string()) {
        const std::string line = e.get<std::string>();
        const std::size_t space = line.find(' ');
        if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
          ctx.fail(f, "expected \"left right\" (two tokens separated by one space), found " + e.dump());
        a = line.substr(0, space);
        b = line.substr(space + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        ctx.fail(f, "expected \"left right\" or [left, right], found " + e.dump());
      }
      const auto ia = vocab_.find(a), ib = vocab_.find(b);
      if (ia == vocab_.end()) ctx.fail(f, "token " + json(a).dump() + " is not in model.vocab");
      if (ib == vocab_.end()) ctx.fail(f, "token " + json(b).dump() + " is not in model.vocab");
      if (vocab_.find(a + b) == vocab_.end()) ctx.fail(f, "the merged token " + json(a + b).dump() + " is not in model.vocab");
      merge_list_.emplace_back(ia->second, ib->second);
    }
  }

  // Assigns ids to the added tokens as HF's AddedVocabulary does and requires them to equal the ids the
  // file states (HF only warns; a file that disagrees would be encoded with other ids than it says).
  void set_added(const std::vector<added_token>& added, const tokenizer_detail::json_context& ctx) {
    added_.clear();
    added_ids_.clear();
    const auto model_size = static_cast<std::int64_t>(vocab_.size());
    std::int64_t max_added = -1;
    for (std::size_t i = 0; i < added.size(); ++i) {
      const added_token& t = added[i];
      const std::string f = "added_tokens[" + std::to_string(i) + "]";
      if (t.content.empty()) ctx.fail(f + ".content", "expected a non-empty string");
      if (added_ids_.count(t.content)) ctx.fail(f + ".content", "the token " + json(t.content).dump() + " is listed twice");
      std::int64_t id;
      if (const auto v = vocab_.find(t.content); v != vocab_.end()) id = v->second;
      else if (max_added < 0) id = model_size;
      else id = (max_added >= model_size || model_size == 0) ? max_added + 1 : model_size;
      if (id != t.id)
        ctx.fail(f + ".id", "the token " + json(t.content).dump() + " gets id " + std::to_string(id) +
                                " (its id in model.vocab, else the next free id after the vocabulary and the earlier added tokens), but the file says " +
                                std::to_string(t.id));
      max_added = std::max(max_added, id);
      added_ids_.emplace(t.content, t.id);
      added_.push_back(t);
    }
  }

  // Builds the derived tables: id -> token, id -> bytes, byte -> id, merges, added-token matchers.
  void finish(const tokenizer_detail::json_context& ctx) {
    namespace td = tokenizer_detail;
    const td::byte_table& table = td::byte_table::get();
    std::int32_t size = 0;
    for (const auto& [token, id] : vocab_) size = std::max(size, id + 1);
    for (const added_token& a : added_) size = std::max(size, a.id + 1);
    id_token_.assign(static_cast<std::size_t>(size), std::string());
    present_.assign(static_cast<std::size_t>(size), false);
    special_.assign(static_cast<std::size_t>(size), false);
    for (const auto& [token, id] : vocab_) {
      id_token_[static_cast<std::size_t>(id)] = token;
      present_[static_cast<std::size_t>(id)] = true;
    }
    for (const added_token& a : added_) {
      id_token_[static_cast<std::size_t>(a.id)] = a.content;
      present_[static_cast<std::size_t>(a.id)] = true;
      special_[static_cast<std::size_t>(a.id)] = a.special;
    }
    id_bytes_.assign(static_cast<std::size_t>(size), std::string());
    for (std::size_t id = 0; id < id_token_.size(); ++id) {
      auto bytes = table.to_bytes(id_token_[id]);
      id_bytes_[id] = bytes ? std::move(*bytes) : id_token_[id];
    }
    byte_id_.fill(-1);
    for (int b = 0; b < 256; ++b)
      if (const auto it = vocab_.find(table.utf8[b]); it != vocab_.end()) byte_id_[b] = it->second;
    bytes_vocab_.clear();
    if (ignore_merges_)
      for (const auto& [token, id] : vocab_)
        if (auto bytes = table.to_bytes(token)) bytes_vocab_.emplace(std::move(*bytes), id);
    merge_table_.reserve(merge_list_.size());
    for (std::size_t r = 0; r < merge_list_.size(); ++r) {
      const auto [a, b] = merge_list_[r];
      const std::string merged = id_token_[static_cast<std::size_t>(a)] + id_token_[static_cast<std::size_t>(b)];
      const auto it = vocab_.find(merged);
      if (it == vocab_.end()) ctx.fail("model.merges[" + std::to_string(r) + "]", "the merged token " + json(merged).dump() + " is not in model.vocab");
      merge_table_.set(a, b, {static_cast<std::int32_t>(r), it->second});
    }
    // Match sets in HF's order: special tokens first, then the others, each in file order.
    raw_tokens_ = td::token_matcher();
    normalized_tokens_ = td::token_matcher();
    for (const bool special : {true, false})
      for (const added_token& a : added_)
        if (a.special == special) (a.normalized ? normalized_tokens_ : raw_tokens_).add(a.content, a.id);
    added_by_id_.clear();
    for (std::size_t i = 0; i < added_.size(); ++i) added_by_id_.emplace(added_[i].id, i);
    cache_ = std::make_shared<cache>();
  }

  void parse_post_processor(const tokenizer_detail::json_context& ctx) {
    template_prefix_.clear();
    template_suffix_.clear();
    const json& p = post_processor_json_;
    if (p.is_null()) return;
    std::vector<std::pair<const json*, std::string>> flat;
    if (ctx.type(p, "post_processor") == "Sequence") {
      const json& list = ctx.array(ctx.member(p, "post_processor", "processors"), "post_processor.processors");
      for (std::size_t i = 0; i < list.size(); ++i) flat.emplace_back(&list[i], "post_processor.processors[" + std::to_string(i) + "]");
    } else {
      flat.emplace_back(&p, "post_processor");
    }
    bool have_template = false;
    for (const auto& [node, f] : flat) {
      const std::string type = ctx.type(*node, f);
      if (type == "ByteLevel") continue;  // changes offsets only
      if (have_template) ctx.fail(f, "unsupported: more than one post-processor that adds tokens");
      have_template = true;
      if (type == "TemplateProcessing") {
        const json& specials = ctx.object(ctx.member(*node, f, "special_tokens"), f + ".special_tokens");
        const json& single = ctx.array(ctx.member(*node, f, "single"), f + ".single");
        bool seen_sequence = false;
        for (std::size_t i = 0; i < single.size(); ++i) {
          const std::string fi = f + ".single[" + std::to_string(i) + "]";
          const json& item = ctx.object(single[i], fi);
          if (item.contains("Sequence")) {
            const std::string which = ctx.string(ctx.member(ctx.object(item["Sequence"], fi + ".Sequence"), fi + ".Sequence", "id"), fi + ".Sequence.id");
            if (which != "A") ctx.fail(fi + ".Sequence.id", "expected \"A\" in the single-sequence template, found \"" + which + "\"");
            if (seen_sequence) ctx.fail(fi, "the single-sequence template names the sequence twice");
            seen_sequence = true;
          } else if (item.contains("SpecialToken")) {
            const std::string name = ctx.string(ctx.member(ctx.object(item["SpecialToken"], fi + ".SpecialToken"), fi + ".SpecialToken", "id"), fi + ".SpecialToken.id");
            const auto sp = specials.find(name);
            if (sp == specials.end()) ctx.fail(f + ".special_tokens", "no entry for " + json(name).dump());
            const json& ids = ctx.array(ctx.member(*sp, f + ".special_tokens." + name, "ids"), f + ".special_tokens." + name + ".ids");
            for (std::size_t k = 0; k < ids.size(); ++k) {
              const std::int32_t id = ctx.id(ids[k], f + ".special_tokens." + name + ".ids[" + std::to_string(k) + "]");
              if (id >= vocab_size() || !present_[static_cast<std::size_t>(id)])
                ctx.fail(f + ".special_tokens." + name + ".ids", "id " + std::to_string(id) + " is not in the vocabulary");
              (seen_sequence ? template_suffix_ : template_prefix_).push_back(id);
            }
          } else {
            ctx.fail(fi, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}, found " + item.dump());
          }
        }
        if (!seen_sequence) ctx.fail(f + ".single", "the template does not contain the sequence $A");
      } else if (type == "RobertaProcessing" || type == "BertProcessing") {
        for (const char* key : {"cls", "sep"}) {
          const json& e = ctx.array(ctx.member(*node, f, key), f + "." + key);
          if (e.size() != 2) ctx.fail(f + "." + key, "expected [token, id], found " + e.dump());
          const std::int32_t id = ctx.id(e[1], f + "." + key + "[1]");
          if (id >= vocab_size() || !present_[static_cast<std::size_t>(id)]) ctx.fail(f + "." + key, "id " + std::to_string(id) + " is not in the vocabulary");
          (std::string(key) == "cls" ? template_prefix_ : template_suffix_).push_back(id);
        }
      } else {
        ctx.fail(f, "unsupported post-processor '" + type + "' (supported: ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing, Sequence)");
      }
    }
  }

  // ---- encoding

  // Splits `text` around the added tokens of `matcher` (HF's find_matches); calls emit(piece, id) in
  // order, id -1 for text between tokens. Empty pieces are dropped.
  template <class Emit>
  void split_added(std::string_view text, const tokenizer_detail::token_matcher& matcher, OnigRegion* region, Emit&& emit) const {
    namespace td = tokenizer_detail;
    std::size_t start_offset = 0, from = 0;
    std::size_t b = 0, e = 0;
    std::int32_t id = -1;
    while (matcher.find(text, from, b, e, id)) {
      from = e;
      const added_token& tok = added_[added_by_id_.at(id)];
      std::size_t start = b, stop = e;
      if (tok.single_word) {
        const bool start_space = start == 0 || !td::ends_with_word(text.substr(0, start), region);
        const bool stop_space = stop == text.size() || !td::starts_with_word(text.substr(stop), region);
        if (!start_space || !stop_space) continue;
      }
      if (tok.lstrip) {
        // The start of the white space that ends text[0, start), not before the previous piece's end.
        std::size_t s = start;
        while (s > 0) {
          std::size_t c = s - 1;
          while (c > 0 && (static_cast<unsigned char>(text[c]) & 0xC0) == 0x80) --c;
          std::size_t k = c;
          if (!td::is_white_space(td::next_code_point(text, k))) break;
          s = c;
        }
        start = std::max(s, start_offset);
      }
      if (tok.rstrip) {
        std::size_t k = stop;
        while (k < text.size()) {
          std::size_t next = k;
          if (!td::is_white_space(td::next_code_point(text, next))) break;
          k = next;
        }
        stop = k;
      }
      if (start_offset < start) emit(text.substr(start_offset, start - start_offset), -1);
      emit(text.substr(start, stop - start), id);
      start_offset = stop;
    }
    if (start_offset < text.size()) emit(text.substr(start_offset), -1);
  }

  // Runs the pre-tokenizer steps before ByteLevel over `pieces` in place (empty pieces dropped).
  void pre_split(std::vector<std::string_view>& pieces, OnigRegion* region) const {
    namespace td = tokenizer_detail;
    std::vector<td::span> spans;
    for (const td::split_step& step : steps_) {
      std::vector<std::string_view> next;
      next.reserve(pieces.size() * 2);
      for (const std::string_view p : pieces) {
        td::step_spans(step, p, region, spans);
        for (const td::span& s : td::apply_behavior(spans, step.behavior))
          if (s.end > s.begin) next.push_back(p.substr(s.begin, s.end - s.begin));
      }
      pieces = std::move(next);
    }
  }

  // The ByteLevel step: optional prefix space, optional GPT-2 regex split; calls word(bytes) per word.
  template <class Word>
  void byte_level_words(std::string_view piece, OnigRegion* region, Word&& word) const {
    namespace td = tokenizer_detail;
    std::string prefixed;
    if (byte_level_.add_prefix_space && piece.front() != ' ') {
      prefixed.reserve(piece.size() + 1);
      prefixed += ' ';
      prefixed += piece;
      piece = prefixed;
    }
    if (!byte_level_.use_regex) { word(piece); return; }
    std::vector<td::span> spans;
    td::regex_spans(*gpt2_regex_, piece, region, spans);
    for (const td::span& s : spans)
      if (s.end > s.begin) word(piece.substr(s.begin, s.end - s.begin));
  }

  // BPE of one word given as bytes; appends its ids.
  void bpe(std::string_view bytes, std::vector<std::int32_t>& out) const {
    if (bytes.empty()) return;
    if (ignore_merges_) {
      if (const auto it = bytes_vocab_.find(std::string(bytes)); it != bytes_vocab_.end()) { out.push_back(it->second); return; }
    }
    const bool cacheable = bytes.size() <= cache_max_word;
    if (cacheable) {
      std::lock_guard lock(cache_->mutex);
      if (const auto it = cache_->words.find(std::string(bytes)); it != cache_->words.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const std::size_t first = out.size();
    merge_word(bytes, out);
    if (cacheable) {
      std::lock_guard lock(cache_->mutex);
      if (cache_->words.size() < cache_capacity)
        cache_->words.emplace(std::string(bytes), std::vector<std::int32_t>(out.begin() + static_cast<std::ptrdiff_t>(first), out.end()));
    }
  }

  // Merges lowest rank first, leftmost on a tie, over a linked list of symbols (HF's Word::merge_all).
  void merge_word(std::string_view bytes, std::vector<std::int32_t>& out) const {
    struct symbol {
      std::int32_t id, prev, next;
      bool alive;
    };
    struct candidate {
      std::int32_t rank, pos, id;
    };
    thread_local std::vector<symbol> symbols;
    thread_local std::vector<candidate> heap;
    symbols.clear();
    heap.clear();
    // Initial symbols, one per byte; bytes without a vocabulary entry become unk (fused if asked) or
    // are dropped, as HF does.
    bool pending_unk = false;
    const auto push_symbol = [&](std::int32_t id) {
      const auto n = static_cast<std::int32_t>(symbols.size());
      if (n > 0) symbols.back().next = n;
      symbols.push_back({id, n - 1, -1, true});
    };
    for (const char c : bytes) {
      const std::int32_t id = byte_id_[static_cast<unsigned char>(c)];
      if (id >= 0) {
        if (pending_unk) { push_symbol(*unk_); pending_unk = false; }
        push_symbol(id);
      } else if (unk_) {
        if (pending_unk && !fuse_unk_) push_symbol(*unk_);
        pending_unk = true;
      }
    }
    if (pending_unk) push_symbol(*unk_);

    const auto later = [](const candidate& a, const candidate& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
    const auto offer = [&](std::int32_t pos) {
      const std::int32_t next = symbols[static_cast<std::size_t>(pos)].next;
      if (next < 0) return;
      if (const auto* e = merge_table_.find(symbols[static_cast<std::size_t>(pos)].id, symbols[static_cast<std::size_t>(next)].id)) {
        heap.push_back({e->rank, pos, e->id});
        std::push_heap(heap.begin(), heap.end(), later);
      }
    };
    for (std::int32_t i = 0; i + 1 < static_cast<std::int32_t>(symbols.size()); ++i) offer(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), later);
      const candidate top = heap.back();
      heap.pop_back();
      symbol& left = symbols[static_cast<std::size_t>(top.pos)];
      if (!left.alive || left.next < 0) continue;
      symbol& right = symbols[static_cast<std::size_t>(left.next)];
      const auto* e = merge_table_.find(left.id, right.id);
      if (!e || e->id != top.id) continue;  // the pair changed since this entry was queued
      left.id = top.id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = top.pos;
      if (left.prev >= 0) offer(left.prev);
      offer(top.pos);
    }
    for (const symbol& s : symbols)
      if (s.alive) out.push_back(s.id);
  }

  // ---- training (HF's BpeTrainer::do_train)

  static trained train_merges(const std::unordered_map<std::string, std::uint64_t>& word_counts, std::size_t vocab_size,
                              const std::vector<std::string>& special_tokens) {
    namespace td = tokenizer_detail;
    const td::byte_table& table = td::byte_table::get();
    trained r;
    std::vector<std::string> id_to_word;
    const auto add_word = [&](const std::string& w) {
      if (r.vocab.count(w)) return;
      r.vocab.emplace(w, static_cast<std::int32_t>(id_to_word.size()));
      id_to_word.push_back(w);
    };
    for (const std::string& s : special_tokens)
      if (!s.empty()) add_word(s);
    // The alphabet: every byte character, ordered by code point.
    std::array<int, 256> by_code{};
    for (int b = 0; b < 256; ++b) by_code[b] = b;
    std::sort(by_code.begin(), by_code.end(), [&](int x, int y) { return table.code[x] < table.code[y]; });
    for (const int b : by_code) add_word(table.utf8[b]);

    // Words in a fixed order (HF iterates a hash map; the order only affects bookkeeping, not results).
    std::vector<const std::pair<const std::string, std::uint64_t>*> entries;
    entries.reserve(word_counts.size());
    for (const auto& e : word_counts) entries.push_back(&e);
    std::sort(entries.begin(), entries.end(), [](const auto* a, const auto* b) { return a->first < b->first; });
    std::vector<std::vector<std::int32_t>> words(entries.size());
    std::vector<std::int64_t> counts(entries.size());
    for (std::size_t i = 0; i < entries.size(); ++i) {
      counts[i] = static_cast<std::int64_t>(entries[i]->second);
      for (const char c : entries[i]->first) words[i].push_back(r.vocab.at(table.utf8[static_cast<unsigned char>(c)]));
    }

    using pair_key = std::uint64_t;
    const auto key = [](std::int32_t a, std::int32_t b) { return (static_cast<pair_key>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b); };
    std::unordered_map<pair_key, std::int64_t> pair_counts;
    std::unordered_map<pair_key, std::vector<std::size_t>> where;
    for (std::size_t i = 0; i < words.size(); ++i)
      for (std::size_t k = 0; k + 1 < words[i].size(); ++k) {
        const pair_key p = key(words[i][k], words[i][k + 1]);
        pair_counts[p] += counts[i];
        auto& w = where[p];
        if (w.empty() || w.back() != i) w.push_back(i);
      }
    // The queue: highest count first, then the smallest pair; entries that tie on both are taken oldest
    // first (HF leaves that order to its heap; it only arises for a pair queued twice).
    struct entry {
      std::int64_t count;
      pair_key pair;
      std::uint64_t order;
      std::vector<std::size_t> pos;
    };
    const auto before = [](const entry& a, const entry& b) {  // "a is popped after b"
      if (a.count != b.count) return a.count < b.count;
      if (a.pair != b.pair) return a.pair > b.pair;
      return a.order > b.order;
    };
    std::vector<entry> queue;
    std::uint64_t order = 0;
    const auto push = [&](entry e) {
      queue.push_back(std::move(e));
      std::push_heap(queue.begin(), queue.end(), before);
    };
    const auto drain_where = [&] {
      std::vector<std::pair<pair_key, std::vector<std::size_t>>> fresh(where.begin(), where.end());
      where.clear();
      std::sort(fresh.begin(), fresh.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      for (auto& [p, pos] : fresh) {
        const std::int64_t c = pair_counts[p];
        if (c > 0) push({c, p, order++, std::move(pos)});
      }
    };
    drain_where();

    while (r.vocab.size() < vocab_size && !queue.empty()) {
      std::pop_heap(queue.begin(), queue.end(), before);
      entry top = std::move(queue.back());
      queue.pop_back();
      const std::int64_t current = pair_counts[top.pair];
      if (top.count != current) {
        top.count = current;
        push(std::move(top));
        continue;
      }
      if (top.count < 1) break;
      const auto a = static_cast<std::int32_t>(top.pair >> 32), b = static_cast<std::int32_t>(top.pair & 0xFFFFFFFFu);
      const std::string merged = id_to_word[static_cast<std::size_t>(a)] + id_to_word[static_cast<std::size_t>(b)];
      add_word(merged);
      const std::int32_t new_id = r.vocab.at(merged);
      r.merges.emplace_back(a, b);
      std::sort(top.pos.begin(), top.pos.end());
      for (const std::size_t i : top.pos) {
        // HF's Word::merge: replace each occurrence left to right, reporting the pairs that changed.
        std::vector<std::int32_t>& w = words[i];
        const auto change = [&](std::int32_t x, std::int32_t y, int delta) {
          const pair_key p = key(x, y);
          pair_counts[p] += delta * counts[i];
          if (delta > 0) {
            auto& ws = where[p];
            if (std::find(ws.begin(), ws.end(), i) == ws.end()) ws.push_back(i);
          }
        };
        for (std::size_t k = 0; k < w.size(); ++k) {
          if (w[k] != a || k + 1 >= w.size() || w[k + 1] != b) continue;
          if (k > 0) {
            change(w[k - 1], a, -1);
            change(w[k - 1], new_id, +1);
          }
          w[k] = new_id;
          w.erase(w.begin() + static_cast<std::ptrdiff_t>(k) + 1);
          if (k + 1 < w.size()) {
            change(b, w[k + 1], -1);
            change(new_id, w[k + 1], +1);
          }
        }
      }
      drain_where();
    }
    return r;
  }

  // ---- state

  std::unordered_map<std::string, std::int32_t> vocab_;  // model vocabulary, byte-level token strings
  std::vector<std::pair<std::int32_t, std::int32_t>> merge_list_;  // in rank order, as listed
  tokenizer_detail::pair_table merge_table_;
  std::optional<std::int32_t> unk_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  std::unordered_map<std::string, std::int32_t> bytes_vocab_;  // bytes -> id (for ignore_merges)

  std::vector<added_token> added_;
  std::unordered_map<std::string, std::int32_t> added_ids_;
  std::unordered_map<std::int32_t, std::size_t> added_by_id_;
  tokenizer_detail::token_matcher raw_tokens_, normalized_tokens_;

  std::vector<std::string> id_token_;  // id -> token string (added tokens override the model's)
  std::vector<std::string> id_bytes_;  // id -> the bytes the ByteLevel decoder gives
  std::vector<bool> present_, special_;
  std::array<std::int32_t, 256> byte_id_{};

  std::vector<tokenizer_detail::split_step> steps_;
  byte_level_config byte_level_;
  std::shared_ptr<tokenizer_detail::unicode_regex> gpt2_regex_;
  bool byte_level_decoder_ = false;
  std::vector<std::int32_t> template_prefix_, template_suffix_;

  json normalizer_json_, pre_tokenizer_json_, post_processor_json_, decoder_json_;
  std::shared_ptr<cache> cache_;
};

// Reads JSON lines {"text": "..."} from `in` and writes one line {"ids": [...]} per document to `out`.
// Blank lines are skipped; any other line that is not such an object is a dsx::error naming
// `source_name`, the line number and what was expected.
inline void tokenize_jsonl(const bpe_tokenizer& tokenizer, std::istream& in, std::ostream& out, bool add_special,
                           const std::string& source_name) {
  std::string line, buffer;
  std::vector<std::int32_t> ids;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = source_name + ":" + std::to_string(number);
    nlohmann::json doc;
    try {
      doc = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw error(where + ": expected a JSON object {\"text\": ...}, found text that is not JSON (" + e.what() + ")");
    }
    if (!doc.is_object()) throw error(where + ": expected a JSON object {\"text\": ...}, found " + tokenizer_detail::json_context::kind(doc));
    const auto it = doc.find("text");
    if (it == doc.end()) throw error(where + ": expected a field \"text\", found none");
    if (!it->is_string()) throw error(where + ": expected \"text\" to be a string, found " + tokenizer_detail::json_context::kind(*it));
    ids.clear();
    try {
      tokenizer.encode_into(it->get_ref<const std::string&>(), add_special, ids);
    } catch (const error& e) {
      throw error(where + ": " + e.what());
    }
    buffer.assign("{\"ids\": [");
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (i) buffer += ", ";
      buffer += std::to_string(ids[i]);
    }
    buffer += "]}\n";
    out << buffer;
  }
  if (in.bad()) throw error(source_name + ": read error after line " + std::to_string(number));
  if (!out) throw error(source_name + ": cannot write the token ids");
}

}  // namespace dsx
