// dsx::post chat data: DeepSeek-V3's chat template with the SFT loss mask, the SFT and preference JSONL
// formats, and best-fit-decreasing packing of rendered conversations into fixed-length rows.
//
// A rendered conversation (special tokens as in special_tokens.hpp; `train` marks what SFT learns):
//
//   BOS {system} <｜User｜>{question} <｜Assistant｜>{answer}EOS <｜User｜>{question} <｜Assistant｜>{answer}EOS
//   0   0...0    0        0...0      0             1...1   1   0        0...0      0             1...1   1
//
// Role order everywhere (render, read, write): an optional first "system" message, then "user" and
// "assistant" alternating, starting with "user"; a conversation holds at least one user message.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"
#include "dsx/data/jsonl.hpp"
#include "dsx/data/tokenizer.hpp"
#include "dsx/io/safetensors.hpp"
#include "dsx/post/special_tokens.hpp"

namespace dsx::post {

struct chat_message {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
  bool operator==(const chat_message&) const = default;
};
using conversation = std::vector<chat_message>;

struct rendered_chat {
  std::vector<std::int32_t> ids;
  // Same length as ids; 1 on the tokens the SFT loss predicts: every assistant turn's content tokens and
  // the EOS that closes the turn; 0 elsewhere (BOS, system, user, the <｜User｜>/<｜Assistant｜> markers).
  std::vector<std::uint8_t> train;
};

namespace chat_detail {

using json = nlohmann::json;

inline constexpr std::string_view role_rule = "roles alternate user, assistant after an optional first system message";

inline bool known_role(std::string_view role) { return role == "system" || role == "user" || role == "assistant"; }

// The first place where a conversation breaks the role order: the message index (== size() when the
// conversation ends before its first user message) and the roles allowed there, quoted.
struct role_violation {
  std::size_t index;
  std::string_view expected;
};

inline std::optional<role_violation> find_role_violation(const conversation& c) {
  const std::size_t first = !c.empty() && c[0].role == "system" ? 1 : 0;
  const auto allowed = [&](std::size_t i) -> std::string_view {
    if (i == 0) return "\"system\" or \"user\"";
    return (i - first) % 2 == 0 ? "\"user\"" : "\"assistant\"";
  };
  for (std::size_t i = first; i < c.size(); ++i)
    if (c[i].role != ((i - first) % 2 == 0 ? "user" : "assistant")) return role_violation{i, allowed(i)};
  if (first == c.size()) return role_violation{first, allowed(first)};
  return std::nullopt;
}

inline std::string quote(std::string_view s) { return json(s).dump(-1, ' ', false, json::error_handler_t::replace); }

// "message 2 has role "user", expected "assistant" (rule)" or "no message 1, expected "user" (rule)".
inline std::string describe(const conversation& c, const role_violation& v) {
  const std::string place = v.index < c.size()
                                ? "message " + std::to_string(v.index) + " has role " + quote(c[v.index].role) + ", expected "
                                : "the conversation ends before message " + std::to_string(v.index) + ", expected ";
  return place + std::string(v.expected) + " (" + std::string(role_rule) + ")";
}

// An assistant turn's content as the template renders it when a later message follows it. As in
// DeepSeek-R1's template (which keeps content.split('</think>')[-1]), everything up to and including the
// last "</think>" is dropped, so earlier turns' reasoning never enters the context; leading white space
// of the answer goes with it.
inline std::string_view without_reasoning(std::string_view content) {
  const std::size_t close = content.rfind(think_close);
  if (close == std::string_view::npos) return content;
  content.remove_prefix(close + think_close.size());
  const std::size_t start = content.find_first_not_of(" \t\r\n");
  return start == std::string_view::npos ? std::string_view{} : content.substr(start);
}

// The id of a chat-format token. It must be an added token that strips no white space and is not limited
// to single words: then the tokenizer cuts it out of any text unchanged, which is what makes rendering
// piece by piece equal to encoding the rendered text.
inline std::int32_t marker_id(const bpe_tokenizer& tokenizer, std::string_view token) {
  for (const added_token& a : tokenizer.added_tokens())
    if (a.content == token) {
      require(!a.lstrip && !a.rstrip && !a.single_word,
              "chat_template: the tokenizer's added token " + quote(token) +
                  " has lstrip, rstrip or single_word set; DeepSeek-V3's chat format needs it matched as plain text");
      return a.id;
    }
  throw error("chat_template: the tokenizer has no added token " + quote(token) + ", which DeepSeek-V3's chat format needs");
}

// ---- JSONL

[[noreturn]] inline void field_error(const source_line& at, const std::string& field, std::string_view expected,
                                     const std::string& found) {
  throw error(at.where() + ": field '" + field + "': expected " + std::string(expected) + ", found " + found);
}

// object[key] as a string; `field` is its path in the line's object, for errors.
inline const std::string& string_field(const json& object, const char* key, const std::string& field, const source_line& at) {
  const auto it = object.find(key);
  if (it == object.end()) field_error(at, field, "a string", "none");
  if (!it->is_string()) field_error(at, field, "a string", jsonl_detail::kind(*it));
  return it->get_ref<const std::string&>();
}

// One JSON line of an output file; text that is not valid UTF-8 is a dsx::error naming `what`.
inline void append_line(std::string& out, const json& value, const std::string& what) {
  try {
    out += value.dump();
  } catch (const json::exception& e) {
    throw error(what + ": the text is not valid UTF-8 (" + e.what() + ")");
  }
  out += '\n';
}

inline void write_text_atomic(const std::filesystem::path& path, const std::string& text) {
  const std::span<const std::byte> piece = std::as_bytes(std::span(text));
  write_file_atomic(path, std::span<const std::span<const std::byte>>(&piece, 1));
}

}  // namespace chat_detail

// DeepSeek-V3's chat template over a bpe_tokenizer, which must outlive the template.
class chat_template {
 public:
  // Looks up BOS, EOS, <｜User｜> and <｜Assistant｜> among the tokenizer's added tokens; a missing one is
  // a dsx::error naming it.
  explicit chat_template(const bpe_tokenizer& tokenizer)
      : tokenizer_(&tokenizer),
        bos_(chat_detail::marker_id(tokenizer, bos_token)),
        eos_(chat_detail::marker_id(tokenizer, eos_token)),
        user_(chat_detail::marker_id(tokenizer, user_token)),
        assistant_(chat_detail::marker_id(tokenizer, assistant_token)) {}

  // DeepSeek-V3's template: BOS, then the system message's content if the first message is a system one,
  // then per message: user -> <｜User｜>content; assistant -> <｜Assistant｜>content<｜end▁of▁sentence｜>.
  // An assistant turn followed by another message loses its reasoning (see without_reasoning). Content is
  // encoded piece by piece with the markers inserted as ids; since the tokenizer splits added tokens out
  // first, that equals encoding the whole rendered text. A role-order violation or content that is not
  // valid UTF-8 is a dsx::error naming the message index.
  rendered_chat render(const conversation& messages) const {
    if (const auto v = chat_detail::find_role_violation(messages)) throw error("chat_template: " + chat_detail::describe(messages, *v));
    rendered_chat out;
    const auto add_id = [&](std::int32_t id, bool train) {
      out.ids.push_back(id);
      out.train.push_back(train);
    };
    add_id(bos_, false);
    for (std::size_t i = 0; i < messages.size(); ++i) {
      const chat_message& m = messages[i];
      const bool assistant = m.role == "assistant";
      if (m.role == "user") add_id(user_, false);
      if (assistant) add_id(assistant_, false);
      const std::string_view content = assistant && i + 1 < messages.size() ? chat_detail::without_reasoning(m.content) : m.content;
      encode_into(content, out.ids, "message " + std::to_string(i) + " (" + m.role + ")");
      out.train.resize(out.ids.size(), assistant);
      if (assistant) add_id(eos_, true);
    }
    return out;
  }

  // The generation prompt: render(messages), which must end with a user message, then <｜Assistant｜> and
  // the encoding of `prefill` (e.g. "<think>\n", which R1's template forces).
  std::vector<std::int32_t> prompt(const conversation& messages, std::string_view prefill = {}) const {
    require(!messages.empty() && messages.back().role == "user",
            "chat_template::prompt: the conversation must end with a user message, found " +
                (messages.empty() ? std::string("no message") : "role " + chat_detail::quote(messages.back().role) + " last"));
    std::vector<std::int32_t> ids = render(messages).ids;
    ids.push_back(assistant_);
    encode_into(prefill, ids, "the prefill");
    return ids;
  }

  // Single-turn data: the prompt of {user: question}, and the rendering of {user: question, assistant: response}.
  std::vector<std::int32_t> prompt(std::string_view question, std::string_view prefill = {}) const {
    return prompt(conversation{{"user", std::string(question)}}, prefill);
  }
  rendered_chat render(std::string_view question, std::string_view response) const {
    return render(conversation{{"user", std::string(question)}, {"assistant", std::string(response)}});
  }

  std::int32_t eos() const { return eos_; }
  std::int32_t bos() const { return bos_; }
  const bpe_tokenizer& tokenizer() const { return *tokenizer_; }

 private:
  void encode_into(std::string_view text, std::vector<std::int32_t>& ids, const std::string& what) const {
    try {
      tokenizer_->encode_into(text, false, ids);
    } catch (const error& e) {
      throw error("chat_template: " + what + ": " + e.what());
    }
  }

  const bpe_tokenizer* tokenizer_;
  std::int32_t bos_, eos_, user_, assistant_;
};

// SFT JSONL: each line {"messages": [{"role": ..., "content": ...}, ...]} or {"prompt": "...", "completion": "..."}
// (prompt -> user, completion -> assistant); other members are ignored. Errors name file:line and the
// field, e.g. "data.jsonl:3: field 'messages[1].role': expected "system", "user" or "assistant", found "bot"".
// A file without conversations is an error naming it.
inline std::vector<conversation> read_sft_jsonl(const std::filesystem::path& path) {
  namespace cd = chat_detail;
  std::vector<conversation> out;
  for_each_jsonl_object(path, [&](const cd::json& object, const source_line& at) {
    const auto messages = object.find("messages");
    const bool has_messages = messages != object.end(), has_prompt = object.contains("prompt");
    if (has_messages == has_prompt)
      throw error(at.where() + ": expected either a field \"messages\" or the fields \"prompt\" and \"completion\", found " +
                  (has_messages ? "both" : "neither"));
    conversation c;
    if (has_prompt) {
      c.push_back({"user", cd::string_field(object, "prompt", "prompt", at)});
      c.push_back({"assistant", cd::string_field(object, "completion", "completion", at)});
    } else {
      if (!messages->is_array()) cd::field_error(at, "messages", "an array", jsonl_detail::kind(*messages));
      for (std::size_t i = 0; i < messages->size(); ++i) {
        const cd::json& m = (*messages)[i];
        const std::string field = "messages[" + std::to_string(i) + "]";
        if (!m.is_object()) cd::field_error(at, field, "an object {\"role\": ..., \"content\": ...}", jsonl_detail::kind(m));
        const std::string& role = cd::string_field(m, "role", field + ".role", at);
        if (!cd::known_role(role)) cd::field_error(at, field + ".role", R"("system", "user" or "assistant")", cd::quote(role));
        c.push_back({role, cd::string_field(m, "content", field + ".content", at)});
      }
      if (const auto v = cd::find_role_violation(c)) throw error(at.where() + ": field 'messages': " + cd::describe(c, *v));
    }
    out.push_back(std::move(c));
  });
  require(!out.empty(), path.string() + ": no conversations (the file is empty or holds only blank lines)");
  return out;
}

// Writes `conversations` as {"messages": [...]} lines to a temporary file, flushes it to disk and renames
// it over `path`. Everything written reads back: an empty list, a role-order violation or text that is not
// valid UTF-8 is a dsx::error naming the conversation, and nothing is written.
inline void write_sft_jsonl(const std::filesystem::path& path, std::span<const conversation> conversations) {
  namespace cd = chat_detail;
  require(!conversations.empty(), "write_sft_jsonl: no conversations to write to '" + path.string() + "'");
  std::string text;
  for (std::size_t n = 0; n < conversations.size(); ++n) {
    const conversation& c = conversations[n];
    const std::string what = "write_sft_jsonl: conversation " + std::to_string(n);
    if (const auto v = cd::find_role_violation(c)) throw error(what + ": " + cd::describe(c, *v));
    cd::json messages = cd::json::array();
    for (const chat_message& m : c) messages.push_back({{"role", m.role}, {"content", m.content}});
    cd::append_line(text, {{"messages", std::move(messages)}}, what);
  }
  cd::write_text_atomic(path, text);
}

struct preference_pair {
  std::string prompt, chosen, rejected;
  bool operator==(const preference_pair&) const = default;
};

// Preference JSONL: {"prompt", "chosen", "rejected"} lines, all three non-empty strings (other members are
// ignored); errors as in read_sft_jsonl.
inline std::vector<preference_pair> read_preference_jsonl(const std::filesystem::path& path) {
  namespace cd = chat_detail;
  std::vector<preference_pair> out;
  for_each_jsonl_object(path, [&](const cd::json& object, const source_line& at) {
    const auto text = [&](const char* key) -> const std::string& {
      const std::string& s = cd::string_field(object, key, key, at);
      if (s.empty()) cd::field_error(at, key, "a non-empty string", "an empty string");
      return s;
    };
    out.push_back({text("prompt"), text("chosen"), text("rejected")});
  });
  require(!out.empty(), path.string() + ": no preference pairs (the file is empty or holds only blank lines)");
  return out;
}

// Writes `pairs` as {"prompt", "chosen", "rejected"} lines, atomically as write_sft_jsonl does; an empty
// list, an empty field or text that is not valid UTF-8 is a dsx::error naming the pair.
inline void write_preference_jsonl(const std::filesystem::path& path, std::span<const preference_pair> pairs) {
  namespace cd = chat_detail;
  require(!pairs.empty(), "write_preference_jsonl: no preference pairs to write to '" + path.string() + "'");
  std::string text;
  for (std::size_t n = 0; n < pairs.size(); ++n) {
    const preference_pair& p = pairs[n];
    const std::string what = "write_preference_jsonl: pair " + std::to_string(n);
    const std::pair<const char*, const std::string*> fields[] = {{"prompt", &p.prompt}, {"chosen", &p.chosen}, {"rejected", &p.rejected}};
    for (const auto& [key, value] : fields) require(!value->empty(), what + ": field '" + key + "' is empty");
    cd::append_line(text, {{"prompt", p.prompt}, {"chosen", p.chosen}, {"rejected", p.rejected}}, what);
  }
  cd::write_text_atomic(path, text);
}

// SFT rows: `rows` × `row_tokens` ids and train flags, row-major.
struct packed_rows {
  std::int64_t rows = 0, row_tokens = 0;
  std::vector<std::int32_t> ids;
  std::vector<std::uint8_t> train;
  std::int64_t truncated = 0;  // conversations longer than row_tokens, cut to their first row_tokens ids
};

// Packs rendered conversations into rows of `row_tokens` ids by best-fit decreasing: conversations are
// taken longest first (equal lengths in input order) and each goes whole into the row with the least room
// that still fits it (ties to the lowest row index), or into a new row; a row keeps its conversations in
// placement order and the rest of it is `pad` ids with train flag 0. A conversation longer than
// row_tokens is cut to its first row_tokens ids (losing its end) and counted in `truncated`.
// Attention in dsx is plainly causal, with no reset at conversation boundaries: a packed conversation
// attends to the ones before it in its row. Each one starts with its own BOS, and the loss only trains
// tokens marked in its own mask.
inline packed_rows pack_conversations(std::span<const rendered_chat> chats, std::int64_t row_tokens, std::int32_t pad) {
  require(row_tokens > 0, "pack_conversations: row_tokens must be positive, found " + std::to_string(row_tokens));
  for (std::size_t i = 0; i < chats.size(); ++i) {
    const std::string what = "pack_conversations: conversation " + std::to_string(i);
    require(!chats[i].ids.empty(), what + " has no tokens");
    require(chats[i].ids.size() == chats[i].train.size(), what + " has " + std::to_string(chats[i].ids.size()) + " ids but " +
                                                               std::to_string(chats[i].train.size()) + " train flags");
  }
  std::vector<std::size_t> order(chats.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return chats[a].ids.size() > chats[b].ids.size(); });

  packed_rows out;
  out.row_tokens = row_tokens;
  std::set<std::pair<std::int64_t, std::int64_t>> open;  // (free tokens, row) of the rows with room left
  for (const std::size_t k : order) {
    const rendered_chat& c = chats[k];
    const auto size = static_cast<std::int64_t>(c.ids.size());
    const std::int64_t length = std::min(size, row_tokens);
    out.truncated += size > row_tokens;
    std::int64_t row = out.rows, free = row_tokens;
    if (const auto it = open.lower_bound({length, 0}); it != open.end()) {
      std::tie(free, row) = *it;
      open.erase(it);
    } else {
      ++out.rows;
      out.ids.resize(static_cast<std::size_t>(out.rows * row_tokens), pad);
      out.train.resize(out.ids.size(), 0);
    }
    const auto at = static_cast<std::ptrdiff_t>(row * row_tokens + (row_tokens - free));
    std::copy_n(c.ids.begin(), length, out.ids.begin() + at);
    std::copy_n(c.train.begin(), length, out.train.begin() + at);
    if (free > length) open.insert({free - length, row});
  }
  return out;
}

}  // namespace dsx::post
