// The one exception type dsx throws for bad input (files, configs, flags) and broken invariants.
// Messages name the file or field, what was expected and what was found.
#pragma once

#include <stdexcept>
#include <string>

namespace dsx {

struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Values that became NaN or Inf inside the model (e.g. router scores after a diverged update), as
// opposed to malformed input: a trainer may count the step as non-finite and skip it.
struct non_finite_error : error {
  using error::error;
};

// Throws dsx::error(message) when `cond` is false. For checks at API boundaries, not hot loops.
inline void require(bool cond, const std::string& message) {
  if (!cond) throw error(message);
}

}  // namespace dsx
