// dsx-bench-gpu: the CUDA backend's benchmarks (benchmarks/gpu/README.md).
//
// The parent process parses the command line, never calls CUDA itself, and runs each section in a
// child process (fork) under a time limit carved from --budget. A child reports through a pipe
// (bench.cuh, `channel`); a section that fails, crashes or runs out of time is reported as such and the
// next one runs. The ceilings measured by the first section are handed to the later children. After
// every section the report is rewritten: markdown on stdout (targets last) and in
// <out>/<gpu-name>.md (targets first).
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include "bench.cuh"
#include "dsx/config/presets.hpp"

#ifndef DSX_BENCH_DEFAULT_OUT
#define DSX_BENCH_DEFAULT_OUT "benchmarks/results"
#endif

namespace dsx::bench {

// ---------------------------------------------------------------------------------------------------
// Child side.

void channel::send(std::string line) const {
  for (char& ch : line)
    if (ch == '\n' || ch == '\r') ch = ' ';
  line += '\n';
  const char* p = line.data();
  std::size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the parent is gone; nothing left to report to
    p += n;
    left -= std::size_t(n);
  }
}

void describe_device(const section_context& ctx) {
  cudaDeviceProp p{};
  DSX_CUDA_CHECK(cudaGetDeviceProperties(&p, ctx.opt.device));
  int driver = 0, runtime = 0;
  DSX_CUDA_CHECK(cudaDriverGetVersion(&driver));
  DSX_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  ctx.out.text("gpu_name", p.name);
  ctx.out.text("gpu",
               strf("%s, compute capability %d.%d, %d SMs, %.1f GiB, L2 %.0f MiB%s", p.name, p.major, p.minor,
                    p.multiProcessorCount, double(p.totalGlobalMem) / (1 << 30), double(p.l2CacheSize) / (1 << 20),
                    p.major == 9 && p.minor == 0 ? "" : " (this build targets sm_90)"));
  ctx.out.text("versions", strf("driver %d.%d, runtime %d.%d, cuBLASLt %zu", driver / 1000, driver % 1000 / 10,
                                runtime / 1000, runtime % 1000 / 10, cublasLtGetVersion()));
}

namespace {

// ---------------------------------------------------------------------------------------------------
// Sections and their results.

struct section_spec {
  std::string name, title;
  double share;  // of the budget
  void (*run)(const section_context&);
};

const std::vector<section_spec>& all_sections() {
  static const std::vector<section_spec> s{
      {"ceilings", "1. Ceilings", 0.12, run_ceilings},
      {"gemm", "2. GEMM throughput on the model shapes", 0.27, run_gemm},
      {"experts", "2b. Routed-expert GEMMs of one MoE layer (gpu_1b)", 0.05, run_experts},
      {"decode", "3. MLA decode bandwidth", 0.12, run_decode},
      {"attention", "3b. Causal attention for training", 0.08, run_attention},
      {"train", "4. Training step (gpu_1b)", 0.38, run_train_bf16},
  };
  return s;
}
const section_spec train_f32_spec{"train-f32", "4b. Training step (gpu_1b), f32 fallback", 0.0, run_train_f32};

struct section_result {
  const section_spec* spec = nullptr;
  std::vector<std::string> lines;
  std::map<std::string, double> numbers;
  std::map<std::string, std::string> texts;
  std::string status;  // empty = completed
  double seconds = 0, limit = 0;
  bool ok() const { return status.empty(); }
};

// Runs one section in a child process, with `limit_s` seconds of wall time.
section_result run_child(const section_spec& spec, const options& opt, const ceilings& ceil, double limit_s) {
  section_result r;
  r.spec = &spec;
  r.limit = limit_s;
  int fds[2];
  if (::pipe(fds) != 0) {
    r.status = std::string("pipe() failed: ") + std::strerror(errno);
    return r;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  const auto start = clock_type::now();
  const pid_t pid = ::fork();
  if (pid < 0) {
    r.status = std::string("fork() failed: ") + std::strerror(errno);
    ::close(fds[0]);
    ::close(fds[1]);
    return r;
  }
  if (pid == 0) {
    ::close(fds[0]);
    const channel out(fds[1], spec.name);
    const section_context ctx{opt, ceil, out,
                              start + std::chrono::milliseconds(std::int64_t(std::max(0.0, limit_s - 3.0) * 1000))};
    int code = 0;
    try {
      spec.run(ctx);
    } catch (const std::exception& e) {
      out.log(std::string("error: ") + e.what());
      out.text("error", e.what());
      code = 1;
    }
    std::fflush(stdout);
    ::_exit(code);
  }
  ::close(fds[1]);
  std::string pending;
  auto take_line = [&](const std::string& line) {
    if (line.size() < 2) return;
    const std::string body = line.substr(2);
    if (line[0] == 'M') {
      r.lines.push_back(body);
    } else if (line[0] == 'K' || line[0] == 'S') {
      const auto space = body.find(' ');
      const std::string key = body.substr(0, space), value = space == std::string::npos ? "" : body.substr(space + 1);
      if (line[0] == 'K')
        r.numbers[key] = std::strtod(value.c_str(), nullptr);
      else
        r.texts[key] = value;
    }
  };
  bool timed_out = false;
  for (;;) {
    const double left = limit_s - std::chrono::duration<double>(clock_type::now() - start).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd pfd{fds[0], POLLIN, 0};
    const int ready = ::poll(&pfd, 1, int(std::min(left, 1.0) * 1000) + 1);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    char buf[4096];
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the child closed its end: it exited
    pending.append(buf, std::size_t(n));
    for (std::size_t nl; (nl = pending.find('\n')) != std::string::npos;) {
      take_line(pending.substr(0, nl));
      pending.erase(0, nl + 1);
    }
  }
  if (timed_out) ::kill(pid, SIGKILL);
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  ::close(fds[0]);
  r.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  if (timed_out)
    r.status = strf("stopped at its time limit of %.0f s; the rows above are what it finished", limit_s);
  else if (WIFSIGNALED(wstatus))
    r.status = strf("crashed with signal %d (%s)", WTERMSIG(wstatus), strsignal(WTERMSIG(wstatus)));
  else if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) != 0)
    r.status = "failed: " + (r.texts.count("error") ? r.texts["error"] : strf("exit code %d", WEXITSTATUS(wstatus)));
  return r;
}

// ---------------------------------------------------------------------------------------------------
// The report.

struct report {
  std::string command, date, out_dir;
  double budget = 0;
  std::vector<section_result> sections;

  const section_result* find(const std::string& name) const {
    for (const auto& s : sections)
      if (s.spec->name == name) return &s;
    return nullptr;
  }
  std::string text(const std::string& key) const {
    for (const auto& s : sections)
      if (auto it = s.texts.find(key); it != s.texts.end()) return it->second;
    return "";
  }
  // A number from the first section in `names` that completed and has it, else from the first that has it.
  const double* number(std::initializer_list<const char*> names, const std::string& key) const {
    const double* partial = nullptr;
    for (const char* name : names)
      if (const auto* s = find(name))
        if (auto it = s->numbers.find(key); it != s->numbers.end()) {
          if (s->ok()) return &it->second;
          if (!partial) partial = &it->second;
        }
    return partial;
  }

  std::string file_name() const {
    std::string name = text("gpu_name"), out;
    for (char ch : name) {
      const bool keep = std::isalnum(static_cast<unsigned char>(ch));
      if (keep)
        out += char(std::tolower(static_cast<unsigned char>(ch)));
      else if (!out.empty() && out.back() != '-')
        out += '-';
    }
    while (!out.empty() && out.back() == '-') out.pop_back();
    return (out.empty() ? std::string("unknown-gpu") : out) + ".md";
  }

  std::vector<std::string> header() const {
    const std::string gpu = text("gpu_name");
    std::vector<std::string> h{"# dsx GPU benchmark: " + (gpu.empty() ? std::string("no device") : gpu), ""};
    h.push_back("- date: " + date);
    h.push_back("- GPU: " +
                (text("gpu").empty() ? std::string("unknown (no section reached the device)") : text("gpu")));
    h.push_back("- software: " + (text("versions").empty() ? std::string("unknown") : text("versions")) +
                strf(", built with nvcc %d.%d", __CUDACC_VER_MAJOR__, __CUDACC_VER_MINOR__));
    h.push_back("- command: `" + command + "`");
    double total = 0;
    for (const auto& s : sections) total += s.seconds;
    h.push_back(strf("- wall time of the sections: %.0f s (budget %.0f s)", total, budget));
    h.push_back("");
    return h;
  }

  std::vector<std::string> targets() const {
    std::vector<std::string> t{"## Targets (H100)", "", "| quantity | measured | target | ratio to target | |",
                               "|---|---|---|---|---|"};
    auto row = [&](const std::string& what, const double* v, const char* unit, double goal, const char* goal_text) {
      if (!v) {
        t.push_back("| " + what + " | not measured | " + goal_text + " | | |");
        return;
      }
      const double ratio = *v / goal;
      t.push_back(strf("| %s | %.1f %s | %s | %.2f | %s |", what.c_str(), *v, unit, goal_text, ratio,
                       ratio >= 1 ? "met" : "not met"));
    };
    row("bf16 GEMM TFLOP/s, large model shapes (all dims ≥ 4096), total FLOPs / total time",
        number({"gemm"}, "gemm_large_tflops"), "TFLOP/s", 700, "≥ 700 TFLOP/s");
    row("bf16 GEMM TFLOP/s, large model shapes, slowest case", number({"gemm"}, "gemm_large_min_tflops"), "TFLOP/s",
        700, "≥ 700 TFLOP/s");
    // The FP8 row: the faster of the two implementations gemm_fp8_block has on Hopper.
    const double* lt = number({"gemm"}, "fp8_lt_speedup_large");
    const double* wg = number({"gemm"}, "fp8_wgmma_speedup_large");
    const bool lt_best = lt && (!wg || *lt >= *wg);
    if (lt || wg)
      row(std::string("FP8 GEMM TFLOP/s / bf16 GEMM TFLOP/s, large forward shapes (") +
              (lt_best ? "cuBLASLt block scaling" : "wgmma kernel") + ")",
          lt_best ? lt : wg, "×", 1.6, "≥ 1.6×");
    else
      t.push_back("| FP8 GEMM TFLOP/s / bf16 GEMM TFLOP/s, large forward shapes | not measured: " +
                  (text("fp8_refusal").empty() ? std::string("section 2 timed no FP8 GEMM")
                                               : "cuBLASLt refused (" + text("fp8_refusal") + ")") +
                  "; the wgmma kernel did not run | ≥ 1.6× | | |");
    const std::string precision = text("train_precision");
    row("training MFU, gpu_1b" + (precision.empty() ? std::string() : " (" + precision + ")") +
            ", of the measured bf16 ceiling",
        number({"train", "train-f32"}, "train_mfu_pct"), "%", 40, "≥ 40%");
    row("MLA decode GB/s as % of measured copy bandwidth, worst case", number({"decode"}, "decode_min_pct"), "%", 80,
        "≥ 80%");
    t.push_back("");
    auto info = [&](const char* what, const double* v, const char* format) {
      t.push_back(std::string("- ") + what + ": " + (v ? strf(format, *v) : std::string("not measured")));
    };
    info("bf16 matmul ceiling (8192³, best transpose case)", number({"ceilings"}, "bf16_tflops"), "%.0f TFLOP/s");
    info("copy bandwidth (device to device, read + write)", number({"ceilings"}, "copy_gbs"), "%.0f GB/s");
    info("causal attention forward, gpu_1b batch (bf16, qk 192, v 128)",
         number({"attention"}, "attention_forward_tflops"), "%.0f TFLOP/s");
    info("causal attention backward, gpu_1b batch", number({"attention"}, "attention_backward_tflops"),
         "%.0f TFLOP/s");
    info("MLA decode time at the roofline (max of bytes / copy bandwidth and FLOPs / bf16 ceiling) / time taken, "
         "worst case",
         number({"decode"}, "decode_min_roofline_pct"), "%.0f %%");
    info("routed-expert GEMMs per training step, estimated from one balanced MoE layer (section 2b)",
         number({"experts"}, "experts_step_ms_balanced"), "%.1f ms");
    info("training throughput", number({"train", "train-f32"}, "train_tokens_per_s"), "%.0f tokens/s");
    info("training step (median)", number({"train", "train-f32"}, "train_step_ms"), "%.0f ms");
    t.push_back("");
    return t;
  }

  std::vector<std::string> body() const {
    std::vector<std::string> b;
    for (const auto& s : sections) {
      b.push_back("## " + s.spec->title);
      b.push_back("");
      b.insert(b.end(), s.lines.begin(), s.lines.end());
      b.push_back("");
      b.push_back(s.ok() ? strf("_%.1f s of a %.0f s limit._", s.seconds, s.limit)
                         : strf("> **Section not completed** (%.1f s): %s", s.seconds, s.status.c_str()));
      b.push_back("");
    }
    return b;
  }

  // Writes the file (targets first); returns its path or an error text.
  std::string write_file() const {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    if (ec) return "cannot create " + out_dir + ": " + ec.message();
    const fs::path path = fs::path(out_dir) / file_name();
    std::ofstream f(path);
    for (const auto part : {&report::header, &report::targets, &report::body})
      for (const auto& line : (this->*part)()) f << line << '\n';
    if (!f) return "cannot write " + path.string();
    return path.string();
  }
};

// ---------------------------------------------------------------------------------------------------
// Command line.

constexpr const char* usage = R"(usage: dsx-bench-gpu [options]

Benchmarks the dsx CUDA backend on one GPU and writes a markdown report.

  --sections LIST     comma-separated, from ceilings,gemm,experts,decode,attention,train (default: all, in this order);
                      later sections compare with the ceilings only when "ceilings" runs
  --out DIR           directory of the report <gpu-name>.md (default: $DSX_BENCH_OUT, else
                      the source tree's benchmarks/results)
  --device N          CUDA device (default 0)
  --gemm-tokens LIST  token counts M of the GEMM shapes (default 4096,16384)
  --train-batch N     sequences per training step (default 8)
  --train-seq N       tokens per sequence (default 2048, at most gpu_1b's 4096 positions)
  --train-steps N     timed training steps after one warm-up step (default 5)
  --budget SECONDS    wall time of all sections together (default 170)
  --list              print what would run, without touching the GPU
  --help              this text
)";

std::int64_t parse_count(const std::string& option, const std::string& value, std::int64_t lo, std::int64_t hi) {
  std::size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || value.empty() || v < lo || v > hi)
    throw error(option + ": expected a whole number in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                "], got \"" + value + "\"");
  return v;
}

std::vector<std::string> split_list(const std::string& option, const std::string& value) {
  std::vector<std::string> items;
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = value.find(',', start);
    items.push_back(value.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (items.back().empty()) throw error(option + ": empty item in the list \"" + value + "\"");
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return items;
}

options parse(int argc, char** argv, bool* help) {
  options opt;
  *help = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i], value;
    bool has_value = false;
    if (const auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    auto next = [&]() -> std::string {
      if (has_value) return value;
      if (i + 1 >= argc) throw error(arg + ": missing value");
      return argv[++i];
    };
    auto no_value = [&] {
      if (has_value) throw error(arg + ": takes no value, got \"" + value + "\"");
    };
    if (arg == "--help" || arg == "-h") {
      no_value();
      *help = true;
    } else if (arg == "--list") {
      no_value();
      opt.list = true;
    } else if (arg == "--sections") {
      const std::string v = next();
      for (const auto& name : split_list(arg, v)) {
        bool known = false;
        for (const auto& s : all_sections()) known = known || s.name == name;
        if (!known)
          throw error(arg + ": unknown section \"" + name + "\" (known: ceilings, gemm, decode, attention, train)");
        for (const auto& seen : opt.sections)
          if (seen == name) throw error(arg + ": section \"" + name + "\" given twice");
        opt.sections.push_back(name);
      }
    } else if (arg == "--out") {
      opt.out_dir = next();
      if (opt.out_dir.empty()) throw error("--out: empty directory name");
    } else if (arg == "--device") {
      opt.device = int(parse_count(arg, next(), 0, 1023));
    } else if (arg == "--gemm-tokens") {
      opt.gemm_tokens.clear();
      for (const auto& item : split_list(arg, next())) opt.gemm_tokens.push_back(parse_count(arg, item, 1, 1 << 20));
    } else if (arg == "--train-batch") {
      opt.train_batch = parse_count(arg, next(), 1, 4096);
    } else if (arg == "--train-seq") {
      opt.train_seq = parse_count(arg, next(), 2, presets::gpu_1b.max_positions);
    } else if (arg == "--train-steps") {
      opt.train_steps = int(parse_count(arg, next(), 1, 1000));
    } else if (arg == "--budget") {
      opt.budget_s = double(parse_count(arg, next(), 10, 3600));
    } else {
      throw error("unknown option \"" + arg + "\" (see --help)");
    }
  }
  if (opt.sections.empty())
    for (const auto& s : all_sections()) opt.sections.push_back(s.name);
  if (opt.out_dir.empty()) {
    const char* env = std::getenv("DSX_BENCH_OUT");
    opt.out_dir = env && *env ? env : DSX_BENCH_DEFAULT_OUT;
  }
  return opt;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

}  // namespace

}  // namespace dsx::bench

int main(int argc, char** argv) {
  using namespace dsx::bench;
  options opt;
  bool help = false;
  try {
    opt = parse(argc, argv, &help);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsx-bench-gpu: %s\n", e.what());
    return 2;
  }
  if (help) {
    std::fputs(usage, stdout);
    return 0;
  }

  // Time limits: each requested section gets its share of the budget plus what earlier ones left.
  std::vector<const section_spec*> plan;
  double shares = 0;
  for (const auto& name : opt.sections)
    for (const auto& s : all_sections())
      if (s.name == name) {
        plan.push_back(&s);
        shares += s.share;
      }

  report rep;
  rep.budget = opt.budget_s;
  rep.out_dir = opt.out_dir;
  rep.date = utc_now();
  for (int i = 0; i < argc; ++i) rep.command += (i ? " " : "") + std::string(argv[i]);

  if (opt.list) {
    std::printf("sections and time limits (budget %.0f s, unused time passes on):\n", opt.budget_s);
    for (const auto* s : plan)
      std::printf("  %-9s %5.0f s  %s\n", s->name.c_str(), opt.budget_s * s->share / shares, s->title.c_str());
    std::printf("report: %s/<gpu-name>.md\n", opt.out_dir.c_str());
    try {
      for (const auto* s : plan) {
        std::printf("\n%s:\n", s->title.c_str());
        std::vector<std::string> lines;
        if (s->name == "ceilings")
          lines = {"cudaMemcpyAsync device to device, 1 GiB", "bf16 GEMM 8192³, transposes NN, NT, TN, TT"};
        else if (s->name == "gemm")
          lines = describe_gemm_plan(opt);
        else if (s->name == "experts")
          lines = describe_experts_plan();
        else if (s->name == "decode")
          lines = describe_decode_plan();
        else if (s->name == "attention")
          lines = describe_attention_plan();
        else
          lines = describe_train_plan(opt);
        for (const auto& l : lines) std::printf("  %s\n", l.c_str());
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "dsx-bench-gpu: %s\n", e.what());
      return 2;
    }
    return 0;
  }

  ceilings ceil;
  double allotted = 0, used = 0;
  bool all_ok = true;
  std::string written;
  auto rewrite = [&] { written = rep.write_file(); };
  for (const auto* s : plan) {
    allotted += opt.budget_s * s->share / shares;
    const double limit = std::max(5.0, allotted - used);
    std::printf("== %s (limit %.0f s)\n", s->title.c_str(), limit);
    rep.sections.push_back(run_child(*s, opt, ceil, limit));
    const auto& r = rep.sections.back();
    used += r.seconds;
    all_ok = all_ok && r.ok();
    if (!r.ok()) std::printf("== %s: %s\n", s->name.c_str(), r.status.c_str());
    if (s->name == "ceilings") {
      if (auto it = r.numbers.find("bf16_tflops"); it != r.numbers.end()) ceil.bf16_tflops = it->second;
      if (auto it = r.numbers.find("copy_gbs"); it != r.numbers.end()) ceil.copy_gbs = it->second;
    }
    // The f32 model when the bf16 one could not train, if time is left.
    if (s->name == "train" && !r.ok()) {
      const double left = opt.budget_s - used;
      if (left >= 20) {
        std::printf("== %s (limit %.0f s)\n", train_f32_spec.title.c_str(), left);
        rep.sections.push_back(run_child(train_f32_spec, opt, ceil, left));
        used += rep.sections.back().seconds;
      } else {
        std::printf("== no time left for the f32 training fallback (%.0f s)\n", left);
      }
    }
    rewrite();
  }

  std::printf("\n");
  for (const auto part : {&report::header, &report::body, &report::targets})
    for (const auto& line : (rep.*part)()) std::printf("%s\n", line.c_str());
  std::printf("report written to: %s\n", written.c_str());
  return all_ok ? 0 : 1;
}
