// Shared pieces of the GPU tests: every CUDA primitive is run on random inputs and compared with the host
// backend (the reference). Outputs start as NaN so an element a kernel fails to write fails the
// comparison; elements a primitive must leave alone (row padding) stay NaN on both sides and must match
// as NaN.
//
// Reference precision: f32 results are compared with the host backend run in f64 on the same (f32-exact)
// inputs, so the tolerance measures the GPU's error alone rather than the sum of two f32 rounding
// histories; f64 and bf16 results are compared with the host backend in the same type (bf16: the same
// rounding points, f32 arithmetic).
#pragma once

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/numeric.hpp"

namespace dsx::test::gpu {

// Decided before Catch's main runs: without a CUDA device the executable reports itself skipped (CTest's
// SKIP_RETURN_CODE 77).
inline const bool device_present = [] {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: skipped\n");
    std::fflush(stdout);
    std::exit(77);
  }
  return true;
}();

// The backend under test. Spelled through an alias: CUDA's own headers declare a global namespace `cuda`,
// so `using dsx::backend::cuda;` at global scope would collide with it.
using cuda_backend = backend::cuda;

template <class T>
using ref_t = std::conditional_t<std::is_same_v<T, float>, double, T>;

// ‖gpu − ref‖₂ / ‖ref‖₂ and max|gpu − ref| / max|ref| must not exceed this.
template <class T>
inline constexpr double tolerance = std::is_same_v<T, double> ? 1e-12 : std::is_same_v<T, float> ? 1e-5 : 2e-2;

template <class T>
T from_double(double v) {
  if constexpr (std::is_same_v<T, bf16>)
    return bf16(float(v));
  else
    return T(v);
}
template <class T>
double to_double(T v) {
  if constexpr (std::is_same_v<T, bf16>)
    return double(float(v));
  else
    return double(v);
}

// n values from N(0, scale²), rounded to T.
template <class T>
std::vector<T> random_values(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = from_double<T>(dist(rng));
  return v;
}

template <class T>
std::vector<T> nan_values(std::size_t n) {
  return std::vector<T>(n, from_double<T>(std::numeric_limits<double>::quiet_NaN()));
}

// The same values in another storage type (exact when widening).
template <class R, class T>
std::vector<R> convert_all(const std::vector<T>& v) {
  std::vector<R> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = from_double<R>(to_double(v[i]));
  return out;
}

// Device memory from a backend, released by it.
template <class T>
class device_array {
 public:
  device_array(backend::cuda& be, std::size_t n)
      : be_(&be), n_(n), p_(static_cast<T*>(be.allocate_bytes(n * sizeof(T)))) {}
  device_array(backend::cuda& be, const std::vector<T>& values) : device_array(be, values.size()) { upload(values); }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;
  ~device_array() { be_->free_bytes(p_); }

  T* get() const { return p_; }
  std::size_t size() const { return n_; }
  void upload(const std::vector<T>& values) {
    REQUIRE(values.size() == n_);
    be_->upload(p_, values.data(), n_ * sizeof(T));
  }
  std::vector<T> download() const {
    std::vector<T> v(n_);
    be_->download(v.data(), p_, n_ * sizeof(T));
    return v;
  }

 private:
  backend::cuda* be_;
  std::size_t n_;
  T* p_;
};

struct comparison {
  double rel_l2 = 0, max_rel = 0;
  std::size_t mismatched_nan = 0;  // NaN on one side only: unwritten output, or a NaN the reference lacks
  std::size_t n = 0;
};

template <class G, class R>
comparison compare(const std::vector<G>& gpu, const std::vector<R>& ref) {
  REQUIRE(gpu.size() == ref.size());
  comparison c;
  c.n = gpu.size();
  double diff2 = 0, ref2 = 0, max_diff = 0, max_ref = 0;
  for (std::size_t i = 0; i < gpu.size(); ++i) {
    const double g = to_double(gpu[i]), r = to_double(ref[i]);
    if (std::isnan(g) || std::isnan(r)) {
      if (std::isnan(g) != std::isnan(r)) ++c.mismatched_nan;
      continue;
    }
    const double d = std::abs(g - r);
    if (!std::isfinite(d)) {
      ++c.mismatched_nan;
      continue;
    }
    diff2 += d * d;
    ref2 += r * r;
    max_diff = std::max(max_diff, d);
    max_ref = std::max(max_ref, std::abs(r));
  }
  c.rel_l2 = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  c.max_rel = max_ref > 0 ? max_diff / max_ref : max_diff;
  return c;
}

template <class G, class R>
void check_close(const std::string& what, const std::vector<G>& gpu, const std::vector<R>& ref, double tol) {
  const comparison c = compare(gpu, ref);
  INFO(what << ": " << c.n << " values, relative L2 error " << c.rel_l2 << ", max error / max |ref| " << c.max_rel
            << ", NaN mismatches " << c.mismatched_nan << " (tolerance " << tol << ")");
  CHECK(c.mismatched_nan == 0);
  CHECK(c.rel_l2 <= tol);
  CHECK(c.max_rel <= tol);
}

// Bitwise equality of two arrays of the same type (determinism and exactness checks).
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace dsx::test::gpu
