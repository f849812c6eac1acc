#include "convert/sources/shard_index.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace octet::convert {

using json = nlohmann::json;

ShardIndex read_shard_index(const std::filesystem::path& index_path) {
  ShardIndex index;
  index.path = index_path.string();
  const auto bad = [&](const std::string& why) { fail(ErrorCode::Format, index.path + ": " + why); };
  std::ifstream in(index_path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) fail(ErrorCode::Io, "cannot read " + index.path);

  // A JSON parser keeps the last of two equal keys; a tensor listed twice is refused instead.
  std::vector<std::set<std::string>> keys;  // of each object being parsed
  std::string duplicate;
  const auto find_duplicates = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) keys.emplace_back();
    if (event == json::parse_event_t::object_end) keys.pop_back();
    if (event == json::parse_event_t::key && !keys.back().insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  const json root = json::parse(text.str(), find_duplicates, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) bad("not a JSON object");
  if (!duplicate.empty()) bad("\"" + duplicate + "\" is listed twice");
  const auto weight_map = root.find("weight_map");
  if (weight_map == root.end() || !weight_map->is_object() || weight_map->empty()) bad("missing or empty \"weight_map\" object");

  std::set<std::string> shards;
  for (const auto& [tensor, shard] : weight_map->items()) {
    // A plain file name beside the index: never a path that leaves the folder.
    const std::string name = shard.is_string() ? shard.get<std::string>() : "";
    if (name.empty() || name == "." || name == ".." || name.find_first_of(std::string("/\\\0", 3)) != std::string::npos)
      bad("tensor \"" + tensor + "\" maps to an invalid file name " + shard.dump());
    index.weight_map.emplace_back(tensor, name);
    shards.insert(name);
  }
  index.shards.assign(shards.begin(), shards.end());
  return index;
}

}  // namespace octet::convert
