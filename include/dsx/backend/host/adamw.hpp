// AdamW (Loshchilov & Hutter: Adam with decoupled weight decay) over one flat parameter buffer, the host
// reference of the optimizer step. With g = grad_scale · grad and t = step (1-based), per element:
//   m ← β1 · m + (1 − β1) · g
//   v ← β2 · v + (1 − β2) · g²
//   p ← p · (1 − lr · λ) − lr / (1 − β1^t) · m / (√v / √(1 − β2^t) + ε)
// where λ = weight_decay on elements whose range decays and 0 elsewhere (norm weights, biases). This is
// torch.optim.AdamW's update, arranged as it computes it (decay first, then step_size · (m / denominator)).
// grad_scale folds a global-norm clipping factor into the same pass. Arithmetic is in accum_t<T> (f32 for
// f32 and bf16 parameters); the moments are stored as M (float or bf16), parameters and gradients as T.
//
// With a master copy (adamw_update_master): the update above runs on an f32 copy of the weights and the
// parameters the model reads become its rounding to T. Updates below T's resolution (for bf16 weights,
// any step smaller than 2⁻⁹ of the weight) then accumulate in the master instead of being rounded away
// every step: the f32 master weights of mixed-precision training (DeepSeek-V3 report §3.3).
//
// The decay mask is a list of ranges [begin, end) with flags, in order and tiling [0, n): one range per
// parameter tensor (or per run of tensors with the same flags) of the flat buffer. A range that is not
// trained (the routing bias, which moves by its own rule) is left as it is: its parameters and moments
// are neither read nor written, nor is its part of a master copy.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "dsx/backend/host/host.hpp"
#include "dsx/core/error.hpp"
#include "dsx/core/macros.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

struct adamw_params {
  double lr = 0;             // learning rate of this step (from the schedule)
  double beta1 = 0.9;        // DeepSeek-V3 pre-training: β1 = 0.9, β2 = 0.95, weight decay 0.1 (report §4.2)
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  std::int64_t step = 1;     // 1-based index of this step, for the bias corrections
  double grad_scale = 1.0;   // gradients are multiplied by this first (e.g. a clipping factor)
};

struct decay_range {
  std::int64_t begin = 0, end = 0;  // elements [begin, end) of the flat buffer
  bool decay = true;                // weight decay applies to these elements
  bool trained = true;              // false: the optimizer leaves these elements as they are
};

// Throws unless the hyperparameters are usable: lr, eps, weight_decay ≥ 0 and finite, β in [0, 1),
// step ≥ 1, grad_scale finite and ≥ 0.
inline void check_adamw(const adamw_params& p) {
  auto fail = [](const std::string& field, const std::string& rule, double value) {
    throw error("adamw: " + field + " is " + std::to_string(value) + ", expected " + rule);
  };
  if (!(p.lr >= 0 && std::isfinite(p.lr))) fail("lr", "a finite value >= 0", p.lr);
  if (!(p.beta1 >= 0 && p.beta1 < 1)) fail("beta1", "[0, 1)", p.beta1);
  if (!(p.beta2 >= 0 && p.beta2 < 1)) fail("beta2", "[0, 1)", p.beta2);
  if (!(p.eps >= 0 && std::isfinite(p.eps))) fail("eps", "a finite value >= 0", p.eps);
  if (!(p.weight_decay >= 0 && std::isfinite(p.weight_decay))) fail("weight_decay", "a finite value >= 0", p.weight_decay);
  if (p.step < 1) fail("step", "at least 1 (steps count from 1)", double(p.step));
  if (!(p.grad_scale >= 0 && std::isfinite(p.grad_scale))) fail("grad_scale", "a finite value >= 0", p.grad_scale);
}

// Throws unless ranges[0 .. count) are in order and tile [0, n): the first begins at 0, each begins where
// the previous ends, none is reversed, the last ends at n. Empty ranges are allowed.
inline void check_decay_ranges(const decay_range* ranges, std::int64_t count, std::int64_t n) {
  if (n < 0) throw error("adamw: " + std::to_string(n) + " elements, expected at least 0");
  if (count < 0 || (count > 0 && !ranges)) throw error("adamw: the decay ranges are missing");
  if (count == 0) {
    if (n > 0) throw error("adamw: no decay ranges for " + std::to_string(n) + " elements");
    return;
  }
  std::int64_t expected_begin = 0;
  for (std::int64_t r = 0; r < count; ++r) {
    if (ranges[r].begin != expected_begin)
      throw error("adamw: decay range " + std::to_string(r) + " begins at " + std::to_string(ranges[r].begin) +
                  ", expected " + std::to_string(expected_begin) + " (the ranges must tile [0, n) in order)");
    if (ranges[r].end < ranges[r].begin)
      throw error("adamw: decay range " + std::to_string(r) + " is [" + std::to_string(ranges[r].begin) + ", " +
                  std::to_string(ranges[r].end) + "), which ends before it begins");
    expected_begin = ranges[r].end;
  }
  if (expected_begin != n)
    throw error("adamw: the decay ranges end at " + std::to_string(expected_begin) + ", expected n = " +
                std::to_string(n));
}

// The per-step constants of the update in the arithmetic type A, computed once in f64.
template <class A>
struct adamw_constants {
  A beta1, beta2, one_minus_beta1, one_minus_beta2;
  A step_size;  // lr / (1 − β1^t)
  A sqrt_bc2;   // √(1 − β2^t)
  A eps;
  A decay;      // 1 − lr · weight_decay, for decayed elements
  A grad_scale;
};

template <class A>
adamw_constants<A> adamw_constants_of(const adamw_params& p) {
  const double t = double(p.step);
  return {A(p.beta1),
          A(p.beta2),
          A(1 - p.beta1),
          A(1 - p.beta2),
          A(p.lr / (1 - std::pow(p.beta1, t))),
          A(std::sqrt(1 - std::pow(p.beta2, t))),
          A(p.eps),
          A(1 - p.lr * p.weight_decay),
          A(p.grad_scale)};
}

// One element's update (the formulas at the top), written once for host and device. The new moments
// feed the parameter update before they are rounded to M. P is the type the update is applied to: the
// parameters' own, or the f32 master copy of narrower parameters (gradients G).
template <class A, class P, class G, class M>
DSX_HD void adamw_element(const adamw_constants<A>& c, bool decay, P& p, G g, M& m, M& v) {
  using std::sqrt;
  const A gs = convert<A>(g) * c.grad_scale;
  const A m1 = c.beta1 * convert<A>(m) + c.one_minus_beta1 * gs;
  const A v1 = c.beta2 * convert<A>(v) + c.one_minus_beta2 * gs * gs;
  A x = convert<A>(p);
  if (decay) x *= c.decay;
  x -= c.step_size * (m1 / (sqrt(v1) / c.sqrt_bc2 + c.eps));
  p = convert<P>(x);
  m = convert<M>(m1);
  v = convert<M>(v1);
}

template <class T, class M>
void check_adamw_types() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16>,
                "adamw: parameters must be double, float or bf16");
  static_assert(std::is_same_v<M, double> || std::is_same_v<M, float> || std::is_same_v<M, bf16>,
                "adamw: moments must be double, float or bf16");
}

namespace detail {
// Calls f(i, decay) for every element of the trained ranges, the elements split among OpenMP threads.
template <class F>
void for_trained_elements(const decay_range* ranges, std::int64_t range_count, F&& f) {
#pragma omp parallel
  for (std::int64_t r = 0; r < range_count; ++r) {
    if (!ranges[r].trained) continue;
    const bool decay = ranges[r].decay;
#pragma omp for schedule(static) nowait
    for (std::int64_t i = ranges[r].begin; i < ranges[r].end; ++i) f(i, decay);
  }
}
}  // namespace detail

// One AdamW step over params, grads, m, v (n elements each); m and v start at zero before step 1.
// ranges (range_count): the decay mask, checked by check_decay_ranges.
template <class T, class M>
void adamw_update(host&, T* params, const T* grads, M* m, M* v, std::int64_t n, const adamw_params& p,
                  const decay_range* ranges, std::int64_t range_count) {
  check_adamw_types<T, M>();
  check_adamw(p);
  check_decay_ranges(ranges, range_count, n);
  const adamw_constants<accum_t<T>> c = adamw_constants_of<accum_t<T>>(p);
  detail::for_trained_elements(ranges, range_count, [&](std::int64_t i, bool decay) {
    adamw_element(c, decay, params[i], grads[i], m[i], v[i]);
  });
}

// One AdamW step on the f32 master copy `master` of params (n elements each, like grads, m and v): the
// update runs on the master, then params[i] = master[i] rounded to T. Untrained ranges are skipped, so
// a rule that moves those parameters outside the optimizer (the routing bias update) stays in effect.
// Before the first step the master holds the parameters widened (convert_copy).
template <class T, class M>
void adamw_update_master(host&, float* master, T* params, const T* grads, M* m, M* v, std::int64_t n,
                         const adamw_params& p, const decay_range* ranges, std::int64_t range_count) {
  check_adamw_types<T, M>();
  static_assert(sizeof(T) < sizeof(float), "adamw: a master copy is for parameters narrower than f32");
  check_adamw(p);
  check_decay_ranges(ranges, range_count, n);
  const adamw_constants<float> c = adamw_constants_of<float>(p);
  detail::for_trained_elements(ranges, range_count, [&](std::int64_t i, bool decay) {
    adamw_element(c, decay, master[i], grads[i], m[i], v[i]);
    params[i] = convert<T>(master[i]);
  });
}

}  // namespace dsx::backend
