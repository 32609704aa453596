// The report of the R1 recipe: every stage (pre-training, R1-Zero, cold-start SFT, GRPO, rejection-sampling
// SFT, RL, the distilled and the baseline student) evaluated on held-out verifiable tasks, written as
//   - report.json: what a resumed recipe reads back to skip finished stages (write_report_json /
//     read_report_json);
//   - a table printed on the terminal (stage_table);
//   - report.html beside it: one self-contained page (inline CSS and SVG, no script, no external resource)
//     with the table, a bar chart, each stage's training curves and sample responses (write_report_html).
//
// Rates are fractions in [0, 1] (the table and the page show percentages). Both writers check every value
// first, so a report on disk always reads back.
//
// report.json:
//   {"stages": [{"name", "model", "pass_at_1", "cons_at_k", "format_rate", "seconds", "k",
//                "tasks": [{"task", "pass_at_1", "cons_at_k", "format_rate", "problems"}, ...],
//                "nim_win_rate": x | null,
//                "metrics": "path of the stage's metrics.jsonl, \"\" for none",
//                "curves": ["metric key", ...],
//                "samples": [{"task", "question", "thinking", "answer", "expected", "formatted", "correct"}, ...]},
//               ...],
//    ...every member of `extra` (e.g. "total_seconds", "config")}
// The metrics, curves and samples are kept so that the page of a resumed recipe still shows the stages it
// did not rerun. The metrics path is stored as given: a relative one is relative to the working directory
// of the process, not to the report. Text that is not valid UTF-8 (a model can emit any bytes) is written
// with U+FFFD in place of the bad bytes. Reading ignores members it does not know; every member above is
// required, and an error names the file and the field ("report.json: stages[1].tasks[0].pass_at_1: ...").
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"
#include "dsx/data/jsonl.hpp"
#include "dsx/io/safetensors.hpp"
#include "dsx/train/metrics.hpp"

namespace dsx::post {

struct task_score {
  std::string task;
  double pass_at_1 = 0, cons_at_k = 0, format_rate = 0;
  std::int64_t problems = 0;
  friend bool operator==(const task_score&, const task_score&) = default;
};

// One generated response.
struct sample_trace {
  std::string task, question, thinking, answer, expected;
  bool formatted = false, correct = false;
  friend bool operator==(const sample_trace&, const sample_trace&) = default;
};

struct stage_report {
  std::string name;   // e.g. "pretrain", "r1-zero", "cold-start-sft", "grpo", "rejection-sft", "rl-all", ...
  std::string model;  // "teacher" or "student"
  double pass_at_1 = 0, cons_at_k = 0, format_rate = 0;  // means over the tasks
  double seconds = 0;                                    // wall time of the stage
  int k = 0;                                             // samples per problem behind pass@1 and cons@k
  std::vector<task_score> tasks;
  std::optional<double> nim_win_rate;
  std::filesystem::path metrics;    // the stage's metrics.jsonl; empty for evaluation-only stages
  std::vector<std::string> curves;  // keys of `metrics` to plot, e.g. {"reward", "accuracy", "kl"}
  std::vector<sample_trace> samples;
  friend bool operator==(const stage_report&, const stage_report&) = default;
};

namespace report_detail {

using json = nlohmann::json;

inline std::string fixed1(double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

inline std::string percent(double rate) { return fixed1(100 * rate); }

// A number in an error message: the shortest text that reads back, or nan / inf.
inline std::string shown(double v) { return std::isfinite(v) ? json(v).dump() : std::to_string(v); }

// The range checks shared by both writers and the reader; `where` is "<file>: stages[i]".
inline void check_fraction(double v, const std::string& where) {
  require(std::isfinite(v) && v >= 0 && v <= 1, where + ": expected a fraction in [0, 1], found " + shown(v));
}

inline void check_stage(const stage_report& s, const std::string& where) {
  check_fraction(s.pass_at_1, where + ".pass_at_1");
  check_fraction(s.cons_at_k, where + ".cons_at_k");
  check_fraction(s.format_rate, where + ".format_rate");
  require(std::isfinite(s.seconds) && s.seconds >= 0,
          where + ".seconds: expected a finite number >= 0, found " + shown(s.seconds));
  require(s.k >= 0, where + ".k: expected an integer >= 0, found " + std::to_string(s.k));
  if (s.nim_win_rate) check_fraction(*s.nim_win_rate, where + ".nim_win_rate");
  for (std::size_t t = 0; t < s.tasks.size(); ++t) {
    const task_score& task = s.tasks[t];
    const std::string at = where + ".tasks[" + std::to_string(t) + "]";
    check_fraction(task.pass_at_1, at + ".pass_at_1");
    check_fraction(task.cons_at_k, at + ".cons_at_k");
    check_fraction(task.format_rate, at + ".format_rate");
    require(task.problems >= 0, at + ".problems: expected an integer >= 0, found " + std::to_string(task.problems));
  }
}

inline void check_stages(std::span<const stage_report> stages, const std::filesystem::path& file) {
  for (std::size_t i = 0; i < stages.size(); ++i)
    check_stage(stages[i], file.string() + ": stages[" + std::to_string(i) + "]");
}

inline void write_text(const std::filesystem::path& path, const std::string& text) {
  const std::span<const std::byte> piece = std::as_bytes(std::span(text));
  write_file_atomic(path, std::span<const std::span<const std::byte>>(&piece, 1));
}

// JSON text with U+FFFD in place of bytes that are not UTF-8 (the default dump throws on them).
inline std::string dump(const json& j, int indent) {
  return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

inline json to_json(const stage_report& s) {
  json tasks = json::array();
  for (const task_score& t : s.tasks)
    tasks.push_back({{"task", t.task},
                     {"pass_at_1", t.pass_at_1},
                     {"cons_at_k", t.cons_at_k},
                     {"format_rate", t.format_rate},
                     {"problems", t.problems}});
  json samples = json::array();
  for (const sample_trace& t : s.samples)
    samples.push_back({{"task", t.task},
                       {"question", t.question},
                       {"thinking", t.thinking},
                       {"answer", t.answer},
                       {"expected", t.expected},
                       {"formatted", t.formatted},
                       {"correct", t.correct}});
  return {{"name", s.name},
          {"model", s.model},
          {"pass_at_1", s.pass_at_1},
          {"cons_at_k", s.cons_at_k},
          {"format_rate", s.format_rate},
          {"seconds", s.seconds},
          {"k", s.k},
          {"tasks", std::move(tasks)},
          {"nim_win_rate", s.nim_win_rate ? json(*s.nim_win_rate) : json(nullptr)},
          {"metrics", s.metrics.string()},
          {"curves", s.curves},
          {"samples", std::move(samples)}};
}

// A JSON value with its place in the report, for errors "<file>: stages[1].tasks[0].pass_at_1: ...".
struct located {
  const json& value;
  const std::string& file;
  std::string path;  // empty for the whole report

  std::string where() const { return path.empty() ? file : file + ": " + path; }

  located operator[](std::string_view key) const {
    expect(value.is_object(), "a JSON object");
    const auto it = value.find(key);
    require(it != value.end(), where() + ": expected a field \"" + std::string(key) + "\", found none");
    return {*it, file, path.empty() ? std::string(key) : path + "." + std::string(key)};
  }
  located operator[](std::size_t i) const { return {value[i], file, path + "[" + std::to_string(i) + "]"}; }

  void expect(bool ok, const char* what) const {
    require(ok, where() + ": expected " + what + ", found " + jsonl_detail::kind(value));
  }
  std::string string() const {
    expect(value.is_string(), "a string");
    return value.get<std::string>();
  }
  double number() const {
    expect(value.is_number(), "a number");
    return value.get<double>();
  }
  std::int64_t integer() const {
    expect(value.is_number_integer(), "an integer");
    return value.get<std::int64_t>();
  }
  bool boolean() const {
    expect(value.is_boolean(), "a boolean");
    return value.get<bool>();
  }
  std::size_t array_size() const {
    expect(value.is_array(), "an array");
    return value.size();
  }
};

inline stage_report from_json(const located& j) {
  stage_report s;
  s.name = j["name"].string();
  s.model = j["model"].string();
  s.pass_at_1 = j["pass_at_1"].number();
  s.cons_at_k = j["cons_at_k"].number();
  s.format_rate = j["format_rate"].number();
  s.seconds = j["seconds"].number();
  const located k = j["k"];
  const std::int64_t k_value = k.integer();
  require(k_value >= 0 && k_value <= std::numeric_limits<int>::max(),
          k.where() + ": expected an integer in [0, " + std::to_string(std::numeric_limits<int>::max()) + "], found " +
              std::to_string(k_value));
  s.k = int(k_value);
  const located tasks = j["tasks"];
  for (std::size_t i = 0, n = tasks.array_size(); i < n; ++i) {
    const located t = tasks[i];
    s.tasks.push_back({t["task"].string(), t["pass_at_1"].number(), t["cons_at_k"].number(), t["format_rate"].number(),
                       t["problems"].integer()});
  }
  if (const located nim = j["nim_win_rate"]; !nim.value.is_null()) {
    nim.expect(nim.value.is_number(), "a number or null");
    s.nim_win_rate = nim.value.get<double>();
  }
  s.metrics = j["metrics"].string();
  const located curves = j["curves"];
  for (std::size_t i = 0, n = curves.array_size(); i < n; ++i) s.curves.push_back(curves[i].string());
  const located samples = j["samples"];
  for (std::size_t i = 0, n = samples.array_size(); i < n; ++i) {
    const located t = samples[i];
    s.samples.push_back({t["task"].string(), t["question"].string(), t["thinking"].string(), t["answer"].string(),
                         t["expected"].string(), t["formatted"].boolean(), t["correct"].boolean()});
  }
  check_stage(s, j.where());
  return s;
}

// One column of the stage table: its header and one cell per stage; numbers are right-aligned.
struct table_column {
  std::string header;
  bool numeric = true;
  std::vector<std::string> cells;
};

// The columns shared by the printed table and the page: stage, model, k, pass@1 %, cons@k %, format %,
// seconds, then pass@1 % of every task (in the order tasks first appear, "-" where a stage lacks one),
// then the Nim win rate % when any stage has one.
inline std::vector<table_column> table_columns(std::span<const stage_report> stages) {
  std::vector<std::string> task_names;
  for (const stage_report& s : stages)
    for (const task_score& t : s.tasks)
      if (std::find(task_names.begin(), task_names.end(), t.task) == task_names.end()) task_names.push_back(t.task);
  const bool any_nim =
      std::any_of(stages.begin(), stages.end(), [](const stage_report& s) { return s.nim_win_rate.has_value(); });

  std::vector<table_column> columns{{"stage", false, {}},   {"model", false, {}},   {"k", true, {}},
                                    {"pass@1 %", true, {}}, {"cons@k %", true, {}}, {"format %", true, {}},
                                    {"seconds", true, {}}};
  for (const std::string& name : task_names) columns.push_back({name, true, {}});
  if (any_nim) columns.push_back({"nim win %", true, {}});

  for (const stage_report& s : stages) {
    std::vector<std::string> row{s.name,
                                 s.model,
                                 std::to_string(s.k),
                                 percent(s.pass_at_1),
                                 percent(s.cons_at_k),
                                 percent(s.format_rate),
                                 fixed1(s.seconds)};
    for (const std::string& name : task_names) {
      const auto it = std::find_if(s.tasks.begin(), s.tasks.end(), [&](const task_score& t) { return t.task == name; });
      row.push_back(it == s.tasks.end() ? "-" : percent(it->pass_at_1));
    }
    if (any_nim) row.push_back(s.nim_win_rate ? percent(*s.nim_win_rate) : "-");
    for (std::size_t c = 0; c < row.size(); ++c) columns[c].cells.push_back(std::move(row[c]));
  }
  return columns;
}

// Display width of UTF-8 text: its code points (the table's names are not expected to hold wide characters).
inline std::size_t display_width(const std::string& s) {
  return std::size_t(
      std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

inline void check_extra(const json& extra, const std::filesystem::path& file) {
  require(extra.is_object() || extra.is_null(),
          file.string() + ": the extra report members must be a JSON object, found " + jsonl_detail::kind(extra));
  require(!extra.contains("stages"), file.string() + ": the extra report members must not hold \"stages\"");
}

// HTML text and attribute values (always in double quotes) need only & < > " replaced.
using plot_detail::escape;

inline std::string html_table(std::span<const table_column> columns) {
  std::string out = "<table>\n<tr>";
  for (const table_column& c : columns) out += "<th>" + escape(c.header) + "</th>";
  out += "</tr>\n";
  const std::size_t rows = columns.empty() ? 0 : columns.front().cells.size();
  for (std::size_t r = 0; r < rows; ++r) {
    out += "<tr>";
    for (const table_column& c : columns)
      out += (c.numeric ? "<td class=\"num\">" : "<td>") + escape(c.cells[r]) + "</td>";
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

inline std::string task_table_html(const stage_report& s) {
  std::vector<table_column> columns{{"task", false, {}},
                                    {"problems", true, {}},
                                    {"pass@1 %", true, {}},
                                    {"cons@k %", true, {}},
                                    {"format %", true, {}}};
  for (const task_score& t : s.tasks) {
    const std::string row[] = {t.task, std::to_string(t.problems), percent(t.pass_at_1), percent(t.cons_at_k),
                               percent(t.format_rate)};
    for (std::size_t c = 0; c < columns.size(); ++c) columns[c].cells.push_back(row[c]);
  }
  return html_table(columns);
}

// Grouped bars of pass@1 and the format rate of every stage, on a 0-100 % axis.
inline std::string bar_chart_svg(std::span<const stage_report> stages) {
  using plot_detail::coord, plot_detail::colors;
  constexpr double left = 50, top = 20, plot_h = 200, group_w = 120, bar_w = 40, legend_w = 150, bottom = 40;
  const double plot_w = group_w * double(stages.size());
  const double width = left + plot_w + legend_w, height = top + plot_h + bottom;
  const auto py = [&](double rate) { return top + plot_h * (1 - rate); };
  std::string svg = "<svg width=\"" + coord(width) + "\" height=\"" + coord(height) + "\" viewBox=\"0 0 " +
                    coord(width) + " " + coord(height) + "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  svg += "<rect x=\"0\" y=\"0\" width=\"" + coord(width) + "\" height=\"" + coord(height) + "\" fill=\"white\"/>\n";
  for (int tick = 0; tick <= 100; tick += 25) {
    const double y = py(tick / 100.0);
    svg += "<line x1=\"" + coord(left) + "\" y1=\"" + coord(y) + "\" x2=\"" + coord(left + plot_w) + "\" y2=\"" +
           coord(y) + "\" stroke=\"#ddd\"/>\n";
    svg += "<text x=\"" + coord(left - 4) + "\" y=\"" + coord(y + 4) + "\" text-anchor=\"end\">" +
           std::to_string(tick) + "%</text>\n";
  }
  const std::pair<const char*, double stage_report::*> series[] = {{"pass@1", &stage_report::pass_at_1},
                                                                   {"format rate", &stage_report::format_rate}};
  for (std::size_t i = 0; i < stages.size(); ++i) {
    const double x0 = left + group_w * double(i) + (group_w - bar_w * double(std::size(series))) / 2;
    for (std::size_t b = 0; b < std::size(series); ++b) {
      const double rate = stages[i].*series[b].second, x = x0 + bar_w * double(b);
      svg += "<rect x=\"" + coord(x) + "\" y=\"" + coord(py(rate)) + "\" width=\"" + coord(bar_w - 2) + "\" height=\"" +
             coord(plot_h * rate) + "\" fill=\"" + colors[b] + "\"/>\n";
      svg += "<text x=\"" + coord(x + bar_w / 2 - 1) + "\" y=\"" + coord(py(rate) - 3) + "\" text-anchor=\"middle\">" +
             percent(rate) + "</text>\n";
    }
    const double center = left + group_w * (double(i) + 0.5);
    svg += "<text x=\"" + coord(center) + "\" y=\"" + coord(top + plot_h + 15) + "\" text-anchor=\"middle\">" +
           escape(stages[i].name) + "</text>\n";
    svg += "<text x=\"" + coord(center) + "\" y=\"" + coord(top + plot_h + 29) +
           "\" text-anchor=\"middle\" fill=\"#777\">" + escape(stages[i].model) + "</text>\n";
  }
  svg += "<rect x=\"" + coord(left) + "\" y=\"" + coord(top) + "\" width=\"" + coord(plot_w) + "\" height=\"" +
         coord(plot_h) + "\" fill=\"none\" stroke=\"#444\"/>\n";
  for (std::size_t b = 0; b < std::size(series); ++b) {
    const double y = top + 12 + 16 * double(b);
    svg += "<rect x=\"" + coord(left + plot_w + 10) + "\" y=\"" + coord(y - 9) +
           "\" width=\"12\" height=\"10\" fill=\"" + colors[b] + "\"/>\n";
    svg += "<text x=\"" + coord(left + plot_w + 28) + "\" y=\"" + coord(y) + "\">" + series[b].first + " (%)</text>\n";
  }
  return svg + "</svg>\n";
}

// The stage's curves, one panel per key, against the "step" of each metrics line (its position in the
// file when it has none). A missing file, a file that does not read and keys without values become a
// note on the page instead of failing the report.
inline std::string curves_html(const stage_report& s) {
  if (s.metrics.empty() || s.curves.empty()) return "";
  const std::string file = escape(s.metrics.string());
  std::error_code ec;
  if (!std::filesystem::exists(s.metrics, ec))
    return "<p class=\"note\">No training curves: the metrics file " + file + " does not exist.</p>\n";
  std::vector<json> lines;
  try {
    lines = read_metrics(s.metrics);
  } catch (const error& e) {
    return "<p class=\"note\">No training curves: " + escape(e.what()) + "</p>\n";
  }
  std::vector<plot_panel> panels;
  std::string missing;
  for (const std::string& key : s.curves) {
    plot_series series{key, {}};
    for (std::size_t i = 0; i < lines.size(); ++i) {
      const json& line = lines[i];
      const auto value = line.find(key), step = line.find("step");
      if (value == line.end() || !value->is_number()) continue;
      const double x = step != line.end() && step->is_number() ? step->get<double>() : double(i + 1);
      series.points.emplace_back(x, value->get<double>());
    }
    if (series.points.empty())
      missing += (missing.empty() ? "" : ", ") + key;
    else
      panels.push_back({key, false, {std::move(series)}});
  }
  std::string out;
  if (!panels.empty())
    out += "<div class=\"plot\">\n" + svg_plot(s.name + ": training curves", panels, svg_for::html) + "</div>\n";
  if (!missing.empty()) out += "<p class=\"note\">No values in " + file + " for: " + escape(missing) + ".</p>\n";
  return out;
}

inline std::string sample_html(const sample_trace& t) {
  std::string out = "<div class=\"sample\">\n<div>";
  out += t.correct ? "<span class=\"badge ok\">correct</span>" : "<span class=\"badge bad\">wrong</span>";
  out +=
      t.formatted ? " <span class=\"badge neutral\">formatted</span>" : " <span class=\"badge bad\">unformatted</span>";
  out += " task <b>" + escape(t.task) + "</b></div>\n";
  out += "<div class=\"label\">question</div>\n<pre class=\"question\">" + escape(t.question) + "</pre>\n";
  if (t.thinking.empty())
    out += "<p class=\"note\">No chain of thought.</p>\n";
  else
    out += "<details>\n<summary>chain of thought</summary>\n<pre class=\"thinking\">" + escape(t.thinking) +
           "</pre>\n</details>\n";
  out += "<div class=\"label\">answer</div>\n<pre class=\"answer\">" + escape(t.answer) + "</pre>\n";
  out += "<div class=\"expected\">expected: <code>" + escape(t.expected) + "</code></div>\n";
  return out + "</div>\n";
}

inline std::string stage_html(const stage_report& s, std::size_t samples_shown) {
  std::string out = "<section>\n<h2>" + escape(s.name) + " <span class=\"model\">" + escape(s.model) + "</span></h2>\n";
  out += "<p>pass@1 " + percent(s.pass_at_1) + " %, cons@" + std::to_string(s.k) + " " + percent(s.cons_at_k) +
         " %, format " + percent(s.format_rate) + " %";
  if (s.nim_win_rate) out += ", Nim win rate " + percent(*s.nim_win_rate) + " %";
  out += "; " + fixed1(s.seconds) + " s.</p>\n";
  if (!s.tasks.empty()) out += task_table_html(s);
  out += curves_html(s);
  const std::size_t shown = std::min(samples_shown, s.samples.size());
  if (shown > 0) {
    out += "<h3>Samples (" + std::to_string(shown) + " of " + std::to_string(s.samples.size()) + ")</h3>\n";
    for (std::size_t i = 0; i < shown; ++i) out += sample_html(s.samples[i]);
  }
  return out + "</section>\n";
}

// The members of `extra`: numbers and strings in a table, objects and arrays folded away as JSON.
inline std::string extra_html(const json& extra) {
  if (extra.is_null() || extra.empty()) return "";
  std::string scalars, nested;
  for (const auto& [key, value] : extra.items()) {
    if (value.is_structured())
      nested +=
          "<details>\n<summary>" + escape(key) + "</summary>\n<pre>" + escape(dump(value, 2)) + "</pre>\n</details>\n";
    else
      scalars += "<tr><th>" + escape(key) + "</th><td>" +
                 escape(value.is_string() ? value.get<std::string>() : dump(value, -1)) + "</td></tr>\n";
  }
  return "<h2>Run</h2>\n" + (scalars.empty() ? "" : "<table>\n" + scalars + "</table>\n") + nested;
}

inline constexpr const char* page_style =
    R"(body { font-family: sans-serif; color: #222; max-width: 72em; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
section { border-top: 2px solid #ddd; margin-top: 2em; }
.model { color: #777; font-weight: normal; font-size: 0.8em; }
.note { color: #777; font-style: italic; }
svg { max-width: 100%; height: auto; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0.2em 0 0.6em; }
.sample { border: 1px solid #ddd; border-radius: 4px; padding: 0.5em 1em; margin: 0.8em 0; }
.label { color: #777; font-size: 0.85em; }
pre.thinking { background: #eee; color: #555; padding: 0.5em; }
pre.answer { background: #fff3b0; border-left: 4px solid #e0b000; padding: 0.3em 0.6em; font-weight: bold; }
.badge { display: inline-block; padding: 0 0.6em; border-radius: 0.8em; color: white; font-size: 0.85em; }
.ok { background: #2ca02c; } .bad { background: #d62728; } .neutral { background: #888; }
)";

}  // namespace report_detail

// Writes report.json (see the top of this file) atomically; `extra` (a JSON object or null) adds its
// members at the top level and must not hold "stages". Values out of range are errors naming the field.
inline void write_report_json(const std::filesystem::path& path, std::span<const stage_report> stages,
                              const nlohmann::json& extra) {
  report_detail::check_extra(extra, path);
  report_detail::check_stages(stages, path);
  nlohmann::json report = extra.is_null() ? nlohmann::json::object() : extra;
  report["stages"] = nlohmann::json::array();
  for (const stage_report& s : stages) report["stages"].push_back(report_detail::to_json(s));
  report_detail::write_text(path, report_detail::dump(report, 2) + "\n");
}

// The stages of a report.json; the members of `extra` are not returned.
inline std::vector<stage_report> read_report_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  require(bool(in), "cannot open report '" + path.string() + "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw error(path.string() + ": expected a JSON report, found text that is not JSON (" + e.what() + ")");
  }
  const std::string file = path.string();
  const report_detail::located root{j, file, ""};
  const report_detail::located stages = root["stages"];
  std::vector<stage_report> out;
  for (std::size_t i = 0, n = stages.array_size(); i < n; ++i) out.push_back(report_detail::from_json(stages[i]));
  return out;
}

// The stages as a text table: a header line, then one line per stage, columns two spaces apart, names
// left-aligned and numbers right-aligned: stage, model, k, pass@1 %, cons@k %, format %, seconds, the
// pass@1 % of every task ("-" where a stage lacks it) and, when any stage has one, the Nim win rate %.
inline std::string stage_table(std::span<const stage_report> stages) {
  const auto columns = report_detail::table_columns(stages);
  std::vector<std::size_t> widths;
  for (const auto& c : columns) {
    std::size_t w = report_detail::display_width(c.header);
    for (const std::string& cell : c.cells) w = std::max(w, report_detail::display_width(cell));
    widths.push_back(w);
  }
  std::string out;
  const auto line = [&](auto&& cell_of) {
    std::string text;
    for (std::size_t c = 0; c < columns.size(); ++c) {
      const std::string& cell = cell_of(columns[c]);
      const std::string pad(widths[c] - report_detail::display_width(cell), ' ');
      text += (c == 0 ? "" : "  ") + (columns[c].numeric ? pad + cell : cell + pad);
    }
    out += text.erase(text.find_last_not_of(' ') + 1) + "\n";
  };
  line([](const report_detail::table_column& c) -> const std::string& { return c.header; });
  for (std::size_t r = 0; r < stages.size(); ++r)
    line([r](const report_detail::table_column& c) -> const std::string& { return c.cells[r]; });
  return out;
}

// Writes the report page atomically, by convention beside report.json with the extension .html: the
// members of `extra`, the stage table, a bar chart of pass@1 and the format rate, and for every stage its
// tasks, its training curves (the keys `curves` of its metrics file) and its first `samples_shown`
// samples, the chain of thought folded away apart from the highlighted answer. All text is escaped.
inline void write_report_html(const std::filesystem::path& path, std::span<const stage_report> stages,
                              const nlohmann::json& extra, std::size_t samples_shown = 4) {
  using namespace report_detail;
  check_extra(extra, path);
  check_stages(stages, path);
  const std::string title = "dsx R1 recipe report";
  std::string html = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + title +
                     "</title>\n<style>\n" + page_style + "</style>\n</head>\n<body>\n<h1>" + title + "</h1>\n";
  html += extra_html(extra);
  html += "<h2>Stages</h2>\n" + html_table(table_columns(stages));
  if (!stages.empty())
    html += "<h2>pass@1 and format rate</h2>\n<div class=\"plot\">\n" + bar_chart_svg(stages) + "</div>\n";
  for (const stage_report& s : stages) html += stage_html(s, samples_shown);
  html += "</body>\n</html>\n";
  write_text(path, html);
}

}  // namespace dsx::post
