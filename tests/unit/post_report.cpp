// The R1 recipe's report (post/report.hpp): report.json round trips and its errors name the field, the
// printed stage table, and the self-contained HTML page.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/post/report.hpp"
#include "support/files.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
using dsx::post::stage_report;
using dsx::test::error_of;
using dsx::test::temp_dir;

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Two stages: a teacher with two tasks and no Nim games, a student with a task the teacher lacks and a
// Nim win rate.
std::vector<stage_report> two_stages() {
  stage_report teacher;
  teacher.name = "pretrain";
  teacher.model = "teacher";
  teacher.pass_at_1 = 0.125, teacher.cons_at_k = 0.25, teacher.format_rate = 0.5, teacher.seconds = 12.34,
  teacher.k = 4;
  teacher.tasks = {{"arith", 0.1, 0.2, 0.5, 64}, {"sort", 0.2, 0.3, 0.5, 32}};
  teacher.metrics = "runs/pretrain/metrics.jsonl";
  teacher.curves = {"loss"};

  stage_report student;
  student.name = "distill-student";
  student.model = "student";
  student.pass_at_1 = 0.625, student.cons_at_k = 0.75, student.format_rate = 1, student.seconds = 3600, student.k = 16;
  student.tasks = {{"arith", 0.55, 0.75, 1, 64}, {"nim", 0.3, 0.5, 1, 10}};
  student.nim_win_rate = 0.8;
  student.samples = {{"arith", "What is 2 + 3?", "2 plus 3 is 5.\nCheck: 5 - 3 = 2.", "5", "5", true, true},
                     {"nim", "Heaps \"3 4\": your move", "", "take 9", "1 from heap 2", false, false}};
  return {teacher, student};
}

// Writes `stages` to report.json, lets `edit` change the JSON, and returns the error reading it back.
template <class Edit>
std::string read_error(const temp_dir& dir, Edit&& edit) {
  const fs::path file = dir / "report.json";
  dsx::post::write_report_json(file, two_stages(), nlohmann::json::object());
  nlohmann::json j = nlohmann::json::parse(read_text(file));
  edit(j);
  dir.write("report.json", j.dump());
  return error_of([&] { dsx::post::read_report_json(file); });
}

}  // namespace

TEST_CASE("report.json round trips every field, traces included, with the extra members at the top level", "[unit]") {
  const temp_dir dir;
  const fs::path file = dir / "report.json";
  const auto stages = two_stages();
  dsx::post::write_report_json(file, stages, {{"total_seconds", 3612.5}, {"config", {{"seed", 7}}}});

  const auto back = dsx::post::read_report_json(file);
  REQUIRE(back.size() == 2);
  CHECK(back[0] == stages[0]);
  CHECK(back[1] == stages[1]);
  CHECK(back[1].samples[0].thinking == "2 plus 3 is 5.\nCheck: 5 - 3 = 2.");
  CHECK_FALSE(back[0].nim_win_rate.has_value());

  const auto j = nlohmann::json::parse(read_text(file));
  CHECK(j.at("total_seconds") == 3612.5);
  CHECK(j.at("config").at("seed") == 7);
  CHECK(j.at("stages").at(0).at("nim_win_rate").is_null());
  CHECK(j.at("stages").at(1).at("nim_win_rate") == 0.8);

  // Bytes that are not UTF-8 (a model may emit any) are written as U+FFFD instead of failing the report.
  auto bad_bytes = stages;
  bad_bytes[1].samples[0].thinking = "x\xff-y";
  dsx::post::write_report_json(file, bad_bytes, nullptr);
  CHECK(dsx::post::read_report_json(file)[1].samples[0].thinking == "x\xEF\xBF\xBD-y");

  // Rewriting replaces the file; no temporary file is left beside it.
  dsx::post::write_report_json(file, std::span(stages).first(1), nullptr);
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);

  CHECK(dsx::post::read_report_json(file) == std::vector<stage_report>{stages[0]});
}

TEST_CASE("malformed report.json gives an error naming the file and the field", "[unit]") {
  const temp_dir dir;
  const std::string file = (dir / "report.json").string();
  CHECK_THAT(read_error(dir, [](nlohmann::json& j) { j["stages"][1]["tasks"][0].erase("pass_at_1"); }),
             Equals(file + ": stages[1].tasks[0]: expected a field \"pass_at_1\", found none"));
  CHECK_THAT(read_error(dir, [](nlohmann::json& j) { j["stages"][1]["samples"][1]["correct"] = "no"; }),
             Equals(file + ": stages[1].samples[1].correct: expected a boolean, found a string"));
  CHECK_THAT(read_error(dir, [](nlohmann::json& j) { j["stages"][0]["format_rate"] = 1.5; }),
             Equals(file + ": stages[0].format_rate: expected a fraction in [0, 1], found 1.5"));
  CHECK_THAT(read_error(dir, [](nlohmann::json& j) { j["stages"][0]["k"] = 2.5; }),
             Equals(file + ": stages[0].k: expected an integer, found a number"));
  CHECK_THAT(read_error(dir, [](nlohmann::json& j) { j["stages"][1]["nim_win_rate"] = "high"; }),
             Equals(file + ": stages[1].nim_win_rate: expected a number or null, found a string"));
  CHECK_THAT(read_error(dir, [](nlohmann::json& j) { j["stages"] = nlohmann::json::object(); }),
             Equals(file + ": stages: expected an array, found an object"));
  CHECK_THAT(read_error(dir, [](nlohmann::json& j) { j = nlohmann::json::array(); }),
             Equals(file + ": expected a JSON object, found an array"));

  dir.write("report.json", "{\"stages\": [");
  CHECK_THAT(error_of([&] { dsx::post::read_report_json(file); }),
             Contains(file + ": expected a JSON report, found text that is not JSON"));
  CHECK_THAT(error_of([&] { dsx::post::read_report_json(dir / "absent.json"); }), Contains("absent.json"));
}

TEST_CASE("the writers refuse values out of range and an extra \"stages\"", "[unit]") {
  const temp_dir dir;
  const fs::path file = dir / "report.json";
  auto stages = two_stages();
  stages[1].tasks[1].cons_at_k = -0.25;
  CHECK_THAT(error_of([&] { dsx::post::write_report_json(file, stages, nullptr); }),
             Equals(file.string() + ": stages[1].tasks[1].cons_at_k: expected a fraction in [0, 1], found -0.25"));
  CHECK_THAT(error_of([&] { dsx::post::write_report_html(dir / "report.html", stages, nullptr); }),
             Contains("stages[1].tasks[1].cons_at_k"));
  CHECK_FALSE(fs::exists(file));

  stages = two_stages();
  stages[0].seconds = std::numeric_limits<double>::quiet_NaN();
  CHECK_THAT(error_of([&] { dsx::post::write_report_json(file, stages, nullptr); }),
             Equals(file.string() + ": stages[0].seconds: expected a finite number >= 0, found nan"));
  const nlohmann::json clashing = {{"stages", 1}};
  CHECK_THAT(error_of([&] { dsx::post::write_report_json(file, two_stages(), clashing); }), Contains("\"stages\""));
  CHECK_THAT(error_of([&] { dsx::post::write_report_json(file, two_stages(), 3); }), Contains("must be a JSON object"));
}

TEST_CASE("the stage table aligns stage, model, k, rates, seconds and per-task pass@1", "[unit]") {
  const std::string expected =
      "stage            model     k  pass@1 %  cons@k %  format %  seconds  arith  sort   nim  nim win %\n"
      "pretrain         teacher   4      12.5      25.0      50.0     12.3   10.0  20.0     -          -\n"
      "distill-student  student  16      62.5      75.0     100.0   3600.0   55.0     -  30.0       80.0\n";
  CHECK_THAT(dsx::post::stage_table(two_stages()), Equals(expected));

  auto one = two_stages();
  one.resize(1);
  CHECK_THAT(dsx::post::stage_table(one),
             Equals("stage     model    k  pass@1 %  cons@k %  format %  seconds  arith  sort\n"
                    "pretrain  teacher  4      12.5      25.0      50.0     12.3   10.0  20.0\n"));
}

TEST_CASE("the HTML page is self-contained, escapes text and keeps the thinking apart from the answer", "[unit]") {
  const temp_dir dir;
  auto stages = two_stages();
  stages[0].metrics = dir.write("metrics.jsonl",
                                "{\"step\": 1, \"loss\": 4.5, \"lr\": 0.001}\n"
                                "{\"step\": 2, \"loss\": 3.25, \"lr\": 0.001}\n"
                                "{\"step\": 3, \"loss\": 2.75}\n");
  stages[0].curves = {"loss", "kl"};
  stages[1].metrics = dir / "missing" / "metrics.jsonl";
  stages[1].curves = {"reward"};
  stages[1].samples.push_back(
      {"logic", "Is 3 < 4 && 5 > 2?", "3 < 4 holds & 5 > 2 holds", "<yes>", "yes", true, false});

  const fs::path page = dir / "report.html";
  dsx::post::write_report_html(page, stages, {{"total_seconds", 3612.5}, {"config", {{"task", "a<b"}}}}, 3);
  const std::string html = read_text(page);

  CHECK_THAT(html,
             Contains("<!DOCTYPE html>") && Contains("<title>dsx R1 recipe report</title>") && Contains("<style>"));
  for (const auto& s : stages) CHECK_THAT(html, Contains(s.name));
  CHECK_THAT(html, Contains("<th>arith</th>") && Contains("<th>nim win %</th>"));

  // Escaped question, thinking, answer and extra members; none of the raw text.
  CHECK_THAT(html, Contains("<pre class=\"question\">Is 3 &lt; 4 &amp;&amp; 5 &gt; 2?</pre>"));
  CHECK_THAT(html, Contains("<pre class=\"thinking\">3 &lt; 4 holds &amp; 5 &gt; 2 holds</pre>"));
  CHECK_THAT(html, Contains("<pre class=\"answer\">&lt;yes&gt;</pre>"));
  CHECK_THAT(html, Contains("<pre class=\"question\">Heaps &quot;3 4&quot;: your move</pre>"));
  CHECK_THAT(html, Contains("&quot;task&quot;: &quot;a&lt;b&quot;"));
  CHECK_THAT(html, !Contains("3 < 4") && !Contains("<yes>") && !Contains("a<b"));
  CHECK_THAT(html, Contains("<pre class=\"thinking\">2 plus 3 is 5.\nCheck: 5 - 3 = 2.</pre>") &&
                       Contains("<pre class=\"answer\">5</pre>"));
  CHECK_THAT(html,
             Contains("<span class=\"badge ok\">correct</span>") && Contains("<span class=\"badge bad\">wrong</span>"));
  CHECK_THAT(html, Contains("expected: <code>1 from heap 2</code>"));
  CHECK_THAT(html, Contains("No chain of thought."));
  CHECK_THAT(html, Contains("Samples (3 of 3)"));

  // The bar chart and one plot of curves: the file that exists; the missing file and key are notes.
  std::size_t svgs = 0;
  for (auto at = html.find("<svg"); at != std::string::npos; at = html.find("<svg", at + 1)) ++svgs;
  CHECK(svgs == 2);
  CHECK_THAT(html, Contains("pretrain: training curves") && Contains("<polyline"));
  CHECK_THAT(html, !Contains("distill-student: training curves"));
  CHECK_THAT(html, Contains("No values in") && Contains("for: kl."));
  CHECK_THAT(html, Contains("missing") && Contains("does not exist"));

  // Nothing to fetch and nothing to run.
  CHECK_THAT(html, !Contains("http", Catch::CaseSensitive::No) && !Contains("<script") && !Contains("xmlns") &&
                       !Contains("src=") && !Contains("<link"));

  // At most `samples_shown` samples per stage.
  dsx::post::write_report_html(page, stages, nullptr, 1);
  const std::string fewer = read_text(page);
  CHECK_THAT(fewer, Contains("Samples (1 of 3)") && !Contains("Heaps"));

  // A metrics file that does not read is a note, not a failed report.
  dir.write("metrics.jsonl", "{\"step\": 1, \"loss\": 4.5}\nnot json\n");
  dsx::post::write_report_html(page, stages, nullptr);
  CHECK_THAT(read_text(page), Contains("No training curves:") && Contains("metrics.jsonl:2"));
}

TEST_CASE("svg_plot inlines without the namespace; write_svg_plot still writes a standalone file", "[unit]") {
  const temp_dir dir;
  const std::vector<dsx::plot_panel> panels{{"loss", false, {{"loss", {{1, 2.0}, {2, 1.0}}}}}};
  const std::string inline_svg = dsx::svg_plot("t", panels, dsx::svg_for::html);
  CHECK_THAT(inline_svg, !Contains("xmlns") && Contains("<polyline"));
  dsx::write_svg_plot(dir / "plot.svg", "t", panels);
  const std::string file = read_text(dir / "plot.svg");
  CHECK(file.rfind("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=", 0) ==
        0);
  CHECK(file.substr(file.find(" width=")) == inline_svg.substr(inline_svg.find(" width=")));
}

TEST_CASE("plots of values equal up to rounding finish with a widened axis", "[unit]") {
  // The learning rate of a two-step warm-up/cosine run: 3e-4 and its neighbour one ulp-scale below. A
  // tick step below the spacing of doubles at 3e-4 would never advance.
  const std::vector<dsx::plot_panel> panels{
      {"learning rate", false, {{"lr", {{1.0, 0.0003}, {2.0, 0.0002999999999999999}}}}},
      {"one point", true, {{"loss", {{5.0, 2.5}}}}}};
  const std::string svg = dsx::svg_plot("flat", panels, dsx::svg_for::file);
  CHECK_THAT(svg, Contains("learning rate") && Contains("one point") && Contains("</svg>"));
}
