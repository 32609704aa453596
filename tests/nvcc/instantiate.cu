// Compiles the host-side library with nvcc (C++20, sm_90): every host primitive and layer instantiated
// for float with the host backend, the tiny model itself, the configuration checks and counts evaluated through a class-type
// non-type template argument (the pattern dsx::transformer<config, ...> uses), and the scalar types that
// are written once for host and device called from a kernel. Nothing runs; compiling is the test.
#include <tuple>

#include "dsx/dsx.hpp"

namespace {

using dsx::backend::host;

// Taking the address of a specialization instantiates it, whatever its parameter list.
[[maybe_unused]] const auto host_primitives = std::make_tuple(
    &dsx::backend::gemm<float>, &dsx::backend::gemm_strided_batched<float>,
    &dsx::backend::rmsnorm_forward<float>, &dsx::backend::rmsnorm_backward<float>,
    &dsx::backend::rope_apply<float>, &dsx::backend::swiglu_forward<float>,
    &dsx::backend::swiglu_backward<float>, &dsx::backend::embedding_forward<float>,
    &dsx::backend::embedding_backward<float>, &dsx::backend::cross_entropy<float>,
    &dsx::backend::add_into<float>, &dsx::backend::copy_rows<float>);

[[maybe_unused]] const auto layers = std::make_tuple(
    &dsx::mlp<float>::forward<host>, &dsx::mlp<float>::backward<host>);

// The configuration as a template argument, as the model types take it.
template <dsx::model_config C>
struct model_facts {
  static_assert(dsx::validate(C));
  static constexpr std::int64_t total = dsx::params_total(C);
  static constexpr std::int64_t activated = dsx::params_activated(C);
};
static_assert(model_facts<dsx::presets::tiny_v3>::total == dsx::params_total(dsx::presets::tiny_v3));
static_assert(model_facts<dsx::presets::tiny_v3>::activated == dsx::params_activated(dsx::presets::tiny_v3));
static_assert(model_facts<dsx::presets::v3_671b>::total == dsx::params_total(dsx::presets::v3_671b));
static_assert(model_facts<dsx::presets::v3_671b>::activated == dsx::params_activated(dsx::presets::v3_671b));

}  // namespace

// The whole tiny model (every layer, forward, backward, greedy decoding) on the host backend.
template class dsx::transformer<dsx::presets::tiny_v3, dsx::precision::f32, dsx::backend::host>;

// DSX_HD code in device code: bf16 round trip.
__global__ void bf16_round_trip(float* x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = float(dsx::bf16(x[i]));
}

