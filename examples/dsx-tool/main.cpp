// dsx-<model>: the tool built once per model configuration (see cmake/DsxModels.cmake). The model is
// the compile-time value `dsx_model::config` from the header named by DSX_MODEL_HEADER; every
// subcommand runs the statically specialised pipeline of that one model.
//
//   dsx-<model> info                                   configuration, counts, FLOPs, memory plan
//   dsx-<model> verify <model_dir> <golden.safetensors> [--device cuda [--gpu N]]
//                                                      every golden check in f64 and f32
//   dsx-<model> tokenize --tokenizer PATH [--input FILE.jsonl] [--add-special]
//   dsx-<model> bench sgemm | train [--batch B --seq T --steps N]   speed on this machine
//   dsx-<model> train [--data PATH] --steps N --out DIR [--resume] [options]   pre-training
//   dsx-<model> sft | reward-model | dpo | grpo | rejection-sample | distill | evaluate | recipe
//                                                      post-training (post.hpp)
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <cstdio>
#include <exception>

#include DSX_MODEL_HEADER
#include "bench.hpp"
#include "commands.hpp"
#include "post.hpp"
#include "train.hpp"

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
  std::string verify_device = "host";
  int verify_gpu = 0;
  verify->add_option("--device", verify_device,
                     "host, or cuda: the whole model on the GPU (tools built with CUDA; see cmake/DsxModels.cmake)")
      ->capture_default_str()->check(CLI::IsMember({"host", "cuda"}));
  verify->add_option("--gpu", verify_gpu, "CUDA device number with --device cuda")->capture_default_str();

  auto* bench = app.add_subcommand("bench", "measure speed on this machine");
  bench->require_subcommand(1);
  int threads = 0;
  auto* bench_sgemm = bench->add_subcommand("sgemm", "the f32 GEMM peak that MFU is measured against");
  auto* bench_train = bench->add_subcommand("train", "f32 training steps (forward, backward, clipping, AdamW) on the host");
  for (auto* sub : {bench_sgemm, bench_train})
    sub->add_option("--threads", threads, "OpenMP and OpenBLAS threads (default: the environment's)");
  std::int64_t bench_batch = 8, bench_seq = 128;
  int bench_steps = 10, bench_warmup = 2;
  bench_train->add_option("--batch", bench_batch, "sequences per step")->check(CLI::PositiveNumber);
  bench_train->add_option("--seq", bench_seq, "tokens per sequence")->check(CLI::Range(std::int64_t(2), std::int64_t(dsx_model::config.max_positions)));
  bench_train->add_option("--steps", bench_steps, "timed steps")->check(CLI::PositiveNumber);
  bench_train->add_option("--warmup", bench_warmup, "untimed steps first")->check(CLI::NonNegativeNumber);

  auto* tokenize = app.add_subcommand("tokenize", "encode {\"text\": ...} JSONL documents as {\"ids\": [...]} lines");
  std::string tokenizer_path, tokenize_input;
  bool add_special = false;
  tokenize->add_option("--tokenizer", tokenizer_path, "HF tokenizer.json (plain or .gz)")->required();
  tokenize->add_option("--input", tokenize_input, "JSONL file (default: standard input)");
  tokenize->add_flag("--add-special", add_special, "add the tokenizer's special tokens (its post-processor)");

  auto* train = app.add_subcommand(
      "train", "pre-train the model (host; f32, or bf16 with f32 master weights): metrics, plot and resumable checkpoints");
  dsx::tool::train_args train_args;
  dsx::tool::add_train_flags(*train, train_args, dsx_model::config.max_positions);

  dsx::tool::post_args post_args;
  const dsx::tool::post_commands post = dsx::tool::add_post_commands(app, post_args);

  CLI11_PARSE(app, argc, argv);
  try {
    if (*info) return dsx::tool::info<dsx_model::config>(dsx_model::name, info_seq);
    if (*verify && verify_device == "cuda") {
#if DSX_TOOL_CUDA
      return dsx::tool::verify_cuda(model_dir, golden, verify_gpu);
#else
      throw dsx::error(fmt::format("verify --device cuda: dsx-{} was built without the CUDA backend (configure with "
                                   "DSX_CUDA=ON; the model must be added with dsx_add_model(... CUDA))",
                                   dsx_model::name));
#endif
    }
    if (*verify) return dsx::tool::verify<dsx_model::config>(model_dir, golden);
    if (*tokenize) return dsx::tool::tokenize(tokenizer_path, tokenize_input, add_special);
    if (*train) return dsx::tool::train<dsx_model::config>(train_args);
    for (const CLI::App* c : {post.sft, post.reward_model, post.dpo, post.grpo, post.rejection, post.distill, post.evaluate, post.recipe})
      if (*c) return dsx::tool::run_post(post_args, post);
    if (*bench_sgemm) return dsx::tool::bench_sgemm(threads);
    if (*bench_train)
      return dsx::tool::bench_train<dsx_model::config>(bench_batch, bench_seq, bench_steps, bench_warmup, threads);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsx-%s: error: %s\n", dsx_model::name, e.what());
    return 1;
  }
  return 0;
}
