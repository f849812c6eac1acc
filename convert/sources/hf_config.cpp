#include "convert/sources/hf_config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "engine/error.h"

namespace octet::convert {

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ErrorCode::Io, "cannot open " + path.string());
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) fail(ErrorCode::Io, "cannot read " + path.string());
  return text.str();
}

HfConfig HfConfig::load(const std::filesystem::path& path) {
  nlohmann::json object = nlohmann::json::parse(read_text_file(path), nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded()) fail(ErrorCode::Format, path.string() + ": not valid JSON");
  if (!object.is_object()) fail(ErrorCode::Format, path.string() + ": not a JSON object");
  return HfConfig(std::move(object), path.string());
}

HfConfig::HfConfig(nlohmann::json object, std::string where) : object_(std::move(object)), where_(std::move(where)) {
  if (!object_.is_object()) fail(ErrorCode::Format, where_ + ": not a JSON object");
}

const nlohmann::json* HfConfig::find(std::string_view key) const {
  const auto found = object_.find(key);
  return found == object_.end() || found->is_null() ? nullptr : &*found;
}

const nlohmann::json& HfConfig::require(std::string_view key) const {
  const nlohmann::json* value = find(key);
  if (value == nullptr) fail(ErrorCode::Format, where_ + ": missing key \"" + std::string(key) + "\"");
  return *value;
}

void HfConfig::invalid(std::string_view key, const std::string& why) const {
  fail(ErrorCode::Format, where_ + ": \"" + std::string(key) + "\" " + why);
}

int64_t HfConfig::integer(std::string_view key, int64_t min, int64_t max) const {
  const nlohmann::json& value = require(key);
  if (!value.is_number()) invalid(key, "= " + value.dump() + " is not an integer");
  // Compared as a double so any magnitude, even one no integer type holds, is checked safely.
  const double number = value.get<double>();
  if (!(number >= static_cast<double>(min) && number <= static_cast<double>(max)))
    invalid(key, "= " + value.dump() + " is out of range [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  if (value.is_number_float() && std::floor(number) != number) invalid(key, "= " + value.dump() + " is not an integer");
  return value.is_number_float() ? static_cast<int64_t>(number) : value.get<int64_t>();
}

int64_t HfConfig::integer_or(std::string_view key, int64_t fallback, int64_t min, int64_t max) const {
  return has(key) ? integer(key, min, max) : fallback;
}

double HfConfig::number(std::string_view key, double min, double max) const {
  const nlohmann::json& value = require(key);
  if (!value.is_number()) invalid(key, "= " + value.dump() + " is not a number");
  const double number = value.get<double>();
  if (!(number >= min && number <= max))  // also rejects NaN
    invalid(key, "= " + value.dump() + " is out of range [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  return number;
}

double HfConfig::number_or(std::string_view key, double fallback, double min, double max) const {
  return has(key) ? number(key, min, max) : fallback;
}

bool HfConfig::boolean_or(std::string_view key, bool fallback) const {
  const nlohmann::json* value = find(key);
  if (value == nullptr) return fallback;
  if (!value->is_boolean()) invalid(key, "= " + value->dump() + " is not a boolean");
  return value->get<bool>();
}

std::string HfConfig::string(std::string_view key) const {
  const nlohmann::json& value = require(key);
  if (!value.is_string()) invalid(key, "= " + value.dump() + " is not a string");
  return value.get<std::string>();
}

HfConfig HfConfig::object(std::string_view key) const {
  const nlohmann::json& value = require(key);
  if (!value.is_object()) invalid(key, "is not an object");
  return HfConfig(value, where_ + " " + std::string(key));
}

}  // namespace octet::convert
