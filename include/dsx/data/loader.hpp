// dsx::packed_loader — pre-training batches from token shards: packed, shuffled, resumable.
//
// Packing (as DeepSeek-V3 does: documents packed without cross-document attention masking): the shards'
// tokens, in shard order, form one stream in which every document is followed by its EOS. With
// sequence length T the stream is cut into S = (N − 1) / T sequences (N tokens); sequence i is the
// T + 1 tokens stream[i·T, i·T + T] — the model reads the first T as inputs and predicts the last T
// (row[t + 1] is the target of row[t]), so consecutive sequences share one token and every token of
// stream[1, S·T] is a target exactly once per epoch. The last (N − 1) mod T tokens are never a target.
//
// Order: each epoch visits all S sequences once, in the order of a pseudo-random permutation drawn
// from (seed, epoch): a balanced Feistel network on the smallest even number of bits that covers S,
// restricted to [0, S) by cycle walking. It needs no stored permutation and no O(S) state: sequence k
// of epoch e is computed on its own. Without shuffling the order is 0, 1, ..., S − 1 in every epoch.
//
// Batches hold B sequences, row-major B × (T + 1) ids; next(out, n) delivers the next n <= B instead
// (the pre-trainer's batch ramp). The delivered sequences form one stream whatever the counts: which
// sequences a call returns depends only on how many were delivered before it. An epoch that ends inside
// a batch continues with the next epoch's first sequences, so every batch is full.
//
// Resuming: state() is (seed, epoch, position) plus the sizes it is valid for; seek(state) restores it,
// after which next() returns exactly the batches the uninterrupted loader would have returned.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"
#include "dsx/core/rng.hpp"
#include "dsx/data/shards.hpp"

namespace dsx {

// A bijection of [0, n) drawn from (seed, stream); see the top of this file.
class index_permutation {
 public:
  static constexpr int rounds = 6;

  index_permutation(std::int64_t n, std::uint64_t seed, std::uint64_t stream) : n_(n) {
    require(n > 0 && n <= (std::int64_t(1) << 62),
            "index_permutation: the domain size must be in 1..2^62, found " + std::to_string(n));
    // Smallest half width h >= 1 with 2^(2h) >= n, so 2^(2h) < 4n and cycle walking takes under 4 steps
    // on average.
    while (half_bits_ < 31 && (std::uint64_t(1) << (2 * half_bits_)) < std::uint64_t(n)) ++half_bits_;
    mask_ = (std::uint64_t(1) << half_bits_) - 1;
    for (int r = 0; r < rounds; ++r) keys_[std::size_t(r)] = random_bits(seed, stream, std::uint64_t(r));
  }

  std::int64_t size() const { return n_; }

  // The image of i in [0, n).
  std::int64_t operator()(std::int64_t i) const {
    require(i >= 0 && i < n_, "index_permutation: index " + std::to_string(i) + " is outside 0.." + std::to_string(n_ - 1));
    std::uint64_t x = std::uint64_t(i);
    do x = feistel(x);
    while (x >= std::uint64_t(n_));
    return std::int64_t(x);
  }

 private:
  std::uint64_t feistel(std::uint64_t x) const {
    std::uint64_t left = x >> half_bits_, right = x & mask_;
    for (const std::uint64_t key : keys_) {
      const std::uint64_t mixed = left ^ (splitmix64(right ^ key) & mask_);
      left = right;
      right = mixed;
    }
    return (left << half_bits_) | right;
  }

  std::int64_t n_;
  int half_bits_ = 1;
  std::uint64_t mask_ = 0;
  std::array<std::uint64_t, rounds> keys_{};
};

struct loader_options {
  std::int64_t batch = 0;            // B: sequences per batch
  std::int64_t sequence_length = 0;  // T: a sequence holds T + 1 tokens
  std::uint64_t seed = 0;            // the shuffle seed
  bool shuffle = true;
  std::int32_t model_vocab = 0;      // when positive, shards with a larger vocabulary are refused
};

// Where a loader stands. epoch and position (sequences of that epoch already delivered) are the
// position; sequences, sequence_length and shuffle describe the data it is valid for and are checked
// by seek().
struct loader_state {
  std::uint64_t seed = 0;
  std::int64_t epoch = 0;
  std::int64_t position = 0;
  std::int64_t sequences = 0;
  std::int64_t sequence_length = 0;
  bool shuffle = true;

  friend bool operator==(const loader_state&, const loader_state&) = default;
};

// loader_state as a JSON object (for checkpoint metadata) and back; `where` names the source in errors.
inline nlohmann::json to_json(const loader_state& s) {
  return {{"seed", s.seed},           {"epoch", s.epoch},
          {"position", s.position},   {"sequences", s.sequences},
          {"sequence_length", s.sequence_length}, {"shuffle", s.shuffle}};
}
inline loader_state loader_state_from_json(const nlohmann::json& j, const std::string& where) {
  const auto field = [&](const char* key) -> const nlohmann::json& {
    const auto it = j.is_object() ? j.find(key) : j.end();
    if (it == j.end()) throw error(where + ": expected a loader state object with a field \"" + key + "\", found none");
    return *it;
  };
  const auto count = [&](const char* key) {
    const nlohmann::json& v = field(key);
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0)
      throw error(where + ": expected loader state field \"" + key + "\" to be a non-negative integer, found " + v.dump());
    return v.get<std::int64_t>();
  };
  loader_state s;
  const nlohmann::json& seed = field("seed");
  if (!seed.is_number_integer() || (!seed.is_number_unsigned() && seed.get<std::int64_t>() < 0)) throw error(where + ": expected loader state field \"seed\" to be an unsigned integer, found " + seed.dump());
  s.seed = seed.get<std::uint64_t>();
  s.epoch = count("epoch");
  s.position = count("position");
  s.sequences = count("sequences");
  s.sequence_length = count("sequence_length");
  const nlohmann::json& shuffle = field("shuffle");
  if (!shuffle.is_boolean()) throw error(where + ": expected loader state field \"shuffle\" to be a boolean, found " + shuffle.dump());
  s.shuffle = shuffle.get<bool>();
  return s;
}

class packed_loader {
 public:
  // All shards must come from the same tokenizer (same fingerprint); errors name the shards.
  packed_loader(std::vector<token_shard> shards, const loader_options& options)
      : shards_(std::move(shards)), batch_(options.batch), seq_(options.sequence_length), seed_(options.seed),
        shuffle_(options.shuffle) {
    require(!shards_.empty(), "packed_loader: no token shards");
    require(batch_ > 0, "packed_loader: batch must be positive, found " + std::to_string(batch_));
    require(seq_ > 0, "packed_loader: sequence_length must be positive, found " + std::to_string(seq_));
    const shard_info& first = shards_.front().info();
    starts_.push_back(0);
    for (const token_shard& s : shards_) {
      const shard_info& info = s.info();
      if (info.tokenizer != first.tokenizer || info.vocab_size != first.vocab_size || info.eos_id != first.eos_id)
        throw error("packed_loader: " + s.name() + " (tokenizer " + info.tokenizer + ", vocab " + std::to_string(info.vocab_size) +
                    ") and " + shards_.front().name() + " (tokenizer " + first.tokenizer + ", vocab " +
                    std::to_string(first.vocab_size) + ") were made by different tokenizers");
      starts_.push_back(starts_.back() + std::int64_t(s.tokens().size()));
    }
    if (options.model_vocab > 0 && first.vocab_size > options.model_vocab)
      throw error("packed_loader: " + shards_.front().name() + " has ids up to vocab " + std::to_string(first.vocab_size) +
                  ", more than the model's vocabulary of " + std::to_string(options.model_vocab));
    sequences_ = (starts_.back() - 1) / seq_;
    require(sequences_ > 0, "packed_loader: the shards hold " + std::to_string(starts_.back()) + " tokens, fewer than one sequence of " +
                                std::to_string(seq_ + 1) + " (sequence_length + 1)");
    set_epoch(0);
  }

  std::int64_t batch() const { return batch_; }
  std::int64_t sequence_length() const { return seq_; }
  std::int64_t row_length() const { return seq_ + 1; }
  std::int64_t sequences_per_epoch() const { return sequences_; }
  std::int64_t tokens() const { return starts_.back(); }
  const shard_info& info() const { return shards_.front().info(); }

  // The index of the sequence delivered at `position` of `epoch`.
  std::int64_t sequence_at(std::int64_t epoch, std::int64_t position) const {
    require(epoch >= 0, "packed_loader: epoch " + std::to_string(epoch) + " is negative");
    require(position >= 0 && position < sequences_,
            "packed_loader: position " + std::to_string(position) + " is outside 0.." + std::to_string(sequences_ - 1));
    if (!shuffle_) return position;
    return epoch == epoch_ ? order_(position) : permutation(epoch)(position);
  }

  // Copies sequence `index` (T + 1 ids) to out.
  void read_sequence(std::int64_t index, std::span<std::int32_t> out) const {
    require(index >= 0 && index < sequences_,
            "packed_loader: sequence " + std::to_string(index) + " is outside 0.." + std::to_string(sequences_ - 1));
    require(std::int64_t(out.size()) == seq_ + 1,
            "packed_loader: a sequence needs room for " + std::to_string(seq_ + 1) + " ids, got " + std::to_string(out.size()));
    std::int64_t at = index * seq_;
    std::size_t done = 0;
    std::size_t s = std::size_t(std::upper_bound(starts_.begin(), starts_.end(), at) - starts_.begin()) - 1;
    while (done < out.size()) {
      const auto src = shards_[s].tokens();
      const std::size_t from = std::size_t(at - starts_[s]);
      const std::size_t n = std::min(out.size() - done, src.size() - from);
      std::copy_n(src.begin() + std::ptrdiff_t(from), n, out.begin() + std::ptrdiff_t(done));
      done += n;
      at += std::int64_t(n);
      ++s;
    }
  }

  // The next `sequences` sequences (1..B), sequences × (T + 1) ids row-major, into out.
  void next(std::span<std::int32_t> out, std::int64_t sequences) {
    require(sequences > 0 && sequences <= batch_, "packed_loader: a batch holds 1.." + std::to_string(batch_) +
                                                      " sequences (the loader's batch), asked for " +
                                                      std::to_string(sequences));
    const std::size_t row = std::size_t(seq_ + 1);
    require(out.size() == std::size_t(sequences) * row,
            "packed_loader: a batch needs room for " + std::to_string(sequences) + " × " + std::to_string(row) + " ids, got " +
                std::to_string(out.size()));
    for (std::int64_t b = 0; b < sequences; ++b) {
      read_sequence(sequence_at(epoch_, position_), out.subspan(std::size_t(b) * row, row));
      if (++position_ == sequences_) set_epoch(epoch_ + 1);
    }
  }
  // The next full batch, B × (T + 1) ids row-major, into out.
  void next(std::span<std::int32_t> out) { next(out, batch_); }
  std::vector<std::int32_t> next() {
    std::vector<std::int32_t> out(std::size_t(batch_ * (seq_ + 1)));
    next(out);
    return out;
  }

  loader_state state() const { return {seed_, epoch_, position_, sequences_, seq_, shuffle_}; }

  // Continues from `s` (taken from a loader over the same shards and sequence length).
  void seek(const loader_state& s) {
    if (s.sequences != sequences_ || s.sequence_length != seq_ || s.shuffle != shuffle_)
      throw error("packed_loader: cannot resume from a state for " + std::to_string(s.sequences) + " sequences of " +
                  std::to_string(s.sequence_length) + " tokens" + (s.shuffle ? " (shuffled)" : " (in order)") + ": this loader has " +
                  std::to_string(sequences_) + " sequences of " + std::to_string(seq_) + " tokens" +
                  (shuffle_ ? " (shuffled)" : " (in order)") + " (other shards or another sequence length?)");
    require(s.epoch >= 0 && s.position >= 0 && s.position < sequences_,
            "packed_loader: cannot resume at epoch " + std::to_string(s.epoch) + ", position " + std::to_string(s.position) +
                ": positions run 0.." + std::to_string(sequences_ - 1));
    seed_ = s.seed;
    set_epoch(s.epoch);
    position_ = s.position;
  }

 private:
  // The stream tag of shuffle permutations, so that no other user of the seed draws the same numbers.
  static constexpr std::uint64_t shuffle_stream = 0x73687566666c65ull;  // "shuffle"

  index_permutation permutation(std::int64_t epoch) const {
    return index_permutation(sequences_, seed_, splitmix64(shuffle_stream ^ std::uint64_t(epoch)));
  }
  void set_epoch(std::int64_t epoch) {
    epoch_ = epoch;
    position_ = 0;
    order_ = permutation(epoch);
  }

  std::vector<token_shard> shards_;
  std::vector<std::int64_t> starts_;  // starts_[s] = stream offset of shard s; back() = N
  std::int64_t batch_, seq_;
  std::uint64_t seed_;
  bool shuffle_;
  std::int64_t sequences_ = 0;
  std::int64_t epoch_ = 0, position_ = 0;
  index_permutation order_{1, 0, 0};  // the current epoch's permutation
};

}  // namespace dsx
