// The dsx side of generate.py (not part of the test suite): writes, into OUT_DIR, the fixture tokenizers
// of DATA_DIR re-saved by bpe_tokenizer::save (resaved_<name>.tokenizer.json) and the tokenizers that
// bpe_tokenizer::train makes from DATA_DIR/train_corpus.jsonl with DATA_DIR/train_config.json
// (cpp_trained_<kind>.tokenizer.json). generate.py then checks them with the HF library.
//
// Usage: save_with_dsx DATA_DIR OUT_DIR
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/data/tokenizer.hpp"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: save_with_dsx DATA_DIR OUT_DIR\n";
    return 2;
  }
  const fs::path data = argv[1], out = argv[2];
  try {
    dsx::bpe_tokenizer::load(data / "gpt2_style.tokenizer.json").save(out / "resaved_gpt2_style.tokenizer.json");
    dsx::bpe_tokenizer::load(data / "deepseek_v3.tokenizer.json.gz").save(out / "resaved_deepseek_v3.tokenizer.json");

    std::vector<std::string> texts;
    std::ifstream corpus(data / "train_corpus.jsonl");
    for (std::string line; std::getline(corpus, line);) texts.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
    std::ifstream config_file(data / "train_config.json");
    const nlohmann::json config = nlohmann::json::parse(config_file);
    for (const auto& [kind, name] : {std::pair{dsx::pretokenizer::gpt2, "gpt2"}, std::pair{dsx::pretokenizer::deepseek_v3, "deepseek_v3"}}) {
      const nlohmann::json& c = config.at(name);
      const auto trained = dsx::bpe_tokenizer::train(texts, c.at("vocab_size").get<int>(),
                                                     c.at("special_tokens").get<std::vector<std::string>>(), kind);
      trained.save(out / (std::string("cpp_trained_") + name + ".tokenizer.json"));
    }
  } catch (const std::exception& e) {
    std::cerr << "save_with_dsx: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
