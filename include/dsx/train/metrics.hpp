// What a training run shows: one JSON object per step in metrics.jsonl, a progress bar on a terminal, and
// an SVG plot of the curves at the end.
//
// metrics.jsonl survives resuming: opening it for a run that resumes after step S keeps the lines of
// steps 1..S and drops later ones (written after the checkpoint a crashed run resumes from), so the file
// always describes one run without repeats. Non-finite values are written as null (JSON has no NaN).
//
// The plot is hand-written SVG (no dependency): stacked panels sharing the step axis, each with its own
// linear or logarithmic y axis, a legend, and tick labels.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"
#include "dsx/io/safetensors.hpp"

namespace dsx {

// The lines of a metrics.jsonl file; a line that is not a JSON object is an error naming the line.
inline std::vector<nlohmann::json> read_metrics(const std::filesystem::path& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(path);
  if (!in) return lines;
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw error(path.string() + ":" + std::to_string(number) + ": not a JSON object (" + e.what() + ")");
    }
    if (!j.is_object()) throw error(path.string() + ":" + std::to_string(number) + ": not a JSON object");
    lines.push_back(std::move(j));
  }
  return lines;
}

class metrics_writer {
 public:
  // Opens `path` for a run that starts after step `resume_step` (0: a new run, the file is emptied).
  metrics_writer(std::filesystem::path path, std::int64_t resume_step) : path_(std::move(path)) {
    std::string kept;
    if (resume_step > 0)
      for (const auto& j : read_metrics(path_))
        if (j.contains("step") && j["step"].is_number_integer() && j["step"].get<std::int64_t>() <= resume_step)
          kept += j.dump() + "\n";
    const std::span<const std::byte> piece = std::as_bytes(std::span(kept));
    write_file_atomic(path_, std::span<const std::span<const std::byte>>(&piece, 1));
    out_.open(path_, std::ios::app);
    require(bool(out_), "metrics: cannot open '" + path_.string() + "' for appending");
  }

  // Appends one line and flushes it, so that a crash loses at most the line being written.
  void write(const nlohmann::json& line) {
    out_ << line.dump() << '\n';
    out_.flush();
    require(bool(out_), "metrics: cannot write to '" + path_.string() + "'");
  }

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::ofstream out_;
};

// A one-line progress bar redrawn in place on standard output; silent unless standard output is a terminal.
class progress_bar {
 public:
  progress_bar(std::int64_t total, bool enabled = ::isatty(STDOUT_FILENO) != 0) : total_(total), enabled_(enabled) {}
  bool enabled() const { return enabled_; }

  void update(std::int64_t done, const std::string& text) {
    if (!enabled_) return;
    constexpr int width = 30;
    const int filled = total_ > 0 ? int(std::clamp<std::int64_t>(done * width / total_, 0, width)) : width;
    std::string bar(std::size_t(filled), '#');
    bar.append(std::size_t(width - filled), '.');
    std::printf("\r[%s] %lld/%lld %s\x1b[K", bar.c_str(), static_cast<long long>(done), static_cast<long long>(total_),
                text.c_str());
    std::fflush(stdout);
  }
  // Ends the bar's line.
  void finish() {
    if (!enabled_) return;
    std::printf("\n");
    std::fflush(stdout);
  }

 private:
  std::int64_t total_;
  bool enabled_;
};

struct plot_series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite points are left out when drawn
};

struct plot_panel {
  std::string title;
  bool log_y = false;  // non-positive values are left out of a logarithmic panel
  std::vector<plot_series> series;
};

namespace plot_detail {

inline std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '&') out += "&amp;";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

inline std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

inline std::string coord(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

inline constexpr const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};

// Values k · step in [lo, hi] with step 1, 2 or 5 times a power of ten, about four intervals.
inline std::vector<double> nice_ticks(double lo, double hi) {
  const double raw = (hi - lo) / 4.0;
  const double base = std::pow(10.0, std::floor(std::log10(raw)));
  const double step = raw / base < 1.5 ? base : raw / base < 3.5 ? 2 * base : raw / base < 7.5 ? 5 * base : 10 * base;
  std::vector<double> out;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  return out;
}

// Five evenly spaced values from lo to hi (log axes, where round values of the exponent mean little).
inline std::vector<double> even_ticks(double lo, double hi) {
  std::vector<double> out;
  for (int t = 0; t <= 4; ++t) out.push_back(lo + (hi - lo) * t / 4.0);
  return out;
}

}  // namespace plot_detail

// Where an SVG plot goes: a file of its own declares the SVG namespace; SVG inlined in an HTML page is
// put in that namespace by the HTML parser and goes without, so the page names no URL.
enum class svg_for { file, html };

// The panels, stacked, as one <svg> element.
inline std::string svg_plot(const std::string& title, std::span<const plot_panel> panels, svg_for target) {
  using namespace plot_detail;
  constexpr double width = 800, panel_h = 220, left = 70, right = 170, top = 40, gap = 40;
  const double height = top + double(panels.size()) * (panel_h + gap) + 16;  // + the x-axis name
  const double plot_w = width - left - right;
  std::string svg = "<svg";
  if (target == svg_for::file) svg += " xmlns=\"http://www.w3.org/2000/svg\"";
  svg += " width=\"" + coord(width) + "\" height=\"" + coord(height) +
         "\" viewBox=\"0 0 " + coord(width) + " " + coord(height) + "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  svg += "<rect x=\"0\" y=\"0\" width=\"" + coord(width) + "\" height=\"" + coord(height) + "\" fill=\"white\"/>\n";
  svg += "<text x=\"" + coord(width / 2) + "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" + escape(title) + "</text>\n";

  for (std::size_t p = 0; p < panels.size(); ++p) {
    const plot_panel& panel = panels[p];
    const double y0 = top + double(p) * (panel_h + gap) + 15;
    const auto usable = [&](double x, double y) { return std::isfinite(x) && std::isfinite(y) && (!panel.log_y || y > 0); };
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (const auto& s : panel.series)
      for (const auto& [x, y] : s.points)
        if (usable(x, y)) {
          const double v = panel.log_y ? std::log10(y) : y;
          xmin = std::min(xmin, x), xmax = std::max(xmax, x), ymin = std::min(ymin, v), ymax = std::max(ymax, v);
        }
    svg += "<g>\n<text x=\"" + coord(left) + "\" y=\"" + coord(y0 - 5) + "\" font-size=\"13\">" + escape(panel.title) +
           (panel.log_y ? " (log scale)" : "") + "</text>\n";
    svg += "<rect x=\"" + coord(left) + "\" y=\"" + coord(y0) + "\" width=\"" + coord(plot_w) + "\" height=\"" +
           coord(panel_h) + "\" fill=\"none\" stroke=\"#444\"/>\n";
    if (xmin > xmax) {
      svg += "<text x=\"" + coord(left + plot_w / 2) + "\" y=\"" + coord(y0 + panel_h / 2) +
             "\" text-anchor=\"middle\">no data</text>\n</g>\n";
      continue;
    }
    // A range too narrow for its magnitude (one value, or values equal up to rounding) is widened, so
    // that the ticks below advance.
    const auto flat = [](double lo, double hi) { return hi - lo <= 1e-9 * std::max(std::abs(lo), std::abs(hi)); };
    if (flat(xmin, xmax)) xmax = xmin + std::max(1.0, std::abs(xmin) * 0.1);
    if (flat(ymin, ymax)) ymax = ymin + (ymin == 0 ? 1 : std::abs(ymin) * 0.1), ymin -= (ymax - ymin) * 0.5;
    const auto px = [&](double x) { return left + (x - xmin) / (xmax - xmin) * plot_w; };
    const auto py = [&](double v) { return y0 + panel_h - (v - ymin) / (ymax - ymin) * panel_h; };
    // Grid lines and labels at round values (1, 2 or 5 times a power of ten); a log axis gets five
    // evenly spaced decades-or-fractions labelled with three significant digits.
    for (double v : panel.log_y ? even_ticks(ymin, ymax) : nice_ticks(ymin, ymax)) {
      svg += "<line x1=\"" + coord(left) + "\" y1=\"" + coord(py(v)) + "\" x2=\"" + coord(left + plot_w) + "\" y2=\"" +
             coord(py(v)) + "\" stroke=\"#ddd\"/>\n";
      svg += "<text x=\"" + coord(left - 4) + "\" y=\"" + coord(py(v) + 4) + "\" text-anchor=\"end\">" +
             number(panel.log_y ? std::pow(10.0, v) : v) + "</text>\n";
    }
    for (double x : nice_ticks(xmin, xmax))
      svg += "<text x=\"" + coord(px(x)) + "\" y=\"" + coord(y0 + panel_h + 14) + "\" text-anchor=\"middle\">" +
             number(x) + "</text>\n";
    for (std::size_t s = 0; s < panel.series.size(); ++s) {
      const plot_series& series = panel.series[s];
      const char* color = colors[s % std::size(colors)];
      std::string points;
      for (const auto& [x, y] : series.points)
        if (usable(x, y)) points += coord(px(x)) + "," + coord(py(panel.log_y ? std::log10(y) : y)) + " ";
      if (!points.empty())
        svg += "<polyline fill=\"none\" stroke=\"" + std::string(color) + "\" stroke-width=\"1.5\" points=\"" + points + "\"/>\n";
      const double ly = y0 + 12 + double(s) * 16;
      svg += "<line x1=\"" + coord(left + plot_w + 10) + "\" y1=\"" + coord(ly - 4) + "\" x2=\"" + coord(left + plot_w + 30) +
             "\" y2=\"" + coord(ly - 4) + "\" stroke=\"" + color + "\" stroke-width=\"2\"/>\n";
      svg += "<text x=\"" + coord(left + plot_w + 35) + "\" y=\"" + coord(ly) + "\">" + escape(series.name) + "</text>\n";
    }
    svg += "</g>\n";
  }
  svg += "<text x=\"" + coord(left + plot_w / 2) + "\" y=\"" + coord(height - 6) + "\" text-anchor=\"middle\">step</text>\n";
  svg += "</svg>\n";
  return svg;
}

// Writes the panels, stacked, as one SVG file (atomically).
inline void write_svg_plot(const std::filesystem::path& path, const std::string& title, std::span<const plot_panel> panels) {
  const std::string svg = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + svg_plot(title, panels, svg_for::file);
  const std::span<const std::byte> piece = std::as_bytes(std::span(svg));
  write_file_atomic(path, std::span<const std::span<const std::byte>>(&piece, 1));
}

struct metric_panel {
  const char* title;
  bool log_y;
  std::vector<const char*> keys;
};

// Panels of metrics.jsonl keys against "step", written as an SVG file: a metric_panel names its title,
// whether its y axis is logarithmic, and the keys it plots (lines without a numeric value are left out).
inline void plot_metrics(const std::filesystem::path& metrics, const std::filesystem::path& svg, const std::string& title,
                         std::span<const metric_panel> panels) {
  const auto lines = read_metrics(metrics);
  std::vector<plot_panel> out;
  for (const metric_panel& p : panels) {
    plot_panel panel{p.title, p.log_y, {}};
    for (const char* key : p.keys) {
      plot_series s{key, {}};
      for (const auto& j : lines)
        if (j.contains("step") && j.contains(key) && j[key].is_number())
          s.points.emplace_back(j["step"].get<double>(), j[key].get<double>());
      panel.series.push_back(std::move(s));
    }
    out.push_back(std::move(panel));
  }
  write_svg_plot(svg, title, out);
}

// The curves of a pre-training metrics.jsonl as an SVG: the losses (log scale), the balance loss, the
// learning rate, the gradient norm (log scale) and the max load ratio.
inline void plot_training_metrics(const std::filesystem::path& metrics, const std::filesystem::path& svg,
                                  const std::string& title) {
  const metric_panel panels[] = {{"losses", true, {"loss", "lm_loss", "mtp_loss"}},
                                 {"balance loss", false, {"balance_loss"}},
                                 {"learning rate", false, {"lr"}},
                                 {"gradient norm (before clipping)", true, {"grad_norm"}},
                                 {"max load ratio (max / mean expert load)", false, {"max_load_ratio"}}};
  plot_metrics(metrics, svg, title, panels);
}

}  // namespace dsx
