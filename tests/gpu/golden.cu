// The tiny-v3 golden checks on the GPU: the same verification as tests/golden/tiny_v3.cpp (logits, loss,
// every gradient, experts per MoE layer, greedy decoding through the latent cache), with the whole model
// on the CUDA backend. The data folder is DSX_TEST_DATA from the environment when set (a copy of the
// repository elsewhere), else the build tree's.
#include <cstdlib>
#include <filesystem>

#include "dsx/backend/cuda/all.cuh"
#include "dsx/config/presets.hpp"
#include "dsx/model/golden.hpp"
#include "gpu_test.cuh"

namespace {

std::filesystem::path data_dir() {
  const char* env = std::getenv("DSX_TEST_DATA");
  return env ? std::filesystem::path(env) : std::filesystem::path(DSX_TEST_DATA);
}

template <dsx::precision_policy P>
void run(dsx::golden_tolerance tolerance) {
  dsx::test::gpu::cuda_backend be;
  const auto dir = data_dir() / "tiny-v3";
  const auto checks = dsx::verify_golden<dsx::presets::tiny_v3, P>(be, dir, dir / "golden.safetensors", tolerance);
  CHECK(checks.size() > 80);
  for (const auto& c : checks) {
    INFO(c.name << ": error " << c.error << ", tolerance " << c.tolerance);
    CHECK(c.passed);
  }
}

}  // namespace

TEST_CASE("tiny-v3 matches the reference on the GPU in f64", "[gpu]") { run<dsx::precision::f64>({1e-6, 1e-6}); }
TEST_CASE("tiny-v3 matches the reference on the GPU in f32", "[gpu]") { run<dsx::precision::f32>(dsx::golden_f32_tolerance); }
