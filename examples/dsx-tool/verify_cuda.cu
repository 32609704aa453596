// `dsx-<model> verify --device cuda`: the golden checks with the whole model on the CUDA backend. Compiled
// into the tools added with dsx_add_model(... CUDA) when DSX_CUDA is on (cmake/DsxModels.cmake); the rest
// of the tool is host code (main.cpp) and calls verify_cuda through verify.hpp.
#include <cuda_runtime.h>

#include <string>

#include DSX_MODEL_HEADER
#include "dsx/backend/cuda/all.cuh"
#include "dsx/core/error.hpp"
#include "verify.hpp"

namespace dsx::tool {

int verify_cuda(const std::filesystem::path& model_dir, const std::filesystem::path& golden, int device) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  require(status == cudaSuccess && count > 0,
          "verify --device cuda: no CUDA device (cudaGetDeviceCount: " +
              std::string(status == cudaSuccess ? "0 devices" : cudaGetErrorString(status)) + ")");
  require(device >= 0 && device < count, "verify --gpu " + std::to_string(device) + ": this machine has " +
                                             std::to_string(count) + " CUDA device(s), numbered from 0");
  backend::cuda be(backend::cuda_options{.device = device});
  return verify_on<dsx_model::config>(be, model_dir, golden);
}

}  // namespace dsx::tool
