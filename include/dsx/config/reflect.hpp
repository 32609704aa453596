// Field-by-field reflection of the configuration structs through Boost.Hana: the one list of a
// configuration's fields, so that printing, diffing and code generation (io/hf_config.hpp: to_cpp,
// config_differences) never repeat it. Host-only (Hana stays out of CUDA translation units that do not
// need it).
#pragma once

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/keys.hpp>
#include <boost/hana/accessors.hpp>
#include <boost/hana/first.hpp>
#include <boost/hana/second.hpp>
#include <boost/hana/string.hpp>
#include <string>
#include <type_traits>

#include "dsx/config/model_config.hpp"

BOOST_HANA_ADAPT_STRUCT(dsx::mla_config, heads, q_lora, kv_lora, nope, rope, v);
BOOST_HANA_ADAPT_STRUCT(dsx::moe_config, routed, shared, top_k, groups, top_groups, score, norm_topk, route_scale, bias,
                        inter);
BOOST_HANA_ADAPT_STRUCT(dsx::yarn_config, factor, original_max_positions, beta_fast, beta_slow, mscale, mscale_all_dim);
BOOST_HANA_ADAPT_STRUCT(dsx::rope_config, theta, yarn);
BOOST_HANA_ADAPT_STRUCT(dsx::model_config, vocab, hidden, layers, dense_layers, dense_inter, mla, moe, rope, rms_eps,
                        mtp_depth, max_positions);

namespace dsx {

template <class S>
inline constexpr bool is_reflected_struct = boost::hana::Struct<S>::value;

// Calls f(path, value) for every leaf field of `s` in declaration order, with paths such as "moe.top_k";
// nested structs are walked, not passed to f.
template <class S, class F>
void for_each_field(const S& s, F&& f, const std::string& prefix = {}) {
  boost::hana::for_each(boost::hana::accessors<S>(), [&](auto pair) {
    const std::string path = prefix + boost::hana::to<const char*>(boost::hana::first(pair));
    const auto& value = boost::hana::second(pair)(s);
    using V = std::decay_t<decltype(value)>;
    if constexpr (is_reflected_struct<V>) for_each_field(value, f, path + ".");
    else f(path, value);
  });
}

// Calls f(path, a_value, b_value) for every leaf field of two structs of the same type.
template <class S, class F>
void for_each_field_pair(const S& a, const S& b, F&& f, const std::string& prefix = {}) {
  boost::hana::for_each(boost::hana::accessors<S>(), [&](auto pair) {
    const std::string path = prefix + boost::hana::to<const char*>(boost::hana::first(pair));
    const auto& get = boost::hana::second(pair);
    using V = std::decay_t<decltype(get(a))>;
    if constexpr (is_reflected_struct<V>) for_each_field_pair(get(a), get(b), f, path + ".");
    else f(path, get(a), get(b));
  });
}

}  // namespace dsx
