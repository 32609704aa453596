// The subcommands of dsx-<model>, each a function template over the compiled configuration.
#pragma once

#include <fmt/core.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "dsx/backend/host/all.hpp"
#include "dsx/config/counts.hpp"
#include "dsx/config/presets.hpp"
#include "dsx/config/reflect.hpp"
#include "dsx/data/tokenizer.hpp"
#include "dsx/model/golden.hpp"
#include "verify.hpp"

namespace dsx::tool {

inline const char* score_name(score_fn s) { return s == score_fn::sigmoid ? "sigmoid" : "softmax"; }

// Bytes in the largest binary unit that keeps the number at least 1.
inline std::string human_bytes(std::int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) v /= 1024.0, ++u;
  return fmt::format("{:.2f} {}", v, units[u]);
}

// `info`: the configuration, then the counts one per line as `key value`, then the memory plan.
template <model_config C>
int info(const char* name, std::int64_t seq) {
  static constexpr std::int64_t total = params_total(C), activated = params_activated(C), mtp = params_mtp(C);
  fmt::print("model {}\n", name);
  for_each_field(C, [](const std::string& path, const auto& value) {
    using V = std::decay_t<decltype(value)>;
    if constexpr (std::is_same_v<V, score_fn>) fmt::print("{} {}\n", path, score_name(value));
    else fmt::print("{} {}\n", path, value);
  });
  fmt::print("total_params {}\n", total);
  fmt::print("activated_params {}\n", activated);
  fmt::print("mtp_params {}\n", mtp);
  const auto f = forward_flops(C, seq);
  fmt::print("forward_flops_per_token {} (matmul {}, attention {} at seq {})\n", f.forward(), f.matmul, f.attention, seq);
  fmt::print("training_flops_per_token {}\n", f.training());
  fmt::print("memory plan (weights + grads + master + moments):\n");
  auto row = [](const char* policy, const memory_plan& m) {
    fmt::print("  {:11} weights {}  grads {}  master {}  moments {}  total {}\n", policy, human_bytes(m.weights), human_bytes(m.grads),
               human_bytes(m.master), human_bytes(m.moments), human_bytes(m.total()));
  };
  row("f32", plan_memory(C, precision::f32));
  row("bf16", plan_memory(C, precision::bf16));
  row("bf16_v3", plan_memory(C, precision::bf16_v3));
  row("bf16_master", plan_memory(C, precision::bf16_master));
  return 0;
}

// `verify`: every golden check in f64 and f32 on the host backend (verify.hpp).
template <model_config C>
int verify(const std::filesystem::path& model_dir, const std::filesystem::path& golden) {
  backend::host be;
  return verify_on<C>(be, model_dir, golden);
}

// `tokenize`: one {"ids": [...]} line per {"text": ...} line of the input.
inline int tokenize(const std::filesystem::path& tokenizer, const std::string& input, bool add_special) {
  const auto tok = bpe_tokenizer::load(tokenizer);
  if (input.empty()) {
    tokenize_jsonl(tok, std::cin, std::cout, add_special, "<stdin>");
  } else {
    std::ifstream in(input);
    require(bool(in), "tokenize: cannot open input '" + input + "'");
    tokenize_jsonl(tok, in, std::cout, add_special, input);
  }
  return 0;
}

}  // namespace dsx::tool
