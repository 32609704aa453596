// The default corpus and tokenizer (data/corpus.hpp): determinism from the seed, correct facts in the
// generated text, the tokenizer rule for every vocabulary size, round trips, and enough regularity to
// learn (a bigram model fitted on one half predicts the other far better than ln(vocab)).
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "dsx/data/corpus.hpp"
#include "dsx/data/loader.hpp"

using Catch::Matchers::Contains;

namespace {

dsx::corpus_options small_corpus(std::uint64_t seed = 20240501) {
  dsx::corpus_options o;
  o.seed = seed;
  o.bytes = 128 * 1024;
  return o;
}

const std::vector<std::string>& full_corpus() {
  static const std::vector<std::string> docs = dsx::default_corpus();
  return docs;
}

std::vector<std::string> lines_of(const std::string& doc) {
  std::vector<std::string> out;
  std::istringstream in(doc);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// Cross-entropy (nats per token) on the second half of `tokens` of a bigram model fitted on the first
// half with additive smoothing.
double held_out_bigram_nats(std::span<const std::int32_t> tokens, std::int32_t vocab) {
  const std::size_t half = tokens.size() / 2;
  std::map<std::pair<std::int32_t, std::int32_t>, double> pair;
  std::vector<double> first(std::size_t(vocab), 0.0);
  for (std::size_t i = 1; i < half; ++i) {
    pair[{tokens[i - 1], tokens[i]}] += 1;
    first[std::size_t(tokens[i - 1])] += 1;
  }
  const double alpha = 0.1;
  double nll = 0;
  for (std::size_t i = half + 1; i < tokens.size(); ++i) {
    const auto it = pair.find({tokens[i - 1], tokens[i]});
    const double count = it == pair.end() ? 0.0 : it->second;
    nll -= std::log((count + alpha) / (first[std::size_t(tokens[i - 1])] + alpha * vocab));
  }
  return nll / double(tokens.size() - half - 1);
}

// The byte-level token string of byte b.
std::string byte_token(unsigned char b) { return dsx::tokenizer_detail::byte_table::get().utf8[b]; }

}  // namespace

TEST_CASE("the corpus is a function of the seed; document i can be generated alone", "[unit]") {
  const auto a = dsx::default_corpus(small_corpus());
  CHECK(a == dsx::default_corpus(small_corpus()));
  CHECK(a != dsx::default_corpus(small_corpus(7)));
  std::size_t total = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i] == dsx::corpus_document(20240501, i));
    REQUIRE_FALSE(a[i].empty());
    total += a[i].size();
  }
  CHECK(total >= small_corpus().bytes);
  CHECK(total - a.back().size() < small_corpus().bytes);
  // The default corpus starts with the same documents: its size only decides where it stops.
  for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(full_corpus()[i] == a[i]);

  // Printable ASCII and newlines only; no two documents alike.
  std::set<std::string> distinct;
  for (const std::string& d : full_corpus()) {
    for (const char c : d) REQUIRE(((c >= ' ' && c <= '~') || c == '\n'));
    distinct.insert(d);
  }
  CHECK(distinct.size() == full_corpus().size());
}

TEST_CASE("the facts the corpus states are true", "[unit]") {
  int sums = 0, products = 0, counts = 0, sorts = 0, spellings = 0;
  for (const std::string& doc : full_corpus()) {
    for (const std::string& line : lines_of(doc)) {
      int a = 0, b = 0, c = 0, used = 0;
      if (std::sscanf(line.c_str(), "%d + %d = %d%n", &a, &b, &c, &used) == 3 && used == int(line.size())) {
        REQUIRE(a + b == c);
        ++sums;
      } else if (std::sscanf(line.c_str(), "%d - %d = %d%n", &a, &b, &c, &used) == 3 && used == int(line.size())) {
        REQUIRE(a - b == c);
        REQUIRE(c >= 0);
        ++sums;
      } else if (std::sscanf(line.c_str(), "%d times %d is %d.%n", &a, &b, &c, &used) == 3 && used == int(line.size())) {
        REQUIRE(a * b == c);
        ++products;
      } else if (std::sscanf(line.c_str(), "Let us count from %d to %d: %n", &a, &b, &used) == 2 && used > 0) {
        std::string expected = line.substr(0, std::size_t(used));
        for (int k = a; k <= b; ++k) expected += std::to_string(k) + (k < b ? ", " : ".");
        REQUIRE(line == expected);
        ++counts;
      } else if (line.starts_with("Sorting ")) {
        const std::size_t mid = line.find(" from small to large gives ");
        REQUIRE(mid != std::string::npos);
        const auto numbers = [](std::string s) {
          std::vector<int> v;
          for (char& ch : s) if (ch == ',' || ch == '.') ch = ' ';
          std::istringstream in(s);
          for (int x; in >> x;) v.push_back(x);
          return v;
        };
        auto given = numbers(line.substr(8, mid - 8));
        const auto sorted = numbers(line.substr(mid + 27));
        std::sort(given.begin(), given.end());
        REQUIRE(given == sorted);
        ++sorts;
      } else if (line.starts_with("The word ")) {
        char word[64];
        int letters = 0;
        REQUIRE(std::sscanf(line.c_str(), "The word %63s has %d letters: %n", word, &letters, &used) == 2);
        REQUIRE(int(std::string(word).size()) == letters);
        std::string spelled;
        for (int k = 0; k < letters; ++k) spelled += std::string(1, word[k]) + (k + 1 < letters ? ", " : ".");
        REQUIRE(line.substr(std::size_t(used)) == spelled);
        ++spellings;
      }
    }
  }
  // Every checked kind occurs often in the default corpus.
  CHECK(sums > 1000);
  CHECK(products > 100);
  CHECK(counts > 100);
  CHECK(sorts > 100);
  CHECK(spellings > 100);
}

TEST_CASE("default_tokenizer(4096): byte-level BPE, exact round trip, regular enough to learn", "[unit]") {
  const dsx::bpe_tokenizer t = dsx::default_tokenizer(4096);
  CHECK(t.vocab_size() == 4096);
  CHECK(t.bos_id() == 0);
  CHECK(t.eos_id() == 1);
  const dsx::token_shard shard = dsx::default_corpus_tokens(t);
  REQUIRE(shard.documents() == std::int64_t(full_corpus().size()));
  for (std::int64_t d = 0; d < shard.documents(); ++d) {
    const auto ids = shard.document(d);
    REQUIRE(t.decode(ids.first(ids.size() - 1)) == full_corpus()[std::size_t(d)]);
  }
  // Any UTF-8 text survives (all 256 bytes are tokens).
  const std::string foreign = "Grüße, ~ {x} | ñ ✓";
  CHECK(t.decode(t.encode(foreign)) == foreign);

  // A bigram model fitted on half the tokens predicts the other half far below ln(vocab) (structure
  // to learn), yet above 1 nat per token (not trivial to predict).
  const double nats = held_out_bigram_nats(shard.tokens(), t.vocab_size());
  CHECK(nats < 0.5 * std::log(4096.0));
  CHECK(nats > 1.0);

  // It feeds the loader directly, as `train` without data does.
  dsx::loader_options o;
  o.batch = 4;
  o.sequence_length = 256;
  o.model_vocab = 4096;
  dsx::packed_loader loader({shard}, o);
  CHECK(loader.sequences_per_epoch() == std::int64_t(shard.tokens().size() - 1) / 256);
}

TEST_CASE("default_tokenizer below 258 ids: BOS, EOS, <unk>, the corpus alphabet, then merges", "[unit]") {
  const auto docs = dsx::default_corpus(small_corpus());
  std::array<std::uint64_t, 256> count{};
  for (const auto& d : docs)
    for (const char c : d) ++count[static_cast<unsigned char>(c)];
  int alphabet = 0;
  for (const auto n : count) alphabet += n > 0;

  SECTION("tiny-v3's 96: every corpus byte kept, the rest merges; exact round trip") {
    REQUIRE(alphabet + 3 < 96);
    const dsx::bpe_tokenizer t = dsx::default_tokenizer(96, small_corpus());
    CHECK(t.vocab_size() == 96);
    CHECK(t.bos_id() == 0);
    CHECK(t.eos_id() == 1);
    CHECK(t.token_to_id("<unk>") == 2);
    CHECK(t.merges().size() == std::size_t(96 - 3 - alphabet));
    for (int b = 0; b < 256; ++b) CHECK(t.token_to_id(byte_token(static_cast<unsigned char>(b))).has_value() == (count[std::size_t(b)] > 0));
    for (const auto& d : docs) {
      const auto ids = t.encode(d);
      for (const auto id : ids) REQUIRE(id < 96);
      REQUIRE(t.decode(ids) == d);
    }
    // A byte outside the alphabet becomes <unk>; the file is an ordinary tokenizer.json.
    CHECK(t.decode(t.encode("a~b")) == "a<unk>b");
    const auto reloaded = dsx::bpe_tokenizer::from_json(t.to_json(), "reloaded");
    CHECK(reloaded.encode(docs[0]) == t.encode(docs[0]));
    CHECK(dsx::tokenizer_fingerprint(reloaded) == dsx::tokenizer_fingerprint(t));
  }
  SECTION("a vocabulary smaller than the alphabet keeps the most frequent bytes and no merge") {
    const int vocab = 40;
    REQUIRE(alphabet + 3 > vocab);
    const dsx::bpe_tokenizer t = dsx::default_tokenizer(vocab, small_corpus());
    CHECK(t.vocab_size() == vocab);
    CHECK(t.merges().empty());
    std::uint64_t least_kept = ~std::uint64_t{0}, most_dropped = 0;
    for (int b = 0; b < 256; ++b) {
      const bool kept = t.token_to_id(byte_token(static_cast<unsigned char>(b))).has_value();
      if (kept) least_kept = std::min(least_kept, count[std::size_t(b)]);
      else most_dropped = std::max(most_dropped, count[std::size_t(b)]);
    }
    CHECK(least_kept >= most_dropped);
    for (const auto& d : docs) {
      std::string expected;
      for (const char c : d) expected += t.token_to_id(byte_token(static_cast<unsigned char>(c))) ? std::string(1, c) : "<unk>";
      const auto ids = t.encode(d);
      for (const auto id : ids) REQUIRE(id < vocab);
      REQUIRE(t.decode(ids) == expected);
    }
  }
  SECTION("the boundary: 257 is reduced, 258 is byte-level; 4 is the smallest") {
    const auto reduced = dsx::default_tokenizer(257, small_corpus());
    const auto full = dsx::default_tokenizer(258, small_corpus());
    CHECK(reduced.vocab_size() == 257);
    CHECK(reduced.token_to_id("<unk>") == 2);
    CHECK(full.vocab_size() == 258);
    CHECK_FALSE(full.token_to_id("<unk>").has_value());
    CHECK(full.decode(full.encode("é~")) == "é~");
    CHECK(reduced.decode(reduced.encode("é~")) == "<unk><unk><unk>");
    const auto smallest = dsx::default_tokenizer(4, small_corpus());
    CHECK(smallest.vocab_size() == 4);
    CHECK(smallest.decode(smallest.encode("e x")) == (smallest.token_to_id(byte_token(' ')) ? "<unk> <unk>" : "<unk><unk><unk>"));
    CHECK_THROWS_WITH(dsx::default_tokenizer(3, small_corpus()), Contains("at least 4 ids"));
  }
}
