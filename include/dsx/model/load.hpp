// Loading an HF model folder into a transformer's parameter buffer. The folder is checked against the
// compiled configuration first (io/model_dir.hpp): a different config.json, a missing tensor or a wrong
// shape is an error naming the tensor, the expected and the found; values are converted from the file's
// dtype to the model's storage type.
#pragma once

#include <filesystem>
#include <vector>

#include "dsx/io/model_dir.hpp"

namespace dsx {

template <class Model>
void load_weights(Model& model, const std::filesystem::path& dir) {
  const model_dir files = open_model_dir(dir, Model::config);
  std::vector<typename Model::T> values;
  for (const auto& e : model.params().entries()) {
    if (e.spec.shared_copy()) continue;  // the same tensor as the main embedding / head
    const safetensors::reader* shard = nullptr;
    const safetensors::tensor_info& info = files.tensor(e.name, &shard);
    values.resize(std::size_t(e.spec.numel()));
    shard->read_into(info, values.data());
    model.set_param(e, values);
  }
}

}  // namespace dsx
