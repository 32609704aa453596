// dsx JSONL reading: one JSON value per line, errors that name the file and the line.
//
// Every data set dsx reads line by line (pre-training documents {"text": ...}, SFT conversations,
// preference pairs) goes through for_each_jsonl_object, so all of them share one set of rules:
//   - lines are numbered from 1; a line holding only spaces, tabs or a carriage return is skipped;
//   - every other line must be one JSON object (a trailing '\r' of CRLF files is JSON white space);
//   - a line that is not JSON, or is JSON but not an object, is a dsx::error
//     "<file>:<line>: expected a JSON object, found ..." before the callback sees anything of it;
//   - the callback receives the parsed object and its source_line, whose where() is "<file>:<line>",
//     for the callback's own errors (the field helpers below use it).
// Strings are validated as UTF-8 by the JSON parser, so text taken from a JSONL file is valid UTF-8.
#pragma once

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <istream>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"

namespace dsx {

// Where a JSONL value (or a line of a text file) came from.
struct source_line {
  const std::string& file;
  std::size_t line;  // 1-based
  std::string where() const { return file + ":" + std::to_string(line); }
};

namespace jsonl_detail {

// "an array", "a number", ... for error messages.
inline std::string kind(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::object: return "an object";
    case nlohmann::json::value_t::array: return "an array";
    case nlohmann::json::value_t::string: return "a string";
    case nlohmann::json::value_t::boolean: return "a boolean";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
    case nlohmann::json::value_t::number_float: return "a number";
    default: return "a value of another kind";
  }
}

}  // namespace jsonl_detail

// Calls fn(const nlohmann::json& object, const source_line& at) for every non-blank line of `in`, in
// order; `file` names the source in errors. See the rules at the top of this file.
template <class F>
void for_each_jsonl_object(std::istream& in, const std::string& file, F&& fn) {
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const source_line at{file, number};
    nlohmann::json value;
    try {
      value = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw error(at.where() + ": expected a JSON object, found text that is not JSON (" + e.what() + ")");
    }
    if (!value.is_object()) throw error(at.where() + ": expected a JSON object, found " + jsonl_detail::kind(value));
    fn(std::as_const(value), at);
  }
  if (in.bad()) throw error(file + ": read error after line " + std::to_string(number));
}

// The same over a file; a file that cannot be opened is a dsx::error naming it.
template <class F>
void for_each_jsonl_object(const std::filesystem::path& path, F&& fn) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error("cannot open JSONL file '" + path.string() + "'");
  for_each_jsonl_object(in, path.string(), std::forward<F>(fn));
}

// The member `key` of a JSONL object, or a dsx::error
// "<file>:<line>: expected a JSON object with a field "key", found none".
inline const nlohmann::json& jsonl_field(const nlohmann::json& object, std::string_view key, const source_line& at) {
  const auto it = object.find(key);
  if (it == object.end())
    throw error(at.where() + ": expected a JSON object with a field \"" + std::string(key) + "\", found none");
  return *it;
}

// The string member `key`, or a dsx::error
// "<file>:<line>: expected a JSON object with a string field "key", found <none | a number | ...>".
inline const std::string& jsonl_string_field(const nlohmann::json& object, std::string_view key, const source_line& at) {
  const auto it = object.find(key);
  const std::string expected = at.where() + ": expected a JSON object with a string field \"" + std::string(key) + "\", found ";
  if (it == object.end()) throw error(expected + "none");
  if (!it->is_string()) throw error(expected + jsonl_detail::kind(*it));
  return it->get_ref<const std::string&>();
}

// Pre-training documents: calls fn(const std::string& text, const source_line& at) for the "text" of
// every object of a JSONL stream (other members are ignored). Empty texts are passed on as they are.
template <class F>
void for_each_jsonl_text(std::istream& in, const std::string& file, F&& fn) {
  for_each_jsonl_object(in, file, [&](const nlohmann::json& object, const source_line& at) {
    fn(jsonl_string_field(object, "text", at), at);
  });
}

template <class F>
void for_each_jsonl_text(const std::filesystem::path& path, F&& fn) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error("cannot open JSONL file '" + path.string() + "'");
  for_each_jsonl_text(in, path.string(), std::forward<F>(fn));
}

}  // namespace dsx
