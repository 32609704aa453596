// The special tokens of DeepSeek-V3's chat format and R1's reasoning tags, spelled as in the released
// tokenizer.json (the bars are U+FF5C, the space in begin▁of▁sentence is U+2581).
//
//   <｜begin▁of▁sentence｜>{system}<｜User｜>{question}<｜Assistant｜><think>
//   {reasoning}
//   </think>
//   {answer}<｜end▁of▁sentence｜>
#pragma once

#include <string_view>

namespace dsx::post {

inline constexpr std::string_view bos_token = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view eos_token = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view user_token = "<｜User｜>";
inline constexpr std::string_view assistant_token = "<｜Assistant｜>";
inline constexpr std::string_view think_open = "<think>";
inline constexpr std::string_view think_close = "</think>";

}  // namespace dsx::post
