// dsx's default pre-training corpus and tokenizer: training data that needs no download.
//
// default_corpus() generates English-like documents from a seed: short stories, arithmetic, counting,
// lists, records with questions about them, facts about an invented world, comparisons, spelling and
// calendar sentences. Every sentence comes from a template in this file filled with words from the
// tables here (no text is taken from a book or a data set). The mix is regular enough that a small model's loss
// falls far below ln(vocab) (answers repeat facts stated earlier in the document, sums are right,
// counts continue) and varied enough not to be memorised quickly (numbers, names and template choices
// vary per document).
//
// Determinism: document i depends only on (seed, i), through the counter-based RNG of core/rng.hpp
// (one stream per document), so the corpus is the same on every machine and any document can be
// regenerated alone.
// The alphabet is printable ASCII plus '\n' (75 distinct bytes in the default corpus). The default
// corpus is 1 MiB (2722 documents), generated in about 4 ms.
//
// default_tokenizer(vocab) trains a tokenizer on that corpus so that every model vocabulary size works:
//   - vocab >= 258 (2 special tokens + 256 bytes): byte-level BPE trained by bpe_tokenizer::train with
//     the DeepSeek-V3 pre-tokenizer and the special tokens <｜begin▁of▁sentence｜> (id 0) and
//     <｜end▁of▁sentence｜> (id 1, the EOS); it encodes any UTF-8 text losslessly.
//   - vocab < 258: a byte-level BPE over a reduced alphabet cannot cover every byte, so the vocabulary
//     is: BOS (0), EOS (1), <unk> (2), then the corpus's most frequent bytes (as many as fit, in
//     byte-level code point order), then the first merges of the full training while room is left.
//     A byte outside the kept alphabet encodes as <unk>. It saves as an ordinary tokenizer.json (a BPE
//     model with unk_token) and loads back like any other. The default corpus round-trips exactly when
//     vocab >= 3 + its alphabet (78 for the default corpus; tiny-v3's 96 leaves 18 merges).
//   - vocab < 4 is refused (a tokenizer needs BOS, EOS, <unk> and at least one byte).
// The tokenizer's vocab_size() is at most `vocab`; it is smaller only when the corpus runs out of pairs
// to merge: the default corpus fills vocabularies up to 4096 (bench-small) and stops near 4900.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"
#include "dsx/core/rng.hpp"
#include "dsx/data/shards.hpp"
#include "dsx/data/tokenizer.hpp"

namespace dsx {

struct corpus_options {
  std::uint64_t seed = 20240501;
  std::size_t bytes = std::size_t(1) << 20;  // documents are generated until their total reaches this
};

namespace corpus_detail {

using sv = std::string_view;

// Draws from one stream of the counter-based RNG.
class draw {
 public:
  draw(std::uint64_t seed, std::uint64_t stream) : seed_(seed), stream_(stream) {}
  std::uint64_t bits() { return random_bits(seed_, stream_, index_++); }
  // Uniform in [0, n) (the modulo bias, below 2^-50 for these n, does not matter here).
  int below(int n) { return int(bits() % std::uint64_t(n)); }
  int between(int lo, int hi) { return lo + below(hi - lo + 1); }  // inclusive
  bool percent(int p) { return below(100) < p; }
  template <class T, std::size_t N>
  const T& pick(const std::array<T, N>& table) { return table[std::size_t(below(int(N)))]; }
  // k distinct indices of [0, n), in draw order.
  std::vector<int> distinct(int n, int k) {
    std::vector<int> all(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) all[std::size_t(i)] = i;
    for (int i = 0; i < k; ++i) std::swap(all[std::size_t(i)], all[std::size_t(between(i, n - 1))]);
    all.resize(std::size_t(k));
    return all;
  }

 private:
  std::uint64_t seed_, stream_, index_ = 0;
};

// Appends pieces to a document.
struct text {
  std::string s;
  text& operator<<(sv piece) { s.append(piece); return *this; }
  text& operator<<(const std::string& piece) { s.append(piece); return *this; }
  text& operator<<(const char* piece) { s.append(piece); return *this; }
  text& operator<<(int n) { s.append(std::to_string(n)); return *this; }
};

inline std::string capital(sv word) {
  std::string s(word);
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = char(s[0] - 'a' + 'A');
  return s;
}

// "a" or "an" before `word`.
inline sv article(sv word) { return sv("aeiou").find(word[0]) != sv::npos ? sv("an") : sv("a"); }

// ---------------------------------------------------------------------------------------------------
// Word tables.

struct person {
  sv name, subject, object, possessive;
};
inline constexpr std::array<person, 48> people{{
    {"Ada", "she", "her", "her"},   {"Ben", "he", "him", "his"},    {"Cleo", "she", "her", "her"},
    {"Dan", "he", "him", "his"},    {"Eva", "she", "her", "her"},   {"Finn", "he", "him", "his"},
    {"Gina", "she", "her", "her"},  {"Hugo", "he", "him", "his"},   {"Iris", "she", "her", "her"},
    {"Jack", "he", "him", "his"},   {"Kate", "she", "her", "her"},  {"Leo", "he", "him", "his"},
    {"Mia", "she", "her", "her"},   {"Nico", "he", "him", "his"},   {"Olga", "she", "her", "her"},
    {"Paul", "he", "him", "his"},   {"Rosa", "she", "her", "her"},  {"Sam", "he", "him", "his"},
    {"Tara", "she", "her", "her"},  {"Umar", "he", "him", "his"},   {"Vera", "she", "her", "her"},
    {"Will", "he", "him", "his"},   {"Yara", "she", "her", "her"},  {"Zane", "he", "him", "his"},
    {"Alma", "she", "her", "her"},  {"Boris", "he", "him", "his"},  {"Carla", "she", "her", "her"},
    {"Dmitri", "he", "him", "his"}, {"Elena", "she", "her", "her"}, {"Felix", "he", "him", "his"},
    {"Greta", "she", "her", "her"}, {"Henry", "he", "him", "his"},  {"Ines", "she", "her", "her"},
    {"Jonas", "he", "him", "his"},  {"Lena", "she", "her", "her"},  {"Marco", "he", "him", "his"},
    {"Nora", "she", "her", "her"},  {"Oscar", "he", "him", "his"},  {"Petra", "she", "her", "her"},
    {"Quinn", "he", "him", "his"},  {"Ruth", "she", "her", "her"},  {"Tomas", "he", "him", "his"},
    {"Ulla", "she", "her", "her"},  {"Victor", "he", "him", "his"}, {"Wanda", "she", "her", "her"},
    {"Xavier", "he", "him", "his"}, {"Zoe", "she", "her", "her"},   {"Emil", "he", "him", "his"},
}};
inline constexpr std::array<sv, 36> animals{
    "cat",   "dog",    "fox",    "owl",    "rabbit", "horse",    "duck",   "bear",    "mouse",
    "frog",  "goat",   "sheep",  "deer",   "wolf",   "crow",     "bee",    "otter",   "turtle",
    "hen",   "badger", "beaver", "camel",  "donkey", "eagle",    "ferret", "gecko",   "hedgehog",
    "lizard", "moose", "newt",   "parrot", "pigeon", "squirrel", "swan",   "tortoise", "weasel"};
inline constexpr std::array<sv, 32> adjectives{
    "small", "brave", "quiet",  "clever", "sleepy", "happy",  "curious", "old",    "young",   "kind",   "shy",
    "busy",  "gentle", "proud", "lazy",   "tiny",   "bold",   "calm",    "eager",  "fearless", "grumpy", "honest",
    "jolly", "lucky", "merry",  "nimble", "patient", "polite", "restless", "silly", "wise",    "cheerful"};
inline constexpr std::array<sv, 24> places{"forest", "village", "garden", "river",  "hill",     "farm",
                                           "town",   "lake",    "meadow", "cave",   "beach",    "valley",
                                           "orchard", "harbor", "island", "market", "mountain", "pond",
                                           "castle", "library", "bakery", "desert", "swamp",    "station"};
inline constexpr std::array<sv, 36> objects{
    "key",    "ball",   "hat",    "box",   "lamp",    "book",    "stone",  "feather", "map",
    "coin",   "bell",   "scarf",  "shell", "kite",    "cup",     "ring",   "basket",  "whistle",
    "button", "candle", "drum",   "glove", "hammer",  "jar",     "ladder", "mirror",  "needle",
    "pencil", "ribbon", "saddle", "spoon", "teapot",  "umbrella", "violin", "wagon",  "compass"};
inline constexpr std::array<sv, 14> colors{"red",   "blue",   "green",  "yellow", "white", "black", "brown",
                                           "orange", "purple", "gray",  "pink",   "silver", "golden", "violet"};
inline constexpr std::array<sv, 24> foods{"apples",  "pears",    "carrots", "eggs",     "plums",   "nuts",
                                          "cookies", "onions",   "lemons",  "potatoes", "figs",    "berries",
                                          "beans",   "cherries", "dates",   "grapes",   "melons",  "muffins",
                                          "oranges", "peaches",  "pies",    "radishes", "tomatoes", "walnuts"};
inline constexpr std::array<sv, 12> hiding{"a tree",  "a bush",   "a rock", "the bridge", "a bench", "the stairs",
                                           "a leaf",  "the gate", "a cart", "the table",  "a barrel", "the fence"};
inline constexpr std::array<sv, 16> habits{
    "sing by the window", "walk along the path", "read a short book", "count the clouds",
    "water the flowers",  "look for shells",     "bake bread",        "draw pictures",
    "climb the old wall", "watch the birds",     "sweep the floor",   "play the flute",
    "fix old clocks",     "feed the ducks",      "write letters",     "pick berries"};
inline constexpr std::array<sv, 12> morals{
    "sharing makes a day better", "friends help each other",  "it is good to ask for help",
    "small things can matter",    "patience pays off",        "honesty is the best way",
    "a kind word goes far",       "every problem has an answer", "it is fine to be different",
    "hard work is rewarded",      "listening is a gift",      "home is where friends are"};
inline constexpr std::array<sv, 7> days{"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"};
inline constexpr std::array<sv, 12> months{"January", "February", "March",     "April",   "May",      "June",
                                           "July",    "August",   "September", "October", "November", "December"};
inline constexpr std::array<sv, 21> number_words{"zero",  "one",    "two",     "three",    "four",    "five",   "six",
                                                 "seven", "eight",  "nine",    "ten",      "eleven",  "twelve", "thirteen",
                                                 "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"};
inline constexpr std::array<sv, 20> jobs{"baker",  "farmer",  "teacher", "painter",  "doctor",  "sailor",  "builder",
                                         "singer", "tailor",  "gardener", "pilot",   "miner",   "nurse",   "potter",
                                         "weaver", "fisher",  "writer",  "carpenter", "cook",   "librarian"};
// Syllables of invented names (a name is two or three of them).
inline constexpr std::array<sv, 40> syllables{"ka",  "lo",  "mi",  "ren", "dor", "vel", "tan", "ri",  "sul", "bo",
                                              "ne",  "fa",  "gil", "mar", "to",  "zan", "wen", "pi",  "hal", "du",
                                              "ser", "ko",  "li",  "bran", "ta", "vo",  "nis", "el",  "ga",  "rum",
                                              "shi", "tor", "ma",  "quel", "da", "fen", "ju",  "cor", "ni",  "ye"};

// An invented name such as "Renvelto", drawn from the syllable table.
inline std::string invented_name(draw& r) {
  std::string name;
  const int parts = r.percent(70) ? 2 : 3;
  for (int i = 0; i < parts; ++i) name += r.pick(syllables);
  return capital(name);
}

struct character {
  std::string name;
  sv subject, object, possessive;
};

// n characters with distinct table entries; each one's name is replaced by an invented name with
// probability `invented` percent (its pronouns stay).
inline std::vector<character> cast(draw& r, int n, int invented) {
  std::vector<character> out;
  for (const int i : r.distinct(int(people.size()), n)) {
    const person& p = people[std::size_t(i)];
    out.push_back({r.percent(invented) ? invented_name(r) : std::string(p.name), p.subject, p.object, p.possessive});
  }
  return out;
}

// An invented world: the same facts in every corpus, so that they can be learnt across documents.
struct country {
  sv name, capital, language, known_for, neighbour;
};
inline constexpr std::array<country, 16> world{{
    {"Avalia", "Bellhaven", "Avalian", "cheese", "Brenmoor"},
    {"Brenmoor", "Corwick", "Brennish", "wool", "Caldora"},
    {"Caldora", "Dunmere", "Caldoran", "salt", "Dervany"},
    {"Dervany", "Eskaby", "Dervish", "glass", "Elmoria"},
    {"Elmoria", "Falwick", "Elmorian", "tea", "Fenwald"},
    {"Fenwald", "Garrowby", "Fennish", "boats", "Gorvia"},
    {"Gorvia", "Helmstead", "Gorvian", "honey", "Halvane"},
    {"Halvane", "Istrand", "Halvish", "clocks", "Ilvaria"},
    {"Ilvaria", "Kelport", "Ilvarian", "rice", "Karneth"},
    {"Karneth", "Lumford", "Karnish", "silver", "Lorvale"},
    {"Lorvale", "Marrowby", "Lorvish", "paper", "Mirendo"},
    {"Mirendo", "Norwick", "Mirendan", "olives", "Nolvary"},
    {"Nolvary", "Orsdale", "Nolvarian", "horses", "Pellinor"},
    {"Pellinor", "Quenby", "Pellish", "copper", "Rhunmark"},
    {"Rhunmark", "Solhaven", "Rhunic", "maps", "Tarvosa"},
    {"Tarvosa", "Bellmoor", "Tarvosan", "spices", "Avalia"},
}};

// ---------------------------------------------------------------------------------------------------
// Document kinds. Each appends one document to `t`.

inline void story(draw& r, text& t) {
  const auto who = cast(r, 3, 40);
  const character& hero = who[0];
  const character& friend_ = who[1];
  const character& owner = who[2];
  const sv animal = r.pick(animals), friend_animal = r.pick(animals);
  const sv place = r.pick(places), far_place = r.pick(places);
  const sv object = r.pick(objects), color = r.pick(colors), food = r.pick(foods);
  const int gift = r.between(2, 9);
  if (r.percent(30)) t << "A story about " << hero.name << " and the " << object << ".\n\n";
  const sv adjective = r.pick(adjectives);
  t << (r.percent(50) ? "Once upon a time, there was " : "There once was ") << article(adjective) << " " << adjective
    << " " << animal << " named " << hero.name << ". ";
  t << capital(hero.subject) << " lived in " << article(place) << " " << place << ".";
  t << " Every morning, " << hero.name << " liked to " << r.pick(habits) << ".\n";
  t << "One day, " << hero.name << " found " << article(color) << " " << color << " " << object << " under "
    << r.pick(hiding) << ". \"What is this?\" asked " << hero.name << ".";
  t << " " << capital(hero.subject) << " showed the " << object << " to " << friend_.name << ", " << article(friend_animal)
    << " " << friend_animal << " from the " << place << ".\n";
  t << friend_.name << " looked at the " << object << " and said, \"I think it belongs to " << owner.name << ".\"";
  t << " So " << hero.name << " and " << friend_.name << " went to the " << far_place << " to find " << owner.name << ".\n";
  if (r.percent(50)) {
    t << "On the way, it started to rain, and " << hero.name << " held the " << object << " close to keep it dry.\n";
  }
  t << owner.name << " was very happy to see the " << object << " again. " << capital(owner.subject) << " gave "
    << hero.name << " and " << friend_.name << " " << gift << " " << food << " to say thank you.\n";
  t << "In the end, " << hero.name << " learned that " << r.pick(morals) << ".\n";
  if (r.percent(60)) {
    t << "\nQuestion: Who found the " << object << "?\nAnswer: " << hero.name << " found the " << object << ".\n";
    t << "Question: Whose " << object << " was it?\nAnswer: It was " << owner.name << "'s " << object << ".\n";
    t << "Question: How many " << food << " did " << owner.name << " give?\nAnswer: " << capital(owner.subject)
      << " gave " << gift << " " << food << ".\n";
  }
}

inline void arithmetic(draw& r, text& t) {
  static constexpr std::array<sv, 4> titles{"Arithmetic practice.\n", "Some sums to check:\n", "Math facts:\n",
                                            "Let us do some arithmetic.\n"};
  t << r.pick(titles);
  const int lines = r.between(5, 12);
  const int size = r.below(10), limit = size < 5 ? 20 : size < 8 ? 100 : 1000;
  for (int i = 0; i < lines; ++i) {
    const int a = r.between(0, limit), b = r.between(0, limit);
    switch (r.below(6)) {
      case 0: t << a << " + " << b << " = " << a + b << "\n"; break;
      case 1: t << std::max(a, b) << " - " << std::min(a, b) << " = " << std::max(a, b) - std::min(a, b) << "\n"; break;
      case 2: {
        const int x = r.between(0, 12), y = r.between(0, 12);
        t << x << " times " << y << " is " << x * y << ".\n";
        break;
      }
      case 3: t << "What is " << a << " plus " << b << "? It is " << a + b << ".\n"; break;
      case 4: {
        const int x = r.between(0, 50);
        t << "Half of " << 2 * x << " is " << x << ", and double " << x << " is " << 2 * x << ".\n";
        break;
      }
      default: {
        const int x = r.between(0, 10), y = r.between(0, 10);
        t << number_words[std::size_t(x)] << " plus " << number_words[std::size_t(y)] << " is "
          << (x + y <= 20 ? std::string(number_words[std::size_t(x + y)]) : std::to_string(x + y)) << ".\n";
      }
    }
  }
}

inline void counting(draw& r, text& t) {
  const int pieces = r.between(2, 4);
  for (int p = 0; p < pieces; ++p) {
    switch (r.below(4)) {
      case 0: {
        const int from = r.percent(50) ? r.between(0, 90) : r.between(100, 990), to = from + r.between(4, 12);
        t << "Let us count from " << from << " to " << to << ": ";
        for (int k = from; k <= to; ++k) t << k << (k < to ? ", " : ".\n");
        break;
      }
      case 1: {
        static constexpr std::array<int, 4> steps{2, 3, 5, 10};
        const int step = r.pick(steps), from = step * r.between(0, 10), n = r.between(5, 9);
        t << "Counting by " << step << " from " << from << ": ";
        for (int k = 0; k < n; ++k) t << from + k * step << (k + 1 < n ? ", " : ".\n");
        break;
      }
      case 2: {
        const int from = r.between(5, 20);
        t << "Counting down from " << from << ": ";
        for (int k = from; k >= 0; --k) t << k << (k > 0 ? ", " : ". Done!\n");
        break;
      }
      default: {
        const int from = r.between(0, 12), to = from + r.between(3, 8);
        t << "In words, from " << number_words[std::size_t(from)] << " to " << number_words[std::size_t(to)] << ": ";
        for (int k = from; k <= to; ++k) t << number_words[std::size_t(k)] << (k < to ? ", " : ".\n");
      }
    }
  }
}

inline void lists(draw& r, text& t) {
  const person& p = r.pick(people);
  switch (r.below(3)) {
    case 0: {
      t << "Shopping list for " << p.name << ":\n";
      const auto items = r.distinct(int(foods.size()), r.between(3, 7));
      int total = 0;
      for (int i : items) {
        const int n = r.between(1, 9);
        total += n;
        t << "- " << n << " " << foods[std::size_t(i)] << "\n";
      }
      t << "That is " << total << " things in all.\n";
      break;
    }
    case 1: {
      const auto things = r.distinct(int(objects.size()), r.between(3, 5));
      t << p.name << " packed a bag for the trip. In the bag there " << (things.size() == 1 ? "is" : "are") << " ";
      for (std::size_t i = 0; i < things.size(); ++i) {
        const sv o = objects[std::size_t(things[i])];
        t << (i == 0 ? "" : i + 1 == things.size() ? " and " : ", ") << article(o) << " " << o;
      }
      t << ". " << capital(p.subject) << " carries " << int(things.size()) << " things.\n";
      break;
    }
    default: {
      const sv letters = "abcdefghijklmnopqrstuvwxyz";
      const int from = r.between(0, 18), to = from + r.between(3, 7);
      t << "The letters from " << letters.substr(std::size_t(from), 1) << " to " << letters.substr(std::size_t(to), 1) << " are ";
      for (int k = from; k <= to; ++k) t << letters.substr(std::size_t(k), 1) << (k < to ? ", " : ".\n");
      t << "There are " << to - from + 1 << " letters in that list.\n";
      const int more = r.between(2, 4);
      for (int i = 0; i < more; ++i) {
        const int k = r.between(1, 24);
        if (r.percent(50)) t << "The letter after " << letters.substr(std::size_t(k), 1) << " is " << letters.substr(std::size_t(k + 1), 1) << ".\n";
        else t << "The letter before " << letters.substr(std::size_t(k), 1) << " is " << letters.substr(std::size_t(k - 1), 1) << ".\n";
      }
    }
  }
}

inline void records(draw& r, text& t) {
  const int n = r.between(2, 5);
  const auto who = cast(r, n, 30);
  std::vector<int> ages, homes, pets, shades, work;
  t << (r.percent(50) ? "Here are some people.\n" : "Records:\n");
  for (int i = 0; i < n; ++i) {
    ages.push_back(r.between(8, 80));
    homes.push_back(r.below(int(world.size())));
    pets.push_back(r.below(int(animals.size())));
    shades.push_back(r.below(int(colors.size())));
    work.push_back(r.below(int(jobs.size())));
    t << "name: " << who[std::size_t(i)].name << "; age: " << ages.back()
      << "; city: " << world[std::size_t(homes.back())].capital << "; pet: " << animals[std::size_t(pets.back())]
      << "; color: " << colors[std::size_t(shades.back())] << "; job: " << jobs[std::size_t(work.back())] << "\n";
  }
  t << "\n";
  const int questions = r.between(2, 5);
  for (int q = 0; q < questions; ++q) {
    const int i = r.below(n);
    const character& p = who[std::size_t(i)];
    switch (r.below(5)) {
      case 0: t << "Q: How old is " << p.name << "?\nA: " << p.name << " is " << ages[std::size_t(i)] << ".\n"; break;
      case 1:
        t << "Q: Where does " << p.name << " live?\nA: " << capital(p.subject) << " lives in "
          << world[std::size_t(homes[std::size_t(i)])].capital << ".\n";
        break;
      case 2: {
        const sv pet = animals[std::size_t(pets[std::size_t(i)])];
        t << "Q: Which pet does " << p.name << " have?\nA: " << capital(p.subject) << " has " << article(pet) << " " << pet << ".\n";
        break;
      }
      case 3:
        t << "Q: What is the favorite color of " << p.name << "?\nA: " << capital(p.possessive) << " favorite color is "
          << colors[std::size_t(shades[std::size_t(i)])] << ".\n";
        break;
      default: {
        const sv job = jobs[std::size_t(work[std::size_t(i)])];
        t << "Q: What does " << p.name << " do?\nA: " << capital(p.subject) << " is " << article(job) << " " << job << ".\n";
      }
    }
  }
}

inline void facts(draw& r, text& t) {
  const auto which = r.distinct(int(world.size()), r.between(1, 3));
  for (int i : which) {
    const country& c = world[std::size_t(i)];
    t << c.name << " is a country. The capital of " << c.name << " is " << c.capital << ". People in " << c.name
      << " speak " << c.language << ". " << c.name << " is known for its " << c.known_for << ", and its neighbour is "
      << c.neighbour << ".\n";
  }
  const int questions = r.between(1, 3);
  for (int q = 0; q < questions; ++q) {
    const country& c = world[std::size_t(r.below(int(world.size())))];
    switch (r.below(3)) {
      case 0: t << "Q: What is the capital of " << c.name << "?\nA: The capital of " << c.name << " is " << c.capital << ".\n"; break;
      case 1: t << "Q: Which language is spoken in " << c.name << "?\nA: People there speak " << c.language << ".\n"; break;
      default: t << "Q: What is " << c.name << " known for?\nA: " << c.name << " is known for its " << c.known_for << ".\n";
    }
  }
}

inline void comparisons(draw& r, text& t) {
  const int lines = r.between(3, 7);
  for (int i = 0; i < lines; ++i) {
    switch (r.below(4)) {
      case 0: {
        const int top = r.percent(50) ? 99 : 999;
        const int a = r.between(0, top);
        int b = r.between(0, top - 1);
        if (b >= a) ++b;
        t << "Which number is larger, " << a << " or " << b << "? The larger number is " << std::max(a, b) << ".\n";
        break;
      }
      case 1: {
        std::vector<int> v(std::size_t(r.between(3, 6)));
        const int top = r.percent(50) ? 99 : 999;
        for (int& x : v) x = r.between(0, top);
        t << "Sorting ";
        for (std::size_t k = 0; k < v.size(); ++k) t << v[k] << (k + 1 < v.size() ? ", " : "");
        std::sort(v.begin(), v.end());
        t << " from small to large gives ";
        for (std::size_t k = 0; k < v.size(); ++k) t << v[k] << (k + 1 < v.size() ? ", " : ".\n");
        break;
      }
      case 2: {
        const int a = r.between(1, 9), b = r.between(1, 9), c = r.between(1, 9);
        t << "The sum of " << a << ", " << b << " and " << c << " is " << a + b + c << ".\n";
        break;
      }
      default: {
        const int a = r.between(0, 999);
        t << a << " is " << (a % 2 == 0 ? "even" : "odd") << ", so " << a + 1 << " is " << (a % 2 == 0 ? "odd" : "even") << ".\n";
      }
    }
  }
}

inline void calendar(draw& r, text& t) {
  const int lines = r.between(3, 6);
  for (int i = 0; i < lines; ++i) {
    switch (r.below(4)) {
      case 0: {
        const int d = r.below(7);
        t << "After " << days[std::size_t(d)] << " comes " << days[std::size_t((d + 1) % 7)] << ".\n";
        break;
      }
      case 1: {
        const int m = r.below(12);
        t << "The month after " << months[std::size_t(m)] << " is " << months[std::size_t((m + 1) % 12)] << ", and the month before it is "
          << months[std::size_t((m + 11) % 12)] << ".\n";
        break;
      }
      case 2: {
        const int d = r.below(7);
        t << "If today is " << days[std::size_t(d)] << ", then tomorrow is " << days[std::size_t((d + 1) % 7)]
          << " and yesterday was " << days[std::size_t((d + 6) % 7)] << ".\n";
        break;
      }
      default: {
        const int m = r.below(12);
        t << months[std::size_t(m)] << " is month number " << m + 1 << " of the year.\n";
      }
    }
  }
}

inline void spelling(draw& r, text& t) {
  const int words = r.between(3, 6);
  for (int i = 0; i < words; ++i) {
    std::string word;
    switch (r.below(4)) {
      case 0: word = r.pick(animals); break;
      case 1: word = r.pick(objects); break;
      case 2: word = r.pick(places); break;
      default: word = invented_name(r); word[0] = char(word[0] - 'A' + 'a');
    }
    t << "The word " << word << " has " << int(word.size()) << " letters: ";
    for (std::size_t k = 0; k < word.size(); ++k) t << std::string_view(&word[k], 1) << (k + 1 < word.size() ? ", " : ".\n");
    if (r.percent(40)) t << "It starts with " << std::string_view(&word[0], 1) << " and ends with " << std::string_view(&word.back(), 1) << ".\n";
  }
}

// The stream tag of document streams (so that no other user of the same seed draws the same numbers).
inline constexpr std::uint64_t document_stream = 0x636f72707573ull;  // "corpus"

}  // namespace corpus_detail

// Document `index` of the corpus generated from `seed`.
inline std::string corpus_document(std::uint64_t seed, std::uint64_t index) {
  using namespace corpus_detail;
  draw r(seed, splitmix64(document_stream ^ index));
  text t;
  // Kinds weighted: stories 25%, arithmetic 15%, records 15%, counting 10%, lists 8%, facts 8%,
  // comparisons 9%, spelling 5%, calendar 5%.
  const int k = r.below(100);
  if (k < 25) story(r, t);
  else if (k < 40) arithmetic(r, t);
  else if (k < 55) records(r, t);
  else if (k < 65) counting(r, t);
  else if (k < 73) lists(r, t);
  else if (k < 81) facts(r, t);
  else if (k < 90) comparisons(r, t);
  else if (k < 95) spelling(r, t);
  else calendar(r, t);
  return std::move(t.s);
}

// Documents 0, 1, 2, ... of the corpus until their total size reaches options.bytes.
inline std::vector<std::string> default_corpus(const corpus_options& options = {}) {
  std::vector<std::string> docs;
  std::size_t total = 0;
  while (total < options.bytes) {
    docs.push_back(corpus_document(options.seed, docs.size()));
    total += docs.back().size();
  }
  return docs;
}

namespace corpus_detail {

inline constexpr sv bos_token = "<｜begin▁of▁sentence｜>";
inline constexpr sv eos_token = "<｜end▁of▁sentence｜>";
inline constexpr sv unk_token = "<unk>";

// The reduced-alphabet tokenizer for vocabularies below 2 specials + 256 bytes (see the top of the file).
inline bpe_tokenizer reduced_tokenizer(std::span<const std::string> docs, int vocab) {
  using json = nlohmann::json;
  // Byte frequencies; the kept alphabet is the most frequent bytes (ties to the smaller byte).
  std::array<std::uint64_t, 256> count{};
  for (const std::string& d : docs)
    for (const char c : d) ++count[static_cast<unsigned char>(c)];
  std::vector<int> present;
  for (int b = 0; b < 256; ++b)
    if (count[std::size_t(b)] > 0) present.push_back(b);
  std::stable_sort(present.begin(), present.end(), [&](int a, int b) { return count[std::size_t(a)] > count[std::size_t(b)]; });
  const int specials = 3;
  const std::size_t kept = std::min(present.size(), std::size_t(vocab - specials));
  present.resize(kept);
  const auto& table = tokenizer_detail::byte_table::get();
  std::sort(present.begin(), present.end(), [&](int a, int b) { return table.code[std::size_t(a)] < table.code[std::size_t(b)]; });

  // The merges are those of the full byte-level training asked for exactly the room left: words of the
  // corpus hold only corpus bytes, and ordering the kept bytes by code point keeps the trainer's
  // tie-break order, so these are the merges a trainer starting from the kept alphabet would make.
  // When the alphabet had to be cut there is no room left and no merge.
  const int merges_wanted = vocab - specials - int(kept);
  const std::vector<std::string> special{std::string(bos_token), std::string(eos_token), std::string(unk_token)};
  const bpe_tokenizer full = bpe_tokenizer::train(docs, specials + 256 + merges_wanted, special, pretokenizer::deepseek_v3);
  json file = json::parse(full.to_json());

  json vocab_json = json::object();
  for (int i = 0; i < specials; ++i) vocab_json[special[std::size_t(i)]] = i;
  for (std::size_t i = 0; i < kept; ++i) vocab_json[table.utf8[std::size_t(present[i])]] = specials + int(i);
  json merges = json::array();
  for (const auto& [left, right] : full.merges()) {
    require(vocab_json.contains(left) && vocab_json.contains(right),
            "default_tokenizer: merge (" + left + ", " + right + ") uses a token outside the reduced vocabulary");
    if (!vocab_json.contains(left + right)) vocab_json[left + right] = int(vocab_json.size());
    merges.push_back(json::array({left, right}));
  }
  json& model = file["model"];
  model["vocab"] = std::move(vocab_json);
  model["merges"] = std::move(merges);
  model["unk_token"] = std::string(unk_token);
  return bpe_tokenizer::from_json(file.dump(), "default_tokenizer(" + std::to_string(vocab) + ")");
}

}  // namespace corpus_detail

// A tokenizer trained on default_corpus(options) whose ids fit a model vocabulary of `vocab`; see the
// top of this file for the rule below 258. BOS is id 0 and EOS id 1 in every case.
inline bpe_tokenizer default_tokenizer(int vocab, const corpus_options& options = {}) {
  using namespace corpus_detail;
  require(vocab >= 4, "default_tokenizer: the vocabulary needs at least 4 ids (BOS, EOS, <unk> and one byte), found " +
                          std::to_string(vocab));
  const std::vector<std::string> docs = default_corpus(options);
  if (vocab >= 2 + 256)
    return bpe_tokenizer::train(docs, vocab, {std::string(bos_token), std::string(eos_token)}, pretokenizer::deepseek_v3);
  return reduced_tokenizer(docs, vocab);
}

// The default corpus tokenized by `tokenizer` (each document followed by EOS), ready for a
// packed_loader: what `train` uses when it is given no data.
inline token_shard default_corpus_tokens(const bpe_tokenizer& tokenizer, const corpus_options& options = {}) {
  const std::vector<std::string> docs = default_corpus(options);
  return tokenize_documents(docs, tokenizer, "default corpus (seed " + std::to_string(options.seed) + ", " +
                                                 std::to_string(options.bytes) + " bytes)");
}

}  // namespace dsx
