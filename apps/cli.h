// Command-line helpers the apps share: errors, numbers and cache types as their flags spell them.
#pragma once

#include <octet.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace cli {

[[noreturn]] inline void die(const std::string& message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  std::exit(1);
}

inline double parse_number(const std::string& flag, const char* text) {
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0') die(flag + ": not a number: \"" + text + "\"");
  return value;
}

// --kv-type: the names llama.cpp's --cache-type-k uses.
inline int32_t parse_kv_type(const std::string& text) {
  if (text == "f16") return OCTET_KV_F16;
  if (text == "f32") return OCTET_KV_F32;
  if (text == "q8_0") return OCTET_KV_Q8_0;
  die("--kv-type: \"" + text + "\" is not f16, f32 or q8_0");
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace cli
