// DeepSeek-V3's chat template (post/chat.hpp): exact ids and train masks of rendered conversations,
// reasoning dropped from earlier turns, generation prompts, role-order errors; the SFT and preference
// JSONL readers (every error names file, line and field) and writers; best-fit-decreasing SFT packing.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "dsx/post/chat.hpp"
#include "support/files.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
using dsx::test::error_of;
using dsx::test::temp_dir;
using dsx::post::conversation;
using ids_t = std::vector<std::int32_t>;

namespace {

namespace post = dsx::post;

const std::vector<std::string> chat_specials{std::string(post::bos_token),      std::string(post::eos_token),
                                             std::string(post::user_token),     std::string(post::assistant_token),
                                             std::string(post::think_open),     std::string(post::think_close)};

const std::vector<std::string> training_texts{
    "You are a careful assistant. What is 2+3? The answer is 5.",
    "Think about the question, then answer it. And 2+4? It is 6.",
    "the theory of their thoughts: there, then, the answer is the answer",
    "héllo wörld, 世界 and numbers 1234 5678",
};

// A tokenizer with merges (so that pieces encode to multi-byte tokens) and the chat special tokens.
const dsx::bpe_tokenizer& merged_tokenizer() {
  static const dsx::bpe_tokenizer t = dsx::bpe_tokenizer::train(training_texts, 330, chat_specials, dsx::pretokenizer::deepseek_v3);
  return t;
}

// No merges: every byte of text is one token, so masks can be counted by hand.
const dsx::bpe_tokenizer& byte_tokenizer() {
  static const dsx::bpe_tokenizer t =
      dsx::bpe_tokenizer::train(training_texts, static_cast<int>(chat_specials.size()) + 256, chat_specials, dsx::pretokenizer::deepseek_v3);
  return t;
}

std::int32_t id_of(const dsx::bpe_tokenizer& t, std::string_view token) {
  const auto id = t.token_to_id(token);
  REQUIRE(id.has_value());
  return *id;
}

void append(ids_t& out, const ids_t& more) { out.insert(out.end(), more.begin(), more.end()); }

// "0 01 1" -> {0, 0, 1, 1}: masks written with spaces between the pieces for reading.
std::vector<std::uint8_t> mask(std::string_view pattern) {
  std::vector<std::uint8_t> out;
  for (const char c : pattern)
    if (c != ' ') out.push_back(c == '1');
  return out;
}

const std::string role_rule = " (roles alternate user, assistant after an optional first system message)";

}  // namespace

TEST_CASE("chat template: exact ids of a two-turn conversation with a system message", "[unit]") {
  const auto& t = merged_tokenizer();
  const post::chat_template chat(t);
  const std::int32_t bos = id_of(t, post::bos_token), eos = id_of(t, post::eos_token);
  const std::int32_t user = id_of(t, post::user_token), assistant = id_of(t, post::assistant_token);
  CHECK(chat.bos() == bos);
  CHECK(chat.eos() == eos);
  CHECK(&chat.tokenizer() == &t);
  CHECK(bos == 0);  // special tokens take the first ids, in the order given to train()
  CHECK(assistant == 3);

  const conversation c{{"system", "You are a careful assistant."},
                       {"user", "What is 2+3?"},
                       {"assistant", "The answer is 5."},
                       {"user", "And 2+4?"},
                       {"assistant", "It is 6."}};
  ids_t expected{bos};
  append(expected, t.encode("You are a careful assistant."));
  expected.push_back(user);
  append(expected, t.encode("What is 2+3?"));
  expected.push_back(assistant);
  append(expected, t.encode("The answer is 5."));
  expected.push_back(eos);
  expected.push_back(user);
  append(expected, t.encode("And 2+4?"));
  expected.push_back(assistant);
  append(expected, t.encode("It is 6."));
  expected.push_back(eos);
  const post::rendered_chat r = chat.render(c);
  CHECK(r.ids == expected);
  REQUIRE(r.train.size() == r.ids.size());
  CHECK(t.decode(r.ids) ==
        "<｜begin▁of▁sentence｜>You are a careful assistant.<｜User｜>What is 2+3?<｜Assistant｜>The answer is 5."
        "<｜end▁of▁sentence｜><｜User｜>And 2+4?<｜Assistant｜>It is 6.<｜end▁of▁sentence｜>");
  // The merges make pieces shorter than their bytes, so the test above is not the byte-per-token one below.
  CHECK(t.encode("The answer is 5.").size() < std::string_view("The answer is 5.").size());
}

TEST_CASE("chat template: the train mask covers assistant content and its EOS only", "[unit]") {
  const auto& t = byte_tokenizer();
  const post::chat_template chat(t);
  const conversation c{
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Yo!"}, {"user", "2+2?"}, {"assistant", "4"}};
  const post::rendered_chat r = chat.render(c);
  //                   BOS system    User Hi Asst Yo! EOS User 2+2? Asst 4 EOS
  const auto expected = mask("0   000000000 0    00 0    111 1   0    0000 0    1 1");
  CHECK(r.train == expected);
  CHECK(r.ids.size() == 26);
  CHECK(r.ids.front() == chat.bos());
  CHECK(r.ids[13] == id_of(t, post::assistant_token));
  CHECK(r.ids[17] == chat.eos());
  CHECK(r.ids.back() == chat.eos());

  // Single-turn convenience: the same as the two-message conversation; the question is not trained.
  const post::rendered_chat single = chat.render("Hi", "Yo!");
  CHECK(single.ids == chat.render(conversation{{"user", "Hi"}, {"assistant", "Yo!"}}).ids);
  CHECK(single.train == mask("0 0 00 0 111 1"));
  // A conversation ending with a user message trains nothing.
  CHECK(chat.render(conversation{{"user", "Hi"}}).train == mask("0 0 00"));
}

TEST_CASE("chat template: reasoning is dropped from earlier assistant turns and kept in the last", "[unit]") {
  const auto& t = merged_tokenizer();
  const post::chat_template chat(t);
  const conversation c{{"user", "What is 2+3?"},
                       {"assistant", "<think>\nthe answer is 5\n</think>\n\n The answer is 5."},
                       {"user", "And 2+4?"},
                       {"assistant", "<think>\nthen 6\n</think>\nIt is 6."}};
  const std::string rendered_text =
      "<｜begin▁of▁sentence｜><｜User｜>What is 2+3?<｜Assistant｜>The answer is 5.<｜end▁of▁sentence｜>"
      "<｜User｜>And 2+4?<｜Assistant｜><think>\nthen 6\n</think>\nIt is 6.<｜end▁of▁sentence｜>";
  const post::rendered_chat r = chat.render(c);
  CHECK(r.ids == t.encode(rendered_text));
  CHECK(t.decode(r.ids) == rendered_text);
  // The kept reasoning is trained: <think> is the first trained token of the last turn.
  const auto think = std::find(r.ids.begin(), r.ids.end(), id_of(t, post::think_open));
  REQUIRE(think != r.ids.end());
  CHECK(r.train[static_cast<std::size_t>(think - r.ids.begin())] == 1);
  CHECK(r.train[static_cast<std::size_t>(think - r.ids.begin()) - 1] == 0);  // <｜Assistant｜>

  // Only the text after the last "</think>" survives; a turn without one is kept; nothing left is empty.
  CHECK(post::chat_detail::without_reasoning("a</think>b</think>\t\n c ") == "c ");
  CHECK(post::chat_detail::without_reasoning("<think> unfinished") == "<think> unfinished");
  CHECK(post::chat_detail::without_reasoning("<think>x</think>\n") == "");
  const conversation empty_answer{{"user", "Hi"}, {"assistant", "<think>x</think>"}, {"user", "And?"}};
  ids_t expected = chat.render(conversation{{"user", "Hi"}}).ids;
  expected.push_back(id_of(t, post::assistant_token));
  expected.push_back(chat.eos());
  expected.push_back(id_of(t, post::user_token));
  append(expected, t.encode("And?"));
  CHECK(chat.render(empty_answer).ids == expected);
}

TEST_CASE("chat template: generation prompts, with and without a prefill", "[unit]") {
  const auto& t = merged_tokenizer();
  const post::chat_template chat(t);
  const std::int32_t assistant = id_of(t, post::assistant_token);
  const conversation c{{"system", "Think about the question, then answer it."},
                       {"user", "What is 2+3?"},
                       {"assistant", "<think>\nadd\n</think>\nThe answer is 5."},
                       {"user", "And 2+4?"}};
  ids_t expected = chat.render(c).ids;
  expected.push_back(assistant);
  CHECK(chat.prompt(c) == expected);
  // The history's reasoning is dropped (every assistant turn is followed by a message).
  CHECK(t.decode(chat.prompt(c)) ==
        "<｜begin▁of▁sentence｜>Think about the question, then answer it.<｜User｜>What is 2+3?<｜Assistant｜>The answer is 5."
        "<｜end▁of▁sentence｜><｜User｜>And 2+4?<｜Assistant｜>");

  ids_t with_prefill = expected;
  with_prefill.push_back(id_of(t, post::think_open));
  append(with_prefill, t.encode("\n"));
  CHECK(chat.prompt(c, "<think>\n") == with_prefill);

  ids_t single{chat.bos(), id_of(t, post::user_token)};
  append(single, t.encode("What is 2+3?"));
  single.push_back(assistant);
  CHECK(chat.prompt("What is 2+3?") == single);
  CHECK(chat.prompt(conversation{{"user", "What is 2+3?"}}) == single);
  single.push_back(id_of(t, post::think_open));
  append(single, t.encode("\n"));
  CHECK(chat.prompt("What is 2+3?", "<think>\n") == single);

  CHECK_THAT(error_of([&] { chat.prompt(conversation{{"user", "Hi"}, {"assistant", "Yo"}}); }),
             Equals("chat_template::prompt: the conversation must end with a user message, found role \"assistant\" last"));
  CHECK_THAT(error_of([&] { chat.prompt(conversation{}); }),
             Equals("chat_template::prompt: the conversation must end with a user message, found no message"));
  CHECK_THAT(error_of([&] { chat.prompt("Hi", "bad \xC3\x28"); }), Contains("chat_template: the prefill:") && Contains("UTF-8"));
}

TEST_CASE("chat template: rendering piece by piece equals encoding the rendered text", "[unit]") {
  const auto& t = merged_tokenizer();
  const post::chat_template chat(t);
  // Content that touches the markers with spaces and newlines, names special tokens inside the text,
  // and holds multi-byte characters.
  const conversation c{{"system", "  the theory \n"},
                       {"user", " héllo wörld, what does <think> mean?\n"},
                       {"assistant", "<think>\n thoughts \n</think>\n\nthere, 世界 "},
                       {"user", "1234 5678 "},
                       {"assistant", "\n<think>then</think> the answer<｜User｜>x"}};
  const std::string text = std::string(post::bos_token) + "  the theory \n" + std::string(post::user_token) +
                           " héllo wörld, what does <think> mean?\n" + std::string(post::assistant_token) + "there, 世界 " +
                           std::string(post::eos_token) + std::string(post::user_token) + "1234 5678 " +
                           std::string(post::assistant_token) + "\n<think>then</think> the answer<｜User｜>x" +
                           std::string(post::eos_token);
  const post::rendered_chat r = chat.render(c);
  CHECK(r.ids == t.encode(text));
  CHECK(t.decode(r.ids) == text);
  // Special tokens written in the content are trained like the rest of it.
  const std::int32_t user = id_of(t, post::user_token);
  CHECK(std::count(r.ids.begin(), r.ids.end(), user) == 3);
  CHECK(r.train[static_cast<std::size_t>(std::find(r.ids.rbegin(), r.ids.rend(), user).base() - r.ids.begin()) - 1] == 1);
}

TEST_CASE("chat template: role-order violations and missing tokens are errors naming the message", "[unit]") {
  const post::chat_template chat(merged_tokenizer());
  const auto render_error = [&](const conversation& c) { return error_of([&] { chat.render(c); }); };
  CHECK_THAT(render_error({}), Equals("chat_template: the conversation ends before message 0, expected \"system\" or \"user\"" + role_rule));
  CHECK_THAT(render_error({{"system", "s"}}), Equals("chat_template: the conversation ends before message 1, expected \"user\"" + role_rule));
  CHECK_THAT(render_error({{"assistant", "a"}}), Equals("chat_template: message 0 has role \"assistant\", expected \"system\" or \"user\"" + role_rule));
  CHECK_THAT(render_error({{"user", "u"}, {"user", "u"}}), Equals("chat_template: message 1 has role \"user\", expected \"assistant\"" + role_rule));
  CHECK_THAT(render_error({{"system", "s"}, {"system", "s"}}), Equals("chat_template: message 1 has role \"system\", expected \"user\"" + role_rule));
  CHECK_THAT(render_error({{"system", "s"}, {"assistant", "a"}}), Equals("chat_template: message 1 has role \"assistant\", expected \"user\"" + role_rule));
  CHECK_THAT(render_error({{"user", "u"}, {"assistant", "a"}, {"system", "s"}}),
             Equals("chat_template: message 2 has role \"system\", expected \"user\"" + role_rule));
  CHECK_THAT(render_error({{"user", "u"}, {"bot", "b"}}), Equals("chat_template: message 1 has role \"bot\", expected \"assistant\"" + role_rule));
  CHECK_THAT(render_error({{"user", "u"}, {"assistant", "bad \xC3\x28 byte"}}),
             Contains("chat_template: message 1 (assistant): bpe_tokenizer::encode: the text is not valid UTF-8"));

  const std::vector<std::string> no_user{std::string(post::bos_token), std::string(post::eos_token), std::string(post::assistant_token)};
  const auto without = dsx::bpe_tokenizer::train(training_texts, 262, no_user, dsx::pretokenizer::gpt2);
  CHECK_THAT(error_of([&] { post::chat_template{without}; }),
             Equals("chat_template: the tokenizer has no added token \"<｜User｜>\", which DeepSeek-V3's chat format needs"));
}

TEST_CASE("chat template over DeepSeek-V3's own tokenizer.json", "[unit]") {
  const auto t = dsx::bpe_tokenizer::load(dsx::test::data_dir() / "tokenizer" / "deepseek_v3.tokenizer.json.gz");
  const post::chat_template chat(t);  // <｜User｜> and <｜Assistant｜> are added tokens that are not special there
  CHECK(chat.bos() == 0);
  CHECK(chat.eos() == 1);
  const post::rendered_chat r = chat.render("What is 2+3?", "<think>\nadd\n</think>\n5");
  CHECK(r.ids.front() == 0);
  CHECK(std::find(r.ids.begin(), r.ids.end(), 128803) == r.ids.begin() + 1);
  CHECK(r.ids.back() == 1);
  CHECK(r.ids == t.encode("<｜begin▁of▁sentence｜><｜User｜>What is 2+3?<｜Assistant｜><think>\nadd\n</think>\n5<｜end▁of▁sentence｜>"));
}

// ---- JSONL

namespace {

// The error of reading `content` as SFT (or preference) JSONL from the file data.jsonl, and that file's name
// as errors spell it.
struct jsonl_case {
  temp_dir dir;
  std::string file = (dir / "data.jsonl").string();
  std::string sft_error(const std::string& content) {
    dir.write("data.jsonl", content);
    return error_of([&] { post::read_sft_jsonl(dir / "data.jsonl"); });
  }
  std::string preference_error(const std::string& content) {
    dir.write("data.jsonl", content);
    return error_of([&] { post::read_preference_jsonl(dir / "data.jsonl"); });
  }
};

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("SFT JSONL: both line forms, blank lines and extra members", "[unit]") {
  temp_dir dir;
  const fs::path p = dir.write("sft.jsonl",
                               "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"q\"}, "
                               "{\"role\": \"assistant\", \"content\": \"a\", \"weight\": 1}], \"id\": 7}\n"
                               "\n"
                               "{\"prompt\": \"2+3?\", \"completion\": \"5\"}\r\n"
                               "{\"messages\": [{\"role\": \"user\", \"content\": \"only a question\"}]}\n");
  const auto conversations = post::read_sft_jsonl(p);
  REQUIRE(conversations.size() == 3);
  CHECK(conversations[0] == conversation{{"system", "s"}, {"user", "q"}, {"assistant", "a"}});
  CHECK(conversations[1] == conversation{{"user", "2+3?"}, {"assistant", "5"}});
  CHECK(conversations[2] == conversation{{"user", "only a question"}});
}

TEST_CASE("SFT JSONL errors name the file, the line and the field", "[unit]") {
  jsonl_case j;
  const std::string ok = "{\"prompt\": \"p\", \"completion\": \"c\"}\n";
  CHECK_THAT(j.sft_error(ok + "{\"messages\": [\n"), Contains(j.file + ":2: expected a JSON object, found text that is not JSON"));
  CHECK_THAT(j.sft_error("[1, 2]\n"), Equals(j.file + ":1: expected a JSON object, found an array"));
  CHECK_THAT(j.sft_error(ok + ok + "{\"text\": \"x\"}\n"),
             Equals(j.file + ":3: expected either a field \"messages\" or the fields \"prompt\" and \"completion\", found neither"));
  CHECK_THAT(j.sft_error("{\"messages\": [], \"prompt\": \"p\", \"completion\": \"c\"}\n"),
             Equals(j.file + ":1: expected either a field \"messages\" or the fields \"prompt\" and \"completion\", found both"));
  CHECK_THAT(j.sft_error("{\"messages\": {\"role\": \"user\"}}\n"), Equals(j.file + ":1: field 'messages': expected an array, found an object"));
  CHECK_THAT(j.sft_error("{\"messages\": [\"hi\"]}\n"),
             Equals(j.file + ":1: field 'messages[0]': expected an object {\"role\": ..., \"content\": ...}, found a string"));
  CHECK_THAT(j.sft_error(ok + "\n{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"bot\", \"content\": \"a\"}]}\n"),
             Equals(j.file + ":3: field 'messages[1].role': expected \"system\", \"user\" or \"assistant\", found \"bot\""));
  CHECK_THAT(j.sft_error("{\"messages\": [{\"content\": \"q\"}]}\n"), Equals(j.file + ":1: field 'messages[0].role': expected a string, found none"));
  CHECK_THAT(j.sft_error("{\"messages\": [{\"role\": 1, \"content\": \"q\"}]}\n"),
             Equals(j.file + ":1: field 'messages[0].role': expected a string, found a number"));
  CHECK_THAT(j.sft_error("{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": null}]}\n"),
             Equals(j.file + ":1: field 'messages[1].content': expected a string, found null"));
  CHECK_THAT(j.sft_error("{\"messages\": [{\"role\": \"user\", \"content\": [\"q\"]}]}\n"),
             Equals(j.file + ":1: field 'messages[0].content': expected a string, found an array"));
  CHECK_THAT(j.sft_error("{\"messages\": [{\"role\": \"user\"}]}\n"), Equals(j.file + ":1: field 'messages[0].content': expected a string, found none"));
  CHECK_THAT(j.sft_error("{\"messages\": [{\"role\": \"assistant\", \"content\": \"a\"}]}\n"),
             Equals(j.file + ":1: field 'messages': message 0 has role \"assistant\", expected \"system\" or \"user\"" + role_rule));
  CHECK_THAT(j.sft_error("{\"messages\": []}\n"),
             Equals(j.file + ":1: field 'messages': the conversation ends before message 0, expected \"system\" or \"user\"" + role_rule));
  CHECK_THAT(j.sft_error(ok + "{\"prompt\": \"p\"}\n"), Equals(j.file + ":2: field 'completion': expected a string, found none"));
  CHECK_THAT(j.sft_error("{\"prompt\": 3, \"completion\": \"c\"}\n"), Equals(j.file + ":1: field 'prompt': expected a string, found a number"));
  CHECK_THAT(j.sft_error(""), Equals(j.file + ": no conversations (the file is empty or holds only blank lines)"));
  CHECK_THAT(j.sft_error("\n  \r\n"), Equals(j.file + ": no conversations (the file is empty or holds only blank lines)"));
  CHECK_THAT(error_of([&] { post::read_sft_jsonl(j.dir / "missing.jsonl"); }), Contains("cannot open JSONL file") && Contains("missing.jsonl"));
}

TEST_CASE("preference JSONL errors name the file, the line and the field", "[unit]") {
  jsonl_case j;
  const std::string ok = "{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\"}\n";
  CHECK_THAT(j.preference_error(ok + "not json\n"), Contains(j.file + ":2: expected a JSON object, found text that is not JSON"));
  CHECK_THAT(j.preference_error("\"p\"\n"), Equals(j.file + ":1: expected a JSON object, found a string"));
  CHECK_THAT(j.preference_error(ok + "{\"prompt\": \"p\", \"rejected\": \"r\"}\n"), Equals(j.file + ":2: field 'chosen': expected a string, found none"));
  CHECK_THAT(j.preference_error("{\"prompt\": \"p\", \"chosen\": 1, \"rejected\": \"r\"}\n"),
             Equals(j.file + ":1: field 'chosen': expected a string, found a number"));
  CHECK_THAT(j.preference_error("{\"prompt\": \"\", \"chosen\": \"c\", \"rejected\": \"r\"}\n"),
             Equals(j.file + ":1: field 'prompt': expected a non-empty string, found an empty string"));
  CHECK_THAT(j.preference_error(ok + ok + "{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"\"}\n"),
             Equals(j.file + ":3: field 'rejected': expected a non-empty string, found an empty string"));
  CHECK_THAT(j.preference_error("{\"prompt\": \"p\", \"chosen\": \"\", \"rejected\": \"r\"}\n"),
             Equals(j.file + ":1: field 'chosen': expected a non-empty string, found an empty string"));
  CHECK_THAT(j.preference_error("\n"), Equals(j.file + ": no preference pairs (the file is empty or holds only blank lines)"));
}

TEST_CASE("SFT and preference JSONL: write then read gives the same data; bad data is not written", "[unit]") {
  temp_dir dir;
  const std::vector<conversation> conversations{
      {{"system", "Be \"exact\"\\ and brief.\n"}, {"user", "héllo 世界?"}, {"assistant", "<think>\n1+1\n</think>\n2"}},
      {{"user", "tab\there"}, {"assistant", ""}, {"user", "again"}, {"assistant", "line\r\nbreak"}},
      {{"user", "unanswered"}},
  };
  const fs::path sft = dir / "sft.jsonl";
  post::write_sft_jsonl(sft, conversations);
  CHECK(post::read_sft_jsonl(sft) == conversations);
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);  // no temporary left behind

  const std::string before = read_text(sft);
  const std::vector<conversation> bad_order{{{"user", "q"}, {"assistant", "a"}}, {{"user", "q"}, {"user", "q"}}};
  CHECK_THAT(error_of([&] { post::write_sft_jsonl(sft, bad_order); }),
             Equals("write_sft_jsonl: conversation 1: message 1 has role \"user\", expected \"assistant\"" + role_rule));
  const std::vector<conversation> bad_text{{{"user", "bad \xC3\x28 byte"}}};
  CHECK_THAT(error_of([&] { post::write_sft_jsonl(sft, bad_text); }), Contains("write_sft_jsonl: conversation 0: the text is not valid UTF-8"));
  CHECK_THAT(error_of([&] { post::write_sft_jsonl(sft, std::vector<conversation>{}); }), Contains("write_sft_jsonl: no conversations to write"));
  CHECK(read_text(sft) == before);

  const std::vector<post::preference_pair> pairs{{"2+3?", "5", "6"}, {"say \"hi\"\n", "héllo", "<think>no</think>"}};
  const fs::path pref = dir / "pref.jsonl";
  post::write_preference_jsonl(pref, pairs);
  CHECK(post::read_preference_jsonl(pref) == pairs);
  CHECK_THAT(error_of([&] { post::write_preference_jsonl(pref, std::vector<post::preference_pair>{{"p", "c", ""}}); }),
             Equals("write_preference_jsonl: pair 0: field 'rejected' is empty"));
  CHECK_THAT(error_of([&] { post::write_preference_jsonl(pref, std::vector<post::preference_pair>{}); }),
             Contains("write_preference_jsonl: no preference pairs to write"));
  CHECK(post::read_preference_jsonl(pref) == pairs);
}

// ---- packing

namespace {

// Conversation `tag` of `length` tokens: ids tag*100 + position, train flag on every third position.
post::rendered_chat numbered(int tag, int length) {
  post::rendered_chat c;
  for (int k = 0; k < length; ++k) {
    c.ids.push_back(tag * 100 + k);
    c.train.push_back(k % 3 == 2);
  }
  return c;
}

constexpr std::int32_t pad = -1;

// A row's expected content: the first `take` tokens of each listed conversation, then padding.
struct piece {
  int tag, take;
};
void expect_row(const post::packed_rows& p, std::int64_t row, std::initializer_list<piece> pieces) {
  ids_t ids;
  std::vector<std::uint8_t> train;
  for (const piece& x : pieces) {
    const post::rendered_chat c = numbered(x.tag, x.take);
    append(ids, c.ids);
    train.insert(train.end(), c.train.begin(), c.train.end());
  }
  ids.resize(static_cast<std::size_t>(p.row_tokens), pad);
  train.resize(ids.size(), 0);
  const auto begin = static_cast<std::ptrdiff_t>(row * p.row_tokens), end = begin + p.row_tokens;
  INFO("row " << row);
  CHECK(ids_t(p.ids.begin() + begin, p.ids.begin() + end) == ids);
  CHECK(std::vector<std::uint8_t>(p.train.begin() + begin, p.train.begin() + end) == train);
}

}  // namespace

TEST_CASE("packing: best-fit decreasing placement, padding and truncation", "[unit]") {
  // Lengths 3, 7, 5, 4, 2, 12 into rows of 10: the 12 is cut to a row of its own; 7 opens row 1; 5 does
  // not fit there and opens row 2; 4 fits only row 2; 3 fills row 1 exactly; 2 fits nowhere and opens row 3.
  const std::vector<post::rendered_chat> chats{numbered(0, 3), numbered(1, 7), numbered(2, 5),
                                               numbered(3, 4), numbered(4, 2), numbered(5, 12)};
  const post::packed_rows p = post::pack_conversations(chats, 10, pad);
  CHECK(p.row_tokens == 10);
  REQUIRE(p.rows == 4);
  REQUIRE(p.ids.size() == 40);
  REQUIRE(p.train.size() == 40);
  CHECK(p.truncated == 1);
  expect_row(p, 0, {{5, 10}});
  expect_row(p, 1, {{1, 7}, {0, 3}});
  expect_row(p, 2, {{2, 5}, {3, 4}});
  expect_row(p, 3, {{4, 2}});

  // Best fit, not first fit: after 7 (row 0, room 3), 5 (row 1, room 5) and 4 (row 1, room 1), the 1 goes
  // to row 1, the row with the least room, although row 0 comes first.
  const std::vector<post::rendered_chat> best{numbered(0, 1), numbered(1, 5), numbered(2, 7), numbered(3, 4)};
  const post::packed_rows b = post::pack_conversations(best, 10, pad);
  REQUIRE(b.rows == 2);
  CHECK(b.truncated == 0);
  expect_row(b, 0, {{2, 7}});
  expect_row(b, 1, {{1, 5}, {3, 4}, {0, 1}});

  // Equal lengths keep their input order, and equal room goes to the lowest row.
  const std::vector<post::rendered_chat> ties{numbered(0, 6), numbered(1, 6), numbered(2, 3)};
  const post::packed_rows t = post::pack_conversations(ties, 10, pad);
  REQUIRE(t.rows == 2);
  expect_row(t, 0, {{0, 6}, {2, 3}});
  expect_row(t, 1, {{1, 6}});
}

TEST_CASE("packing: rendered conversations, empty input and malformed input", "[unit]") {
  const post::chat_template chat(byte_tokenizer());
  const std::vector<post::rendered_chat> chats{chat.render("Hi", "Yo!"), chat.render("2+2=?", "4")};  // 9 and 10 tokens
  const post::packed_rows p = post::pack_conversations(chats, 20, chat.eos());
  REQUIRE(p.rows == 1);
  CHECK(p.ids[0] == chat.bos());
  CHECK(p.ids[10] == chat.bos());  // the longer conversation first, then the shorter one starting with its BOS
  CHECK(ids_t(p.ids.begin(), p.ids.begin() + 10) == chats[1].ids);
  CHECK(ids_t(p.ids.begin() + 10, p.ids.begin() + 19) == chats[0].ids);
  CHECK(p.ids[19] == chat.eos());
  CHECK(p.train[19] == 0);  // padding is never trained, even when it is the EOS id
  CHECK(std::count(p.train.begin(), p.train.end(), 1) == 3 + 1 + 1 + 1);

  const post::packed_rows none = post::pack_conversations({}, 8, pad);
  CHECK(none.rows == 0);
  CHECK(none.ids.empty());
  CHECK(none.train.empty());

  CHECK_THAT(error_of([&] { post::pack_conversations(chats, 0, pad); }), Equals("pack_conversations: row_tokens must be positive, found 0"));
  std::vector<post::rendered_chat> bad{numbered(0, 3), numbered(1, 2)};
  bad[1].train.pop_back();
  CHECK_THAT(error_of([&] { post::pack_conversations(bad, 8, pad); }), Equals("pack_conversations: conversation 1 has 2 ids but 1 train flags"));
  bad[1] = post::rendered_chat{};
  CHECK_THAT(error_of([&] { post::pack_conversations(bad, 8, pad); }), Equals("pack_conversations: conversation 1 has no tokens"));
}
