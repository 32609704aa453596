// JSONL reading (data/jsonl.hpp): objects with their line numbers, blank lines skipped, and errors that
// name the file and the line of bad input.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "dsx/data/jsonl.hpp"
#include "support/files.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
using dsx::test::error_of;
using dsx::test::temp_dir;

namespace {

std::vector<std::pair<std::string, std::size_t>> texts_of(const std::string& content) {
  std::istringstream in(content);
  std::vector<std::pair<std::string, std::size_t>> out;
  dsx::for_each_jsonl_text(in, "docs.jsonl", [&](const std::string& text, const dsx::source_line& at) {
    CHECK(at.file == "docs.jsonl");
    out.emplace_back(text, at.line);
  });
  return out;
}

std::string text_error(const std::string& content) {
  return error_of([&] { texts_of(content); });
}

}  // namespace

TEST_CASE("JSONL texts come with their line numbers; blank lines and CRLF are accepted", "[unit]") {
  const auto docs = texts_of("{\"text\": \"first\", \"id\": 7}\n\n   \n{\"text\": \"two\\nlines\"}\r\n\t\r\n{\"text\": \"\"}\n");
  REQUIRE(docs.size() == 3);
  CHECK(docs[0] == std::pair<std::string, std::size_t>{"first", 1});
  CHECK(docs[1] == std::pair<std::string, std::size_t>{"two\nlines", 4});
  CHECK(docs[2] == std::pair<std::string, std::size_t>{"", 6});  // empty texts are passed on
  CHECK(texts_of("").empty());
}

TEST_CASE("JSONL errors name the file, the line, what was expected and what was found", "[unit]") {
  CHECK_THAT(text_error("{\"text\": \"ok\"}\n{\"body\": \"x\"}\n"),
             Equals("docs.jsonl:2: expected a JSON object with a string field \"text\", found none"));
  CHECK_THAT(text_error("{\"text\": 5}\n"), Equals("docs.jsonl:1: expected a JSON object with a string field \"text\", found a number"));
  CHECK_THAT(text_error("{\"text\": null}\n"), Equals("docs.jsonl:1: expected a JSON object with a string field \"text\", found null"));
  CHECK_THAT(text_error("\n\n[1, 2]\n"), Equals("docs.jsonl:3: expected a JSON object, found an array"));
  CHECK_THAT(text_error("\"just a string\"\n"), Equals("docs.jsonl:1: expected a JSON object, found a string"));
  CHECK_THAT(text_error("{\"text\": \"ok\"}\n{\"text\": \"unterminated\n"),
             Contains("docs.jsonl:2: expected a JSON object, found text that is not JSON"));
  CHECK_THAT(text_error("{\"text\": \"a\"} {\"text\": \"b\"}\n"), Contains("docs.jsonl:1:") && Contains("not JSON"));
  // Ill-formed UTF-8 inside a string is refused by the parser, with the line.
  CHECK_THAT(text_error("{\"text\": \"ok\"}\n{\"text\": \"bad \xC3\x28 byte\"}\n"), Contains("docs.jsonl:2:") && Contains("not JSON"));
}

TEST_CASE("for_each_jsonl_object hands every object to the caller, whose own errors can name the line", "[unit]") {
  std::istringstream in("{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n\n{\"prompt\": \"q\", \"chosen\": 3}\n");
  std::vector<std::string> prompts;
  const std::string message = error_of([&] {
    dsx::for_each_jsonl_object(in, "pairs.jsonl", [&](const nlohmann::json& object, const dsx::source_line& at) {
      prompts.push_back(dsx::jsonl_string_field(object, "prompt", at));
      dsx::jsonl_string_field(object, "chosen", at);
      dsx::jsonl_field(object, "rejected", at);
    });
  });
  CHECK(prompts == std::vector<std::string>{"p", "q"});
  CHECK_THAT(message, Equals("pairs.jsonl:3: expected a JSON object with a string field \"chosen\", found a number"));

  const nlohmann::json object = {{"a", 1}};
  const std::string file = "x.jsonl";
  CHECK_THAT(error_of([&] { dsx::jsonl_field(object, "b", dsx::source_line{file, 9}); }),
             Equals("x.jsonl:9: expected a JSON object with a field \"b\", found none"));
  CHECK(dsx::jsonl_field(object, "a", dsx::source_line{file, 9}) == 1);
}

TEST_CASE("JSONL files: read by path, a missing file is named", "[unit]") {
  const temp_dir tmp;
  const fs::path& dir = tmp.path;
  const fs::path file = dir / "docs.jsonl";
  std::ofstream(file) << "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": 1}\n";
  std::vector<std::string> seen;
  const std::string message = error_of([&] {
    dsx::for_each_jsonl_text(file, [&](const std::string& text, const dsx::source_line&) { seen.push_back(text); });
  });
  CHECK(seen == std::vector<std::string>{"a", "b"});
  CHECK_THAT(message, Equals(file.string() + ":3: expected a JSON object with a string field \"text\", found a number"));
  CHECK_THAT(error_of([&] { dsx::for_each_jsonl_text(dir / "missing.jsonl", [](const std::string&, const dsx::source_line&) {}); }),
             Contains("missing.jsonl"));
}
