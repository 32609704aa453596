// `train`: pre-training of the compiled model (train/pretrain.hpp) on the host backend, in f32
// (precision::f32), with --precision bf16 (precision::bf16_master: bf16 weights, activations and
// gradients, f32 master weights and AdamW moments) or with --precision fp8 (precision::fp8_v3: bf16_master
// with every Linear's GEMMs in DeepSeek-V3's FP8 block scaling, which the host backend emulates).
//
//   dsx-<model> train [--data PATH] --steps N --out DIR [--resume] [options]
//
// Without --data the run uses the built-in corpus (data/corpus.hpp) tokenized by the default tokenizer
// for the model's vocabulary, which is saved as DIR/tokenizer.json. With --data, PATH is token shards (a
// .safetensors shard or a folder of them), or text: a .jsonl file of {"text": ...} documents, a plain
// text file, or a folder of such files, tokenized once into DIR/shards by --tokenizer (an HF
// tokenizer.json; default: the default tokenizer for the model's vocabulary) — a resumed run reuses
// DIR/shards. DIR receives metrics.jsonl, metrics.svg and checkpoint/ (io/checkpoint.hpp).
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "bench.hpp"
#include "dsx/backend/host/all.hpp"
#include "dsx/data/corpus.hpp"
#include "dsx/data/loader.hpp"
#include "dsx/data/shards.hpp"
#include "dsx/model/init.hpp"
#include "dsx/model/transformer.hpp"
#include "dsx/train/pretrain.hpp"

namespace dsx::tool {

// A .safetensors file, or a folder holding .safetensors files: token shards rather than text.
inline bool is_token_shards(const std::filesystem::path& path) {
  if (!std::filesystem::is_directory(path)) return path.extension() == ".safetensors";
  for (const auto& e : std::filesystem::directory_iterator(path))
    if (e.path().extension() == ".safetensors") return true;
  return false;
}

// The text files of --data: the file itself, or the regular files of a folder in name order.
inline std::vector<std::filesystem::path> text_inputs(const std::filesystem::path& path) {
  std::vector<std::filesystem::path> out;
  if (std::filesystem::is_directory(path)) {
    for (const auto& e : std::filesystem::directory_iterator(path))
      if (e.is_regular_file()) out.push_back(e.path());
    std::sort(out.begin(), out.end());
  } else {
    require(std::filesystem::is_regular_file(path), "train: --data '" + path.string() + "' is no file or folder");
    out.push_back(path);
  }
  require(!out.empty(), "train: --data folder '" + path.string() + "' holds no files");
  return out;
}


struct train_args {
  std::string data, out, tokenizer;
  std::string precision = "f32";
  bool resume = false, no_shuffle = false;
  pretrain_options options;
  std::int64_t warmup = -1, decay = -1, mtp_switch = -1;  // -1: derived from --steps
  double init_std = 0.02;
  int threads = 0;
};

// The flags of `train`; defaults are DeepSeek-V3's (report §4.2) where they carry over to small runs.
inline void add_train_flags(CLI::App& cmd, train_args& a, std::int64_t max_positions) {
  pretrain_options& o = a.options;
  o.lr.peak = 2.2e-4;
  o.lr.final = 2.2e-5;
  cmd.add_option("--data", a.data,
                 "token shards (.safetensors file or folder) or text (.jsonl / text file or folder; tokenized into "
                 "DIR/shards) (default: the built-in corpus)");
  cmd.add_option("--tokenizer", a.tokenizer,
                 "HF tokenizer.json for text --data (default: the default tokenizer for the model's vocabulary)");
  cmd.add_option("--steps", o.steps, "train until this many steps are done")->required()->check(CLI::NonNegativeNumber);
  cmd.add_option("--out", a.out, "output folder: metrics.jsonl, metrics.svg, checkpoint/")->required();
  cmd.add_flag("--resume", a.resume, "continue from DIR/checkpoint (bit-identical to an uninterrupted run)");
  cmd.add_option("--precision", a.precision,
                 "f32; bf16: bf16 weights, activations and gradients with f32 master weights and AdamW moments; "
                 "fp8: bf16 with every Linear's GEMMs in FP8 block scaling (DeepSeek-V3's recipe) "
                 "(a resumed run needs the precision it was started with)")
      ->capture_default_str()->check(CLI::IsMember({"f32", "bf16", "fp8"}));
  cmd.add_option("--batch", o.batch, "sequences per step (after the batch ramp)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd.add_option("--batch-ramp-start", o.batch_ramp_start,
                 "sequences per step at the start of a linear ramp to --batch, rounded down to a multiple of "
                 "--micro-batches (V3: 3072 to 15360; 0: no ramp)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd.add_option("--batch-ramp-tokens", o.batch_ramp_tokens, "tokens over which the batch ramps to --batch (V3: 469B)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd.add_option("--micro-batches", o.micro_batches, "forward/backward passes per step (gradient accumulation)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  o.seq = std::min<std::int64_t>(o.seq, max_positions - 1);
  cmd.add_option("--seq", o.seq, "tokens predicted per sequence (the model reads seq + 1 <= max_positions)")
      ->capture_default_str()->check(CLI::Range(std::int64_t(1), max_positions - 1));
  cmd.add_option("--lr", o.lr.peak, "peak learning rate (V3: 2.2e-4)")->capture_default_str();
  cmd.add_option("--lr-final", o.lr.final, "learning rate after the cosine decay (V3: 2.2e-5)")->capture_default_str();
  cmd.add_option("--warmup", a.warmup, "linear warm-up steps (default: min(2000, steps / 10), at least 1)");
  cmd.add_option("--constant", o.lr.constant, "steps at the peak after warm-up")->capture_default_str();
  cmd.add_option("--decay", a.decay, "cosine decay steps (default: the steps left after warm-up and constant)");
  cmd.add_option("--clip", o.clip, "max gradient norm, 0 for none (V3: 1.0)")->capture_default_str();
  cmd.add_option("--weight-decay", o.adamw.weight_decay, "AdamW weight decay (V3: 0.1)")->capture_default_str();
  cmd.add_option("--beta1", o.adamw.beta1, "AdamW beta1 (V3: 0.9)")->capture_default_str();
  cmd.add_option("--beta2", o.adamw.beta2, "AdamW beta2 (V3: 0.95)")->capture_default_str();
  cmd.add_option("--eps", o.adamw.eps, "AdamW epsilon")->capture_default_str();
  cmd.add_option("--mtp-weight", o.mtp_weight, "MTP loss weight lambda before the switch (V3: 0.3)")->capture_default_str();
  cmd.add_option("--mtp-weight-late", o.mtp_weight_late, "lambda from the switch on (V3: 0.1)")->capture_default_str();
  cmd.add_option("--mtp-switch-step", a.mtp_switch,
                 "step where lambda changes (default: 10/14.8 of --steps, V3's token fraction; 0: never)");
  cmd.add_option("--gamma", o.gamma, "routing bias update speed (V3: 0.001)")->capture_default_str();
  cmd.add_option("--gamma-stop-tokens", o.gamma_stop_tokens,
                 "tokens trained after which gamma is 0 (V3: 14.3T of 14.8T; 0: never)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd.add_option("--alpha", o.alpha, "sequence-wise balance loss weight (V3: 0.0001)")->capture_default_str();
  cmd.add_option("--seed", o.seed, "seed of the initial weights and the data order")->capture_default_str();
  cmd.add_option("--init-std", a.init_std, "standard deviation of the initial matrices")->capture_default_str();
  cmd.add_flag("--no-shuffle", a.no_shuffle, "read the sequences in order instead of shuffled per epoch");
  cmd.add_option("--max-bad-steps", o.max_bad_steps, "consecutive non-finite steps that stop training")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd.add_option("--checkpoint-every", o.checkpoint_every, "steps between checkpoints (0: only at the end)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd.add_option("--threads", a.threads, "OpenMP and OpenBLAS threads (default: the environment's)");
  cmd.footer("Options derived from --steps (warm-up, decay, MTP switch) change when --steps does: to extend a run with "
             "--resume, give them explicitly as the first run used them.");
}

// Builds the model of type Model and runs (or resumes) the pre-training of `train` below.
template <class Model>
int run_pretraining(const train_args& a, const pretrain_options& o, packed_loader& loader) {
  backend::host be;
  auto model = std::make_unique<Model>(be, o.batch / o.micro_batches, o.seq + 1);
  pretrainer<Model> trainer(*model, loader, o);
  if (a.resume) {
    trainer.resume();
    fmt::print("resuming at step {} from {}\n", trainer.state().step, find_checkpoint(o.out)->string());
  } else {
    init_weights(*model, o.seed, a.init_std);
    trainer.start();
  }
  const auto steps = trainer.run();
  const trainer_state& s = trainer.state();
  if (!steps.empty()) {
    const step_result& last = steps.back();
    fmt::print("step {} loss {:.4f} lm_loss {:.4f} mtp_loss {:.4f} lr {:.3g} tokens {} skipped {}\n", last.step, last.loss,
               last.lm_loss, last.mtp_loss, last.lr, s.tokens, s.skipped);
  }
  fmt::print("checkpoint {}\nmetrics {}\nplot {}\n", checkpoint_path(o.out).string(), (o.out / "metrics.jsonl").string(),
             (o.out / "metrics.svg").string());
  return 0;
}

template <model_config C>
int train(train_args a) {
  set_threads(a.threads);
  pretrain_options o = a.options;
  o.out = a.out;
  o.lr.warmup = a.warmup >= 0 ? a.warmup : std::max<std::int64_t>(1, std::min<std::int64_t>(2000, o.steps / 10));
  o.lr.decay = a.decay >= 0 ? a.decay : std::max<std::int64_t>(0, o.steps - o.lr.warmup - o.lr.constant);
  o.mtp_switch_step = a.mtp_switch >= 0 ? a.mtp_switch : std::llround(double(o.steps) * 10.0 / 14.8);
  o.check();
  std::filesystem::create_directories(o.out);

  std::vector<token_shard> shards;
  if (a.data.empty()) {
    const bpe_tokenizer tokenizer = default_tokenizer(C.vocab);
    shards.push_back(default_corpus_tokens(tokenizer));
    std::ofstream(o.out / "tokenizer.json") << tokenizer.to_json();
  } else if (is_token_shards(a.data)) {
    shards = open_shards(a.data);
  } else {
    const std::filesystem::path shard_dir = o.out / "shards";
    if (!(a.resume && std::filesystem::exists(shard_dir))) {
      const bpe_tokenizer tokenizer = a.tokenizer.empty() ? default_tokenizer(C.vocab) : bpe_tokenizer::load(a.tokenizer);
      require(tokenizer.vocab_size() <= C.vocab, "train: the tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                                                     " ids, more than the model's vocabulary of " + std::to_string(C.vocab));
      std::ofstream(o.out / "tokenizer.json") << tokenizer.to_json();
      const auto inputs = text_inputs(a.data);
      const auto summary = write_shards(inputs, tokenizer, shard_dir);
      fmt::print("tokenized {} documents from {} file(s) into {} tokens in {}\n", summary.documents, inputs.size(),
                 summary.tokens, shard_dir.string());
    }
    shards = open_shards(shard_dir);
  }
  packed_loader loader(std::move(shards), loader_options{.batch = o.batch / o.micro_batches, .sequence_length = o.seq,
                                                         .seed = o.seed, .shuffle = !a.no_shuffle, .model_vocab = C.vocab});

  if (a.precision == "bf16") return run_pretraining<transformer<C, precision::bf16_master, backend::host>>(a, o, loader);
  if (a.precision == "fp8") return run_pretraining<transformer<C, precision::fp8_v3, backend::host>>(a, o, loader);
  return run_pretraining<transformer<C, precision::f32, backend::host>>(a, o, loader);
}

}  // namespace dsx::tool
