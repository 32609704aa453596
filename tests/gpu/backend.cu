// The CUDA backend object (backend/cuda/cuda.cuh): the memory interface shared with the host backend,
// and the error checks, which must turn CUDA, launch and cuBLASLt failures into dsx::error naming the
// file, the call and the CUDA error.
#include "gpu_test.cuh"

#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/arena.hpp"

using namespace dsx::test::gpu;

namespace {
__global__ void write_index_kernel(int* out) { out[threadIdx.x] = int(threadIdx.x); }
}  // namespace

TEST_CASE("cuda backend: upload, fill_zero and download round-trip", "[gpu]") {
  cuda_backend be;
  STATIC_REQUIRE(cuda_backend::is_device);
  const auto values = random_values<float>(1000, 1);
  device_array<float> d(be, values);
  CHECK(same_bits(d.download(), values));

  be.fill_zero(d.get() + 100, 50 * sizeof(float));
  auto expected = values;
  std::fill(expected.begin() + 100, expected.begin() + 150, 0.0f);
  CHECK(same_bits(d.download(), expected));

  CHECK(be.allocate_bytes(0) == nullptr);
  be.free_bytes(nullptr);
  be.synchronize();
}

TEST_CASE("cuda backend: an arena of device memory holds planned buffers", "[gpu]") {
  cuda_backend be;
  dsx::arena_plan plan;
  const auto a = plan.reserve<float>(37, "a");
  const auto b = plan.reserve<double>(5, "b");
  dsx::arena<cuda_backend> arena(be, plan.bytes());
  float* pa = arena.at<float>(plan, a);
  double* pb = arena.at<double>(plan, b);
  CHECK(reinterpret_cast<std::uintptr_t>(pb) % dsx::arena_plan::alignment == 0);
  const std::vector<double> vb{1, 2, 3, 4, 5};
  be.upload(pb, vb.data(), sizeof(double) * vb.size());
  be.fill_zero(pa, 37 * sizeof(float));
  std::vector<double> back(5);
  be.download(back.data(), pb, sizeof(double) * back.size());
  CHECK(back == vb);
}

TEST_CASE("cuda backend: a scratch request that grows keeps earlier contents out of the way", "[gpu]") {
  cuda_backend be;
  void* small = be.scratch(100);
  REQUIRE(small != nullptr);
  CHECK(be.scratch(50) == small);  // smaller requests reuse the buffer
  void* large = be.scratch(std::size_t(3) << 20);
  REQUIRE(large != nullptr);
  be.fill_zero(large, std::size_t(3) << 20);  // the whole grown buffer is usable
  be.synchronize();
}

TEST_CASE("cuda backend: failed CUDA calls throw dsx::error with file, call and error name", "[gpu]") {
  CHECK_THROWS_AS(DSX_CUDA_CHECK(cudaSetDevice(-1)), dsx::error);
  CHECK_THROWS_WITH(DSX_CUDA_CHECK(cudaSetDevice(-1)),
                    Catch::Contains("backend.cu") && Catch::Contains("cudaSetDevice(-1)") &&
                        Catch::Contains("cudaErrorInvalidDevice"));
  // The failure is not left behind to be blamed on the next launch.
  cuda_backend be;
  device_array<int> out(be, 32);
  write_index_kernel<<<1, 32, 0, be.stream()>>>(out.get());
  CHECK_NOTHROW(DSX_CUDA_CHECK_LAUNCH("write_index_kernel"));
  const auto v = out.download();
  CHECK(v[31] == 31);
}

TEST_CASE("cuda backend: a bad launch configuration throws with the kernel's name", "[gpu]") {
  cuda_backend be;
  device_array<int> out(be, 32);
  write_index_kernel<<<1, 4096, 0, be.stream()>>>(out.get());  // more threads than a block may have
  CHECK_THROWS_WITH(DSX_CUDA_CHECK_LAUNCH("write_index_kernel"),
                    Catch::Contains("launch of write_index_kernel") && Catch::Contains("backend.cu"));
  CHECK_NOTHROW(be.synchronize());  // a configuration error does not poison the context
}

TEST_CASE("cuda backend: failed cuBLASLt calls throw dsx::error with the status name", "[gpu]") {
  cublasLtMatrixLayout_t layout = nullptr;
  REQUIRE_NOTHROW(DSX_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, CUDA_R_32F, 8, 8, 8)));
  // The batch count is an int32: a one-byte value is refused.
  const std::int8_t count = 2;
  CHECK_THROWS_WITH(
      DSX_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, 1)),
      Catch::Contains("cublasLtMatrixLayoutSetAttribute") && Catch::Contains("CUBLAS_STATUS_INVALID_VALUE"));
  cublasLtMatrixLayoutDestroy(layout);
}

TEST_CASE("cuda backend: a device that does not exist is a dsx::error", "[gpu]") {
  CHECK_THROWS_WITH(cuda_backend(dsx::backend::cuda_options{.device = 1000}), Catch::Contains("device 1000"));
}
