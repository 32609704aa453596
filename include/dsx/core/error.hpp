// The one exception type dsx throws for bad input (files, configs, flags) and broken invariants.
// Messages name the file or field, what was expected and what was found.
#pragma once

#include <stdexcept>
#include <string>

namespace dsx {

struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws dsx::error(message) when `cond` is false. For checks at API boundaries, not hot loops.
inline void require(bool cond, const std::string& message) {
  if (!cond) throw error(message);
}

}  // namespace dsx
