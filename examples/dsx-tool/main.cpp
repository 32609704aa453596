// dsx-<model>: the tool built once per model configuration (see cmake/DsxModels.cmake). The model is
// the compile-time value `dsx_model::config` from the header named by DSX_MODEL_HEADER; every
// subcommand runs the statically specialised pipeline of that one model.
//
//   dsx-<model> info                                   configuration, counts, FLOPs, memory plan
//   dsx-<model> verify <model_dir> <golden.safetensors> every golden check in f64 and f32
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <cstdio>
#include <exception>

#include DSX_MODEL_HEADER
#include "commands.hpp"

static_assert(dsx::validate(dsx_model::config), "the generated model configuration is invalid");

int main(int argc, char** argv) {
  CLI::App app{fmt::format("dsx-{}: the DeepSeek-style model '{}' compiled into this binary", dsx_model::name,
                           dsx_model::name)};
  app.require_subcommand(1);

  auto* info = app.add_subcommand("info", "print the configuration, parameter counts, FLOPs and memory plan");
  std::int64_t info_seq = std::min<std::int64_t>(4096, dsx_model::config.max_positions);
  info->add_option("--seq", info_seq, "sequence length for the attention FLOPs (default: max_positions, at most 4096)")
      ->check(CLI::PositiveNumber);

  auto* verify = app.add_subcommand("verify", "check the model against golden outputs of the reference");
  std::string model_dir, golden;
  verify->add_option("model_dir", model_dir, "HF model folder (config.json + *.safetensors)")->required();
  verify->add_option("golden", golden, "golden.safetensors (inputs.* and expected.*)")->required();

  CLI11_PARSE(app, argc, argv);
  try {
    if (*info) return dsx::tool::info<dsx_model::config>(dsx_model::name, info_seq);
    if (*verify) return dsx::tool::verify<dsx_model::config>(model_dir, golden);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsx-%s: error: %s\n", dsx_model::name, e.what());
    return 1;
  }
  return 0;
}
