// cuBLASLt matmuls with cached plans. cuBLASLt's heuristic query costs far more than a small GEMM, and a
// training step repeats the same few shapes, so each distinct problem (types, transposes, sizes, leading
// dimensions, batch, strides and pointer alignment) gets its descriptors and algorithm once and reuses them.
// Everything here is in cuBLASLt's column-major terms; gemm.cuh maps dsx's row-major GEMMs onto it, and
// fp8.cuh its FP8 block-scaled GEMMs (run_scaled).
// Not thread-safe: one lt_matmul belongs to one backend object, which belongs to one host thread.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "dsx/backend/cuda/check.cuh"

namespace dsx::backend::cuda_detail {

// D(m, n) = alpha · op(A) · op(B) + beta · C with C = D (in place), column-major, `batch` problems
// `stride_*` elements apart.
struct lt_problem {
  cudaDataType_t data;          // storage type of A, B, C and D
  cublasComputeType_t compute;  // accumulation
  cudaDataType_t scale;         // type of alpha and beta
  cublasOperation_t op_a, op_b;
  std::int64_t m, n, k, lda, ldb, ldc;
  std::int64_t batch, stride_a, stride_b, stride_c;
  std::uint32_t align_a, align_b, align_c;  // guaranteed alignment of every batch's operand, bytes (≤ 256)
  // FP8 block scaling (cuBLAS ≥ 12.9 on Hopper): A and B hold `data` (E4M3) with f32 scale tensors in the
  // modes scale_mode_a / scale_mode_b, and C and D hold `out`. When false (every other GEMM) these three
  // fields are unused and C and D hold `data`.
  bool fp8_block = false;
  cudaDataType_t out = CUDA_R_32F;
  cublasLtMatmulMatrixScale_t scale_mode_a = CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
  cublasLtMatmulMatrixScale_t scale_mode_b = CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
  bool operator==(const lt_problem&) const = default;
};

struct lt_problem_hash {
  std::size_t operator()(const lt_problem& p) const noexcept {
    std::size_t h = 0;
    auto mix = [&h](std::int64_t v) { h ^= std::hash<std::int64_t>{}(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
    for (std::int64_t v : {std::int64_t(p.data), std::int64_t(p.compute), std::int64_t(p.scale), std::int64_t(p.op_a),
                           std::int64_t(p.op_b), p.m, p.n, p.k, p.lda, p.ldb, p.ldc, p.batch, p.stride_a, p.stride_b,
                           p.stride_c, std::int64_t(p.align_a), std::int64_t(p.align_b), std::int64_t(p.align_c),
                           std::int64_t(p.fp8_block), std::int64_t(p.out), std::int64_t(p.scale_mode_a),
                           std::int64_t(p.scale_mode_b)})
      mix(v);
    return h;
  }
};

// Collects the errors cuBLASLt logs while it lives (cuBLASLt explains a refused heuristic query only in
// its log). Logging is process-wide, so it captures only when asked and when the user has not set up
// cuBLASLt logging through CUBLASLT_LOG_LEVEL or CUBLASLT_LOG_MASK (then the log goes where the user
// sent it), and it switches logging off again on destruction. One lt_matmul per host thread (see below).
class lt_error_capture {
 public:
  explicit lt_error_capture(bool wanted)
      : active_(wanted && !std::getenv("CUBLASLT_LOG_LEVEL") && !std::getenv("CUBLASLT_LOG_MASK")) {
    if (!active_) return;
    sink().clear();
    cublasLtLoggerSetCallback(&record);
    cublasLtLoggerSetMask(1);  // errors only
  }
  lt_error_capture(const lt_error_capture&) = delete;
  lt_error_capture& operator=(const lt_error_capture&) = delete;
  ~lt_error_capture() {
    if (!active_) return;
    cublasLtLoggerSetMask(0);
    cublasLtLoggerSetCallback(nullptr);
  }
  std::string text() const { return active_ ? sink() : std::string(); }

 private:
  static std::string& sink() {
    static thread_local std::string s;
    return s;
  }
  static void record(int, const char* function, const char* message) {
    std::string& s = sink();
    if (!s.empty()) s += " | ";
    std::string line = std::string(function ? function : "?") + ": " + (message ? message : "");
    for (char& ch : line)
      if (ch == '\n' || ch == '\r') ch = ' ';  // one line, whatever cuBLASLt wrote
    s += line;
  }
  bool active_;
};

// The largest power of two ≤ 256 that divides `bytes` (256 for 0): what cuBLASLt's alignment
// preferences take.
inline std::uint32_t alignment_of(std::uintptr_t bytes) {
  std::uint32_t a = 256;
  while (a > 1 && bytes % a != 0) a /= 2;
  return a;
}

class lt_matmul {
 public:
  explicit lt_matmul(std::size_t workspace_bytes) : workspace_bytes_(workspace_bytes) {
    DSX_CUBLAS_CHECK(cublasLtCreate(&handle_));
    const cudaError_t status = cudaMalloc(&workspace_, workspace_bytes_);
    if (status != cudaSuccess) {
      cublasLtDestroy(handle_);
      check_cuda(status, "cudaMalloc(cuBLASLt workspace)", __FILE__, __LINE__);
    }
  }
  lt_matmul(const lt_matmul&) = delete;
  lt_matmul& operator=(const lt_matmul&) = delete;
  ~lt_matmul() {
    for (auto& [key, p] : plans_) destroy(p);
    cudaFree(workspace_);
    cublasLtDestroy(handle_);
  }

  // Enqueues the matmul on `stream`. alpha and beta point to host values of the problem's scale type.
  // `size_class`: the problem is one of a family whose sizes change from call to call (the per-expert
  // GEMMs of an MoE layer get a new row count per expert and step); such problems share one heuristic
  // answer per size class (see plan_for_class) instead of a query per distinct size.
  void run(const lt_problem& p, const void* alpha, const void* a, const void* b, const void* beta, void* c,
           cudaStream_t stream, bool size_class = false) {
    const plan& pl = size_class ? plan_for_class(p) : plan_for(p);
    DSX_CUBLAS_CHECK(cublasLtMatmul(handle_, pl.op, alpha, a, pl.a, b, pl.b, beta, c, pl.c, c, pl.c, &pl.algo,
                                    workspace_, workspace_bytes_, stream));
  }

  // The FP8 block-scaled matmul D = op(A)·op(B) + beta·D (alpha = 1) with device scale tensors `a_scale`
  // and `b_scale` in the layouts of p.scale_mode_a / p.scale_mode_b. Returns false, enqueuing nothing,
  // when cuBLASLt has no algorithm for the problem (older cuBLAS, a GPU other than Hopper, unsupported
  // sizes or alignment); the answer is cached like a plan.
  bool run_scaled(const lt_problem& p, const void* a, const float* a_scale, const void* b, const float* b_scale,
                  float beta, void* d, cudaStream_t stream) {
    require(p.fp8_block, "lt_matmul::run_scaled: the problem is not an FP8 block-scaled one: " + describe(p));
    const plan* pl = find_plan(p, a_scale, b_scale);
    if (!pl) return false;
    DSX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale,
                                                    sizeof(a_scale)));
    DSX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale,
                                                    sizeof(b_scale)));
    const float one = 1.0f;
    DSX_CUBLAS_CHECK(cublasLtMatmul(handle_, pl->op, &one, a, pl->a, b, pl->b, &beta, d, pl->c, d, pl->c, &pl->algo,
                                    workspace_, workspace_bytes_, stream));
    return true;
  }

  // How often the heuristic ran, how many plans are cached, and how many plans took their algorithm from
  // their size class (tests check that repeats and size classes hit the cache).
  std::size_t heuristic_queries() const { return queries_; }
  std::size_t class_reuses() const { return class_reuses_; }
  std::size_t cached_plans() const { return plans_.size(); }
  // Why cuBLASLt last refused a block-scaled FP8 problem: the heuristic's status and the errors cuBLASLt
  // logged during the query (empty before any refusal). Benchmarks and tests print it beside the fallback.
  const std::string& last_refusal() const { return last_refusal_; }

 private:
  struct plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };

  static void destroy(plan& p) noexcept {
    if (p.c) cublasLtMatrixLayoutDestroy(p.c);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.op) cublasLtMatmulDescDestroy(p.op);
  }

  static cublasLtMatrixLayout_t make_layout(cudaDataType_t type, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                                            std::int64_t batch, std::int64_t stride) {
    cublasLtMatrixLayout_t layout = nullptr;
    DSX_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, std::uint64_t(rows), std::uint64_t(cols), ld));
    if (batch > 1) {
      const std::int32_t count = std::int32_t(batch);
      try {
        DSX_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                          sizeof(count)));
        DSX_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                          &stride, sizeof(stride)));
      } catch (...) {
        cublasLtMatrixLayoutDestroy(layout);
        throw;
      }
    }
    return layout;
  }

  static std::string describe(const lt_problem& p) {
    return "m=" + std::to_string(p.m) + " n=" + std::to_string(p.n) + " k=" + std::to_string(p.k) +
           " lda=" + std::to_string(p.lda) + " ldb=" + std::to_string(p.ldb) + " ldc=" + std::to_string(p.ldc) +
           " op_a=" + (p.op_a == CUBLAS_OP_T ? "T" : "N") + " op_b=" + (p.op_b == CUBLAS_OP_T ? "T" : "N") +
           " batch=" + std::to_string(p.batch) + " data type " + std::to_string(int(p.data));
  }

  const plan& plan_for(const lt_problem& p) {
    const plan* pl = find_plan(p);
    if (!pl) throw error("cuBLASLt: no algorithm for the GEMM " + describe(p));
    return *pl;
  }

  // m, n and k rounded up to powers of two: problems of one class differ only in sizes within a factor
  // of two, where one algorithm (tile shape, stages, split) serves them all about equally well.
  static lt_problem size_class_of(lt_problem p) {
    auto up = [](std::int64_t v) { return std::int64_t(std::bit_ceil(std::uint64_t(v))); };
    p.m = up(p.m);
    p.n = up(p.n);
    p.k = up(p.k);
    return p;
  }

  // The plan of a problem of a varying family: cached as usual once made; on a miss the algorithm that
  // the heuristic gave the first problem of its size class is taken if cublasLtMatmulAlgoCheck accepts it
  // for this one (and its workspace fits), which costs descriptors and a check instead of a heuristic
  // query (that query costs about as much as a whole expert's GEMM); otherwise this problem gets its own
  // query and its algorithm becomes the class's.
  const plan& plan_for_class(const lt_problem& p) {
    if (auto it = plans_.find(p); it != plans_.end()) return it->second;
    const lt_problem cls = size_class_of(p);
    if (auto it = class_algos_.find(cls); it != class_algos_.end()) {
      plan pl = make_descriptors(p);
      cublasLtMatmulHeuristicResult_t checked{};
      if (cublasLtMatmulAlgoCheck(handle_, pl.op, pl.a, pl.b, pl.c, pl.c, &it->second, &checked) ==
              CUBLAS_STATUS_SUCCESS &&
          checked.workspaceSize <= workspace_bytes_) {
        pl.algo = it->second;
        ++class_reuses_;
        return plans_.emplace(p, pl).first->second;
      }
      destroy(pl);
    }
    const plan& pl = plan_for(p);
    class_algos_.insert_or_assign(cls, pl.algo);
    return pl;
  }

  // The operation and layout descriptors of `p` (no algorithm yet); the caller owns them.
  static plan make_descriptors(const lt_problem& p) {
    plan pl;
    try {
      DSX_CUBLAS_CHECK(cublasLtMatmulDescCreate(&pl.op, p.compute, p.scale));
      DSX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_TRANSA, &p.op_a, sizeof(p.op_a)));
      DSX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_TRANSB, &p.op_b, sizeof(p.op_b)));
      const bool na = p.op_a == CUBLAS_OP_N, nb = p.op_b == CUBLAS_OP_N;
      pl.a = make_layout(p.data, na ? p.m : p.k, na ? p.k : p.m, p.lda, p.batch, p.stride_a);
      pl.b = make_layout(p.data, nb ? p.k : p.n, nb ? p.n : p.k, p.ldb, p.batch, p.stride_b);
      pl.c = make_layout(p.fp8_block ? p.out : p.data, p.m, p.n, p.ldc, p.batch, p.stride_c);
      if (p.fp8_block) {
        DSX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &p.scale_mode_a,
                                                        sizeof(p.scale_mode_a)));
        DSX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &p.scale_mode_b,
                                                        sizeof(p.scale_mode_b)));
      }
    } catch (...) {
      destroy(pl);
      throw;
    }
    return pl;
  }

  // The cached plan of `p`, made on first use. With no algorithm: an ordinary GEMM throws; an FP8
  // block-scaled one (also when the heuristic answers "not supported") gives nullptr, remembered in
  // `unsupported_` so that the fallback is chosen without asking again. A block-scaled problem gets its
  // scale pointers into the descriptor before the heuristic query (run_scaled sets them again on every
  // call): cuBLASLt's log says a block scaling mode "requires a custom pointer" and the query answers
  // INVALID_VALUE while they are null, which is what an H100 with cuBLASLt 13.1 answered when this code
  // queried without them (2026-11-22; the fix has not yet run on a GPU).
  const plan* find_plan(const lt_problem& p, const float* a_scale = nullptr, const float* b_scale = nullptr) {
    if (auto it = plans_.find(p); it != plans_.end()) return &it->second;
    if (unsupported_.count(p)) return nullptr;
    plan pl = make_descriptors(p);
    if (p.fp8_block) {
      try {
        DSX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale,
                                                        sizeof(a_scale)));
        DSX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale,
                                                        sizeof(b_scale)));
      } catch (...) {
        destroy(pl);
        throw;
      }
    }
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    cublasLtMatmulPreference_t pref = nullptr;
    try {
      DSX_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
      const std::uint64_t ws = workspace_bytes_;
      DSX_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                            sizeof(ws)));
      DSX_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                            &p.align_a, sizeof(p.align_a)));
      DSX_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                            &p.align_b, sizeof(p.align_b)));
      DSX_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                            &p.align_c, sizeof(p.align_c)));
      DSX_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                            &p.align_c, sizeof(p.align_c)));
      ++queries_;
      cublasStatus_t status;
      std::string logged;
      {
        const lt_error_capture capture(p.fp8_block);
        status = cublasLtMatmulAlgoGetHeuristic(handle_, pl.op, pl.a, pl.b, pl.c, pl.c, pref, 1, &result, &found);
        logged = capture.text();
      }
      // For block-scaled FP8 the heuristic's refusal is an answer, not a failure (another GPU, an older
      // cuBLAS, a shape it does not take): the caller then takes the fallback kernel.
      const bool refused = status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE;
      if (!(p.fp8_block && refused))
        check_cublas(status, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
      else
        found = 0;
      if (p.fp8_block && found == 0)
        last_refusal_ = describe(p) + ": cublasLtMatmulAlgoGetHeuristic answered " +
                        cublasLtGetStatusName(status) +
                        (status == CUBLAS_STATUS_SUCCESS ? " with no algorithm" : "") +
                        (logged.empty() ? std::string() : "; cuBLASLt logged: " + logged);
      pl.algo = result.algo;
      cublasLtMatmulPreferenceDestroy(pref);
      pref = nullptr;
    } catch (...) {
      if (pref) cublasLtMatmulPreferenceDestroy(pref);
      destroy(pl);
      throw;
    }
    if (found == 0) {
      destroy(pl);
      if (!p.fp8_block) throw error("cuBLASLt: no algorithm for the GEMM " + describe(p));
      unsupported_.insert(p);
      return nullptr;
    }
    return &plans_.emplace(p, pl).first->second;
  }

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  std::size_t queries_ = 0, class_reuses_ = 0;
  std::string last_refusal_;
  std::unordered_map<lt_problem, plan, lt_problem_hash> plans_;
  std::unordered_map<lt_problem, cublasLtMatmulAlgo_t, lt_problem_hash> class_algos_;  // by size_class_of
  std::unordered_set<lt_problem, lt_problem_hash> unsupported_;
};

}  // namespace dsx::backend::cuda_detail
