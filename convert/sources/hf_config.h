// A Hugging Face JSON config (config.json, or an object inside it such as rope_scaling) with
// validating accessors: a missing key, a value of the wrong type or one outside its sane range
// gives octet::Error (Format) naming the file and key.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace octet::convert {

class HfConfig {
 public:
  // Reads a JSON object from a file: Io when it cannot be read, Format when it is not an object.
  static HfConfig load(const std::filesystem::path& path);
  // `where` names the object in messages, e.g. "config.json" or "config.json rope_scaling".
  HfConfig(nlohmann::json object, std::string where);

  // Missing keys and JSON nulls both count as absent.
  bool has(std::string_view key) const { return find(key) != nullptr; }
  const nlohmann::json* find(std::string_view key) const;
  const std::string& where() const { return where_; }
  const nlohmann::json& json() const { return object_; }

  int64_t integer(std::string_view key, int64_t min, int64_t max) const;
  int64_t integer_or(std::string_view key, int64_t fallback, int64_t min, int64_t max) const;
  double number(std::string_view key, double min, double max) const;
  double number_or(std::string_view key, double fallback, double min, double max) const;
  bool boolean_or(std::string_view key, bool fallback) const;
  std::string string(std::string_view key) const;
  HfConfig object(std::string_view key) const;  // a nested object, e.g. rope_scaling

 private:
  const nlohmann::json& require(std::string_view key) const;
  [[noreturn]] void invalid(std::string_view key, const std::string& why) const;

  nlohmann::json object_;
  std::string where_;
};

// Reads a whole small text file (configs, tokenizer files); Io naming it on failure.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace octet::convert
