// Shared pieces of dsx-bench-gpu (benchmarks/gpu/README.md): the options, the channel through which a
// section's child process reports, device timing with CUDA events, random fills and the checks each
// section runs on its outputs before it times anything.
//
// Every section runs in a child process (main.cu), so a fault that poisons the CUDA context, a crash or
// a hang ends that section only. A section reports line by line through a pipe; what it sent before it
// stopped is kept.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/arena.hpp"
#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::bench {

// CUDA's headers declare a global namespace `cuda`; the backend is always spelled through this alias.
using cuda_backend = backend::cuda;
using device_memory = arena<cuda_backend>;
using clock_type = std::chrono::steady_clock;

// The command line (main.cu parses it; defaults here are the documented ones).
struct options {
  int device = 0;
  std::vector<std::string> sections;  // in run order; empty = all
  std::vector<std::int64_t> gemm_tokens{4096, 16384};
  std::int64_t train_batch = 8, train_seq = 2048;
  int train_steps = 5;    // timed steps after one warm-up step
  double budget_s = 170;  // wall time of all sections together
  std::string out_dir;
  bool list = false;  // print the plan and exit without touching the GPU
};

// Measured by the ceilings section and handed to the later ones; 0 = not measured.
struct ceilings {
  double bf16_tflops = 0;  // best of the four transpose cases of an 8192³ bf16 GEMM
  double copy_gbs = 0;     // device-to-device copy, bytes read + written per second
};

// printf into a std::string.
inline std::string strf(const char* format, ...) __attribute__((format(printf, 1, 2)));
inline std::string strf(const char* format, ...) {
  va_list args;
  va_start(args, format);
  va_list again;
  va_copy(again, args);
  const int n = std::vsnprintf(nullptr, 0, format, args);
  va_end(args);
  std::string s(std::size_t(n > 0 ? n : 0), '\0');
  if (n > 0) std::vsnprintf(s.data(), s.size() + 1, format, again);
  va_end(again);
  return s;
}

// The report channel of one section (a pipe to the parent process). Lines:
//   "M <text>"         one markdown line of the section's body
//   "K <key> <value>"  a number the summary uses (ceilings, headline results)
//   "S <key> <text>"   a string (the device description, the training precision)
class channel {
 public:
  channel(int fd, std::string section) : fd_(fd), section_(std::move(section)) {}
  void md(const std::string& line) const { send("M " + line); }
  void number(const std::string& key, double value) const { send(strf("K %s %.9g", key.c_str(), value)); }
  void text(const std::string& key, const std::string& value) const { send("S " + key + " " + value); }
  // A progress line on stdout, prefixed with the section name.
  void log(const std::string& line) const {
    std::printf("[%s] %s\n", section_.c_str(), line.c_str());
    std::fflush(stdout);
  }

 private:
  void send(std::string line) const;
  int fd_;
  std::string section_;
};

// What a section function receives.
struct section_context {
  const options& opt;
  ceilings ceil;
  channel out;
  clock_type::time_point deadline;  // the parent kills the section at its limit; this is a little earlier
  double seconds_left() const { return std::chrono::duration<double>(deadline - clock_type::now()).count(); }
};

// Sections (ceilings.cu, gemm_shapes.cu, experts.cu, mla_decode.cu, attention.cu, train.cu). Each throws
// dsx::error (CUDA failures included) when it cannot go on; main.cu reports the message.
void run_ceilings(const section_context& ctx);
void run_gemm(const section_context& ctx);
void run_experts(const section_context& ctx);
void run_decode(const section_context& ctx);
void run_attention(const section_context& ctx);
void run_train_bf16(const section_context& ctx);
void run_train_f32(const section_context& ctx);

// Host-only descriptions for --list (no CUDA call).
std::vector<std::string> describe_gemm_plan(const options& opt);
std::vector<std::string> describe_experts_plan();
std::vector<std::string> describe_decode_plan();
std::vector<std::string> describe_attention_plan();
std::vector<std::string> describe_train_plan(const options& opt);

// ---------------------------------------------------------------------------------------------------
// Device description: sends S gpu_name, S gpu (one line of properties), S versions; sets the device.

void describe_device(const section_context& ctx);

// ---------------------------------------------------------------------------------------------------
// Timing.

class device_event {
 public:
  device_event() { DSX_CUDA_CHECK(cudaEventCreate(&event_)); }
  device_event(const device_event&) = delete;
  device_event& operator=(const device_event&) = delete;
  ~device_event() { cudaEventDestroy(event_); }
  void record(cudaStream_t s) { DSX_CUDA_CHECK(cudaEventRecord(event_, s)); }
  // Milliseconds from `start` to this event; waits for this event.
  float since(const device_event& start) {
    DSX_CUDA_CHECK(cudaEventSynchronize(event_));
    float ms = 0;
    DSX_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
    return ms;
  }

 private:
  cudaEvent_t event_ = nullptr;
};

struct timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;  // per call
  int groups = 0, calls_per_group = 0;
  double spread() const { return median_ms > 0 ? (max_ms - min_ms) / median_ms : 0; }
};

inline double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Device time of one `call(i)` on be's stream (i counts the calls, for rotating among buffers). Two
// warm-up calls, one call timed alone to size the groups, then groups of calls between two events: a
// group lasts at least `group_ms` (so event resolution and launch gaps stay small), and there are
// between min_groups and max_groups of them, about `target_ms` in all. Per-call median, min and max over
// the groups.
template <class F>
timing time_device(cuda_backend& be, F&& call, double target_ms = 40, int min_groups = 3, int max_groups = 15,
                   double group_ms = 1.0) {
  std::int64_t i = 0;
  call(i++);
  call(i++);
  device_event start, stop;
  start.record(be.stream());
  call(i++);
  stop.record(be.stream());
  const double single = std::max(double(stop.since(start)), 1e-3);
  timing t;
  t.calls_per_group = int(std::clamp(std::ceil(group_ms / single), 1.0, 10000.0));
  t.groups =
      int(std::clamp(std::floor(target_ms / (single * t.calls_per_group)), double(min_groups), double(max_groups)));
  std::vector<double> per_call;
  for (int g = 0; g < t.groups; ++g) {
    start.record(be.stream());
    for (int c = 0; c < t.calls_per_group; ++c) call(i++);
    stop.record(be.stream());
    per_call.push_back(double(stop.since(start)) / t.calls_per_group);
  }
  t.median_ms = median_of(per_call);
  t.min_ms = *std::min_element(per_call.begin(), per_call.end());
  t.max_ms = *std::max_element(per_call.begin(), per_call.end());
  return t;
}

// ---------------------------------------------------------------------------------------------------
// Random data (never zeros: zeros hide unwritten outputs and can run faster than real data) and checks.

namespace detail {

__device__ inline std::uint64_t mix64(std::uint64_t x) {  // SplitMix64's finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Element i of the stream `seed`: N(mean, std²) by Box-Muller on two 32-bit halves of one hash.
template <class T>
__global__ void fill_normal_kernel(T* p, std::int64_t n, std::uint64_t seed, float mean, float std) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const std::uint64_t h = mix64(seed * 0xd1b54a32d192ed03ull ^ std::uint64_t(i));
    const float u1 = (float(std::uint32_t(h >> 32)) + 1.0f) * 2.3283064e-10f;  // (0, 1]
    const float u2 = float(std::uint32_t(h)) * 2.3283064e-10f;                 // [0, 1)
    p[i] = T(mean + std * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
  }
}

template <class T>
__global__ void fill_value_kernel(T* p, std::int64_t n, float value) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    p[i] = T(value);
}

template <class T>
__global__ void count_nonfinite_kernel(const T* p, std::int64_t n, unsigned long long* count) {
  unsigned long long local = 0;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    local += isfinite(float(p[i])) ? 0 : 1;
  if (local) atomicAdd(count, local);
}

inline unsigned grid_of(std::int64_t n) { return unsigned(std::clamp<std::int64_t>((n + 255) / 256, 1, 65536)); }

}  // namespace detail

template <class T>
void fill_normal(cuda_backend& be, T* p, std::int64_t n, std::uint64_t seed, float mean = 0.0f, float std = 1.0f) {
  if (n <= 0) return;
  detail::fill_normal_kernel<<<detail::grid_of(n), 256, 0, be.stream()>>>(p, n, seed, mean, std);
  DSX_CUDA_CHECK_LAUNCH("fill_normal_kernel");
}

template <class T>
void fill_value(cuda_backend& be, T* p, std::int64_t n, float value) {
  if (n <= 0) return;
  detail::fill_value_kernel<<<detail::grid_of(n), 256, 0, be.stream()>>>(p, n, value);
  DSX_CUDA_CHECK_LAUNCH("fill_value_kernel");
}

// Elements of p[0, n) that are NaN or infinite (waits for the stream).
template <class T>
std::int64_t count_nonfinite(cuda_backend& be, const T* p, std::int64_t n) {
  device_memory counter(be, sizeof(unsigned long long));
  auto* c = reinterpret_cast<unsigned long long*>(counter.data());
  be.fill_zero(c, sizeof(unsigned long long));
  if (n > 0) {
    detail::count_nonfinite_kernel<<<detail::grid_of(n), 256, 0, be.stream()>>>(p, n, c);
    DSX_CUDA_CHECK_LAUNCH("count_nonfinite_kernel");
  }
  unsigned long long host = 0;
  be.download(&host, c, sizeof host);
  return std::int64_t(host);
}

namespace detail {
template <class T>
__global__ void gather_strided_kernel(T* dst, const T* src, std::int64_t count, std::int64_t stride) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < count;
       i += std::int64_t(gridDim.x) * blockDim.x)
    dst[i] = src[i * stride];
}
}  // namespace detail

// The `count` elements p[0], p[stride], p[2·stride], ... of device memory, as f64 on the host (gathered
// on be's stream, then downloaded; waits).
template <class T>
std::vector<double> download_strided(cuda_backend& be, const T* p, std::int64_t count, std::int64_t stride) {
  std::vector<T> raw(static_cast<std::size_t>(count));
  if (count > 0) {
    device_memory packed(be, std::size_t(count) * sizeof(T));
    detail::gather_strided_kernel<<<detail::grid_of(count), 256, 0, be.stream()>>>(reinterpret_cast<T*>(packed.data()),
                                                                                   p, count, stride);
    DSX_CUDA_CHECK_LAUNCH("gather_strided_kernel");
    be.download(raw.data(), packed.data(), raw.size() * sizeof(T));
  }
  std::vector<double> out(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) out[i] = double(float(raw[i]));
  return out;
}

// One element `got` of a GEMM result against its f64 reference ref = beta·c_before + Σ a·b. Passes when
// |got − ref| ≤ tol = 2⁻⁷|ref| + 1e-4 Σ|a·b| (bf16 rounding of the result plus f32 accumulation), plus
// 2⁻⁸|Σ a·b| when beta ≠ 0: cuBLASLt's bf16 kernel rounded the product to bf16 before adding beta·C
// (measured on an H100 with cuBLASLt 13.1 at 2048 × 512 × 384: with C = −bf16(A·B) every result came back
// 0, a mean error of 0.25 ulp of the product), so a sum that cancels keeps the product's rounding. All far below the
// O(√k) error of a wrong row or column; *ratio = |got − ref| / tol.
inline bool dot_matches(const std::vector<double>& a, const std::vector<double>& b, double c_before, double beta,
                        double got, double* ratio) {
  double dot = 0, abs_sum = std::abs(beta * c_before);
  for (std::size_t p = 0; p < a.size(); ++p) {
    dot += a[p] * b[p];
    abs_sum += std::abs(a[p] * b[p]);
  }
  const double ref = beta * c_before + dot;
  const double tol =
      std::ldexp(std::abs(ref), -7) + (beta != 0 ? std::ldexp(std::abs(dot), -8) : 0.0) + 1e-4 * abs_sum + 1e-6;
  *ratio = std::isfinite(got) ? std::abs(got - ref) / tol : INFINITY;
  return *ratio <= 1.0;
}

// Checks C(i, j) of one bf16 GEMM call at two positions (waits for the stream): `run` performs the call
// C = op(A)·op(B) + beta·C with the packed leading dimensions lda = trans_a ? m : k, ldb = trans_b ? k : n,
// ldc = n. *detail: the worse error/tolerance ratio of the two.
template <class Run>
bool check_gemm_call(cuda_backend& be, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                     const bf16* a, const bf16* b, double beta, const bf16* c, Run&& run, std::string* detail) {
  const std::int64_t lda = trans_a ? m : k, ldb = trans_b ? k : n, ldc = n;
  const std::int64_t is[2] = {(m * 7) / 11, m - 1}, js[2] = {(n * 5) / 13, n - 1};
  double before[2] = {0, 0};
  if (beta != 0)
    for (int t = 0; t < 2; ++t) before[t] = download_strided(be, c + is[t] * ldc + js[t], 1, 1)[0];
  run();
  bool ok = true;
  double worst = 0;
  for (int t = 0; t < 2; ++t) {
    const std::int64_t i = is[t], j = js[t];
    // Row i of op(A) and column j of op(B), k values each.
    const auto arow = trans_a ? download_strided(be, a + i, k, lda) : download_strided(be, a + i * lda, k, 1);
    const auto bcol = trans_b ? download_strided(be, b + j * ldb, k, 1) : download_strided(be, b + j, k, ldb);
    const double got = download_strided(be, c + i * ldc + j, 1, 1)[0];
    double ratio = 0;
    ok = dot_matches(arow, bcol, before[t], beta, got, &ratio) && ok;
    worst = std::max(worst, ratio);
  }
  *detail = strf("%.2g", worst);
  return ok;
}

// Bytes as "1.23 GB" (decimal units, as bandwidths are quoted).
inline std::string gigabytes(double bytes) { return strf("%.2f GB", bytes / 1e9); }

}  // namespace dsx::bench
