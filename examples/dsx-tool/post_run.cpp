// The post-training subcommands instantiated for the compiled model, in a translation unit of their own:
// the recipe's templates are about half of the tool's compile time, and the two halves build in parallel.
#include DSX_MODEL_HEADER
#include "post.hpp"

namespace dsx::tool {

int run_post(const post_args& args, const post_commands& commands) {
  return post_tool<dsx_model::config>(args).run(commands);
}

}  // namespace dsx::tool
