// packed_loader (data/loader.hpp): sequences are the (T + 1)-token windows of the shard stream at
// multiples of T; each epoch visits every sequence once in a seeded order; the state resumes exactly.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "dsx/data/loader.hpp"
#include "support/files.hpp"

using Catch::Matchers::Contains;
using dsx::test::error_of;

namespace {

constexpr std::int32_t eos = 0;
constexpr std::int32_t vocab = 1 << 20;

// A hand-made shard: documents of the given lengths (EOS included), token p of the shard's stream is
// first + p + 1 except at document ends, where it is EOS, so a window's place is visible in its ids.
dsx::token_shard handmade(const std::vector<int>& lengths, std::int32_t first, const std::string& tokenizer = "t") {
  std::vector<std::int32_t> tokens;
  std::vector<std::int64_t> offsets{0};
  for (const int n : lengths) {
    for (int i = 0; i + 1 < n; ++i) tokens.push_back(first + std::int32_t(tokens.size()) + 1);
    tokens.push_back(eos);
    offsets.push_back(std::int64_t(tokens.size()));
  }
  return dsx::token_shard(tokens, offsets, dsx::shard_info{vocab, eos, tokenizer, {"handmade"}}, "handmade shard " + std::to_string(first));
}

// Three shards of 23, 9 and 31 tokens: windows cross shard borders.
std::vector<dsx::token_shard> three_shards() {
  return {handmade({5, 7, 11}, 0), handmade({3, 6}, 1000), handmade({4, 10, 2, 15}, 2000)};
}

std::vector<std::int32_t> stream_of(const std::vector<dsx::token_shard>& shards) {
  std::vector<std::int32_t> s;
  for (const auto& shard : shards) s.insert(s.end(), shard.tokens().begin(), shard.tokens().end());
  return s;
}

dsx::loader_options options(std::int64_t batch, std::int64_t seq, std::uint64_t seed, bool shuffle = true) {
  dsx::loader_options o;
  o.batch = batch;
  o.sequence_length = seq;
  o.seed = seed;
  o.shuffle = shuffle;
  return o;
}

std::vector<std::vector<std::int32_t>> batches(dsx::packed_loader& loader, int n) {
  std::vector<std::vector<std::int32_t>> out;
  for (int i = 0; i < n; ++i) out.push_back(loader.next());
  return out;
}

}  // namespace

TEST_CASE("index_permutation is a bijection of [0, n) that depends on seed and stream", "[unit]") {
  for (const std::int64_t n : {1, 2, 3, 4, 5, 17, 64, 100, 1000, 4097}) {
    const dsx::index_permutation p(n, 42, 7);
    std::vector<bool> hit(std::size_t(n), false);
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t j = p(i);
      REQUIRE(j >= 0);
      REQUIRE(j < n);
      REQUIRE_FALSE(hit[std::size_t(j)]);
      hit[std::size_t(j)] = true;
    }
  }
  const auto image = [](std::uint64_t seed, std::uint64_t stream) {
    const dsx::index_permutation p(1000, seed, stream);
    std::vector<std::int64_t> v;
    for (std::int64_t i = 0; i < 1000; ++i) v.push_back(p(i));
    return v;
  };
  CHECK(image(1, 2) == image(1, 2));
  CHECK(image(1, 2) != image(3, 2));
  CHECK(image(1, 2) != image(1, 4));
  // Not the identity nor a shift: fewer than 1% fixed points or unit steps (a uniform permutation has ~1).
  const auto v = image(1, 2);
  int fixed = 0, steps = 0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    fixed += v[i] == std::int64_t(i);
    if (i > 0) steps += v[i] == v[i - 1] + 1;
  }
  CHECK(fixed < 10);
  CHECK(steps < 10);
  CHECK_THROWS_AS(dsx::index_permutation(0, 1, 2), dsx::error);
}

TEST_CASE("in order: sequence i is stream[iT, iT + T], consecutive sequences share one token", "[unit]") {
  // 11 tokens, T = 3: (11 − 1) / 3 = 3 sequences; token 10 is never a target.
  const dsx::token_shard shard = handmade({4, 7}, 0);
  const std::vector<std::int32_t> s(shard.tokens().begin(), shard.tokens().end());
  REQUIRE(s == std::vector<std::int32_t>{1, 2, 3, 0, 5, 6, 7, 8, 9, 10, 0});
  dsx::packed_loader loader({shard}, options(2, 3, 0, false));
  CHECK(loader.sequences_per_epoch() == 3);
  CHECK(loader.row_length() == 4);
  CHECK(loader.tokens() == 11);
  // Batches of two rows; the epoch ends inside the second batch, which continues with epoch 1.
  CHECK(loader.next() == std::vector<std::int32_t>{1, 2, 3, 0, /**/ 0, 5, 6, 7});
  CHECK(loader.state().epoch == 0);
  CHECK(loader.state().position == 2);
  CHECK(loader.next() == std::vector<std::int32_t>{7, 8, 9, 10, /**/ 1, 2, 3, 0});
  CHECK(loader.state().epoch == 1);
  CHECK(loader.state().position == 1);
}

TEST_CASE("windows across shard borders are read from the concatenated stream", "[unit]") {
  const auto shards = three_shards();
  const auto s = stream_of(shards);
  REQUIRE(s.size() == 63);
  for (const std::int64_t seq : {1, 2, 5, 8, 31, 62}) {
    dsx::packed_loader loader(shards, options(1, seq, 0, false));
    REQUIRE(loader.sequences_per_epoch() == (63 - 1) / seq);
    for (std::int64_t i = 0; i < loader.sequences_per_epoch(); ++i) {
      const std::vector<std::int32_t> expected(s.begin() + i * seq, s.begin() + i * seq + seq + 1);
      REQUIRE(loader.next() == expected);
    }
    CHECK(loader.state().epoch == 1);
    CHECK(loader.state().position == 0);
  }
}

TEST_CASE("shuffled: every epoch delivers every sequence once, so every target token once", "[unit]") {
  const auto shards = three_shards();
  const auto s = stream_of(shards);
  const std::int64_t seq = 4, batch = 3;
  dsx::packed_loader loader(shards, options(batch, seq, 1234));
  const std::int64_t n = loader.sequences_per_epoch();  // 15: batches straddle epochs
  REQUIRE(n == 15);
  std::vector<std::vector<std::int32_t>> rows;
  for (int b = 0; b < 10; ++b) {  // two epochs
    const auto ids = loader.next();
    for (std::int64_t r = 0; r < batch; ++r) rows.emplace_back(ids.begin() + r * (seq + 1), ids.begin() + (r + 1) * (seq + 1));
  }
  CHECK(loader.state().epoch == 2);
  CHECK(loader.state().position == 0);
  std::vector<std::int64_t> orders[2];
  for (int e = 0; e < 2; ++e) {
    std::multiset<std::int32_t> targets, expected;
    std::set<std::int64_t> seen;
    for (std::int64_t k = 0; k < n; ++k) {
      const std::int64_t i = loader.sequence_at(e, k);
      orders[e].push_back(i);
      seen.insert(i);
      // The row delivered is the window of the sequence the order names.
      const auto& row = rows[std::size_t(e * n + k)];
      REQUIRE(row == std::vector<std::int32_t>(s.begin() + i * seq, s.begin() + i * seq + seq + 1));
      targets.insert(row.begin() + 1, row.end());
    }
    CHECK(seen.size() == std::size_t(n));
    expected.insert(s.begin() + 1, s.begin() + n * seq + 1);
    CHECK(targets == expected);
  }
  CHECK(orders[0] != orders[1]);  // each epoch has its own order
  std::vector<std::int64_t> identity(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) identity[std::size_t(i)] = i;
  CHECK(orders[0] != identity);
}

TEST_CASE("the order is a function of the seed: same seed same batches, other seed other batches", "[unit]") {
  const auto shards = three_shards();
  dsx::packed_loader a(shards, options(2, 3, 99)), b(shards, options(2, 3, 99)), c(shards, options(2, 3, 100));
  const auto from_a = batches(a, 40);  // 20 sequences per epoch: four epochs
  CHECK(from_a == batches(b, 40));
  CHECK(from_a != batches(c, 40));
  // A loader over the same stream split differently into shards delivers the same batches.
  dsx::packed_loader one({handmade({5, 7, 11}, 0)}, options(2, 3, 99));
  dsx::packed_loader same({handmade({5, 7}, 0), handmade({11}, 12)}, options(2, 3, 99));
  REQUIRE(stream_of({handmade({5, 7, 11}, 0)}) == stream_of({handmade({5, 7}, 0), handmade({11}, 12)}));
  CHECK(batches(one, 7) == batches(same, 7));
}

TEST_CASE("seek(state) continues exactly as the uninterrupted loader, across epoch boundaries too", "[unit]") {
  const auto shards = three_shards();
  for (const bool shuffle : {true, false}) {
    dsx::packed_loader reference(shards, options(3, 4, 7, shuffle));  // 15 sequences per epoch
    const auto all = batches(reference, 30);
    for (const int stop : {0, 1, 4, 5, 6, 9, 10, 17, 29}) {
      dsx::packed_loader first(shards, options(3, 4, 7, shuffle));
      batches(first, stop);
      // The state travels as JSON (checkpoint metadata) into a loader built with another seed.
      const nlohmann::json saved = dsx::to_json(first.state());
      const dsx::loader_state restored = dsx::loader_state_from_json(nlohmann::json::parse(saved.dump()), "checkpoint");
      CHECK(restored == first.state());
      dsx::packed_loader resumed(shards, options(3, 4, 12345, shuffle));
      resumed.seek(restored);
      CHECK(resumed.state() == first.state());
      for (int k = stop; k < 30; ++k) REQUIRE(resumed.next() == all[std::size_t(k)]);
      CHECK(resumed.state() == reference.state());
    }
  }
  // The state after 5 batches of 3 (15 sequences) is the start of epoch 1.
  dsx::packed_loader loader(shards, options(3, 4, 7));
  batches(loader, 5);
  CHECK(loader.state().epoch == 1);
  CHECK(loader.state().position == 0);
  CHECK(loader.state().seed == 7);
}

TEST_CASE("seek refuses a state for other data, and bad states are named", "[unit]") {
  const auto shards = three_shards();
  dsx::packed_loader loader(shards, options(2, 4, 1));
  dsx::packed_loader other_length(shards, options(2, 5, 1));
  dsx::packed_loader in_order(shards, options(2, 4, 1, false));
  dsx::packed_loader less_data({shards[0], shards[1]}, options(2, 4, 1));
  CHECK_THAT(error_of([&] { other_length.seek(loader.state()); }), Contains("cannot resume") && Contains("15 sequences of 4"));
  CHECK_THAT(error_of([&] { in_order.seek(loader.state()); }), Contains("cannot resume") && Contains("(shuffled)"));
  CHECK_THAT(error_of([&] { less_data.seek(loader.state()); }), Contains("cannot resume"));
  dsx::loader_state s = loader.state();
  s.position = s.sequences;
  CHECK_THAT(error_of([&] { loader.seek(s); }), Contains("position 15"));

  CHECK_THAT(error_of([] { dsx::loader_state_from_json(nlohmann::json{{"seed", 1}}, "ckpt.json"); }),
             Contains("ckpt.json") && Contains("\"epoch\""));
  nlohmann::json j = dsx::to_json(loader.state());
  j["position"] = -3;
  CHECK_THAT(error_of([&] { dsx::loader_state_from_json(j, "ckpt.json"); }), Contains("ckpt.json") && Contains("\"position\""));
  j = dsx::to_json(loader.state());
  j["shuffle"] = 1;
  CHECK_THAT(error_of([&] { dsx::loader_state_from_json(j, "ckpt.json"); }), Contains("\"shuffle\""));
  // The seed keeps all 64 bits through JSON.
  dsx::loader_state big = loader.state();
  big.seed = 0xfedcba9876543210ull;
  CHECK(dsx::loader_state_from_json(nlohmann::json::parse(dsx::to_json(big).dump()), "x") == big);
}

TEST_CASE("packed_loader refuses too little data, mixed tokenizers, bad sizes and small model vocabularies", "[unit]") {
  CHECK_THAT(error_of([] { dsx::packed_loader({handmade({4}, 0)}, options(1, 4, 0)); }),
             Contains("4 tokens") && Contains("sequence of 5"));
  CHECK_NOTHROW(dsx::packed_loader({handmade({5}, 0)}, options(1, 4, 0)));
  CHECK_THAT(error_of([] { dsx::packed_loader({handmade({5}, 0), handmade({5}, 10, "other")}, options(1, 2, 0)); }),
             Contains("handmade shard 10") && Contains("handmade shard 0") && Contains("different tokenizers"));
  CHECK_THAT(error_of([] { dsx::packed_loader({}, options(1, 2, 0)); }), Contains("no token shards"));
  CHECK_THAT(error_of([] { dsx::packed_loader({handmade({5}, 0)}, options(0, 2, 0)); }), Contains("batch"));
  CHECK_THAT(error_of([] { dsx::packed_loader({handmade({5}, 0)}, options(1, 0, 0)); }), Contains("sequence_length"));
  auto o = options(1, 2, 0);
  o.model_vocab = vocab - 1;
  CHECK_THAT(error_of([&] { dsx::packed_loader({handmade({5}, 0)}, o); }), Contains("model's vocabulary"));
  o.model_vocab = vocab;
  CHECK_NOTHROW(dsx::packed_loader({handmade({5}, 0)}, o));
  dsx::packed_loader loader({handmade({9}, 0)}, options(2, 2, 0));
  std::vector<std::int32_t> small(5);
  CHECK_THAT(error_of([&] { loader.next(small); }), Contains("2 × 3"));
}
