// `verify` on any backend: every golden check (model/golden.hpp) in f64 and f32, one line each, and the
// exit status 2 when any check misses its tolerance. Included by the host tool (commands.hpp) and by the
// CUDA translation unit of tools built with CUDA (verify_cuda.cu), so both print the same report. (printf
// rather than fmt: fmt's compile-time format strings do not compile in nvcc's host pass.)
#pragma once

#include <cstdio>
#include <filesystem>
#include <vector>

#include "dsx/model/golden.hpp"

namespace dsx::tool {

template <model_config C, class Backend>
int verify_on(Backend& be, const std::filesystem::path& model_dir, const std::filesystem::path& golden) {
  int failed = 0;
  auto report = [&](const char* precision_name, const std::vector<golden_check>& checks) {
    for (const auto& c : checks) {
      if (c.exact)
        std::printf("%-4s %-60s mismatches %g  %s\n", precision_name, c.name.c_str(), c.error, c.passed ? "ok" : "FAILED");
      else
        std::printf("%-4s %-60s max_rel_error %.3e  tolerance %.0e  %s\n", precision_name, c.name.c_str(), c.error,
                    c.tolerance, c.passed ? "ok" : "FAILED");
      failed += !c.passed;
    }
  };
  report("f64", verify_golden<C, precision::f64>(be, model_dir, golden, golden_f64_tolerance));
  report("f32", verify_golden<C, precision::f32>(be, model_dir, golden, golden_f32_tolerance));
  std::printf("%d checks failed\n", failed);
  return failed == 0 ? 0 : 2;
}

// The CUDA build of `verify --device cuda` (verify_cuda.cu, in tools added with dsx_add_model(... CUDA)).
int verify_cuda(const std::filesystem::path& model_dir, const std::filesystem::path& golden, int device);

}  // namespace dsx::tool
