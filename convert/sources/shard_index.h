// The index of a sharded Hugging Face checkpoint (model.safetensors.index.json,
// pytorch_model.bin.index.json): its "weight_map" from tensor names to the shard files holding
// them. One reader for every weight format and for the hub download, so that all of them refuse
// the same hostile indexes: a shard that is not a plain file name beside the index (an absolute
// path, "..", a subfolder), a tensor listed twice, a shard that is missing or lacks a tensor
// listed for it, a tensor held by two shards.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/error.h"

namespace octet::convert {

struct ShardIndex {
  std::string path;                                             // the index file, for messages
  std::vector<std::pair<std::string, std::string>> weight_map;  // tensor name -> shard file name
  std::vector<std::string> shards;                              // the distinct shard names, sorted
};

// Reads and validates an index; throws Io or Format naming it.
ShardIndex read_shard_index(const std::filesystem::path& index_path);

// Opens every shard of an index once (File: SafetensorsFile or PytorchFile, constructed from a
// path and listing its tensors by name) and maps each listed tensor to its entry in its shard.
template <class File, class Tensor>
void open_shards(const std::filesystem::path& index_path, std::vector<std::unique_ptr<File>>& files,
                 std::map<std::string, const Tensor*, std::less<>>& by_name) {
  const ShardIndex index = read_shard_index(index_path);
  std::map<std::string, const File*, std::less<>> shard_files;
  std::map<std::string, std::string, std::less<>> holder;  // tensor name -> the shard that holds it
  for (const std::string& shard : index.shards) {
    const std::filesystem::path shard_path = index_path.parent_path() / shard;
    if (!std::filesystem::exists(shard_path)) fail(ErrorCode::Io, index.path + ": shard " + shard + " is missing");
    files.push_back(std::make_unique<File>(shard_path.string()));
    shard_files.emplace(shard, files.back().get());
    // Which copy a loader would take is unclear: refused.
    for (const auto& [name, tensor] : files.back()->tensors()) {
      const auto [other, fresh] = holder.emplace(name, shard);
      if (!fresh)
        fail(ErrorCode::Format, index.path + ": tensor \"" + name + "\" is in two shards, " + other->second + " and " + shard);
    }
  }
  for (const auto& [name, shard] : index.weight_map) {
    const auto& tensors = shard_files.at(shard)->tensors();
    const auto found = tensors.find(name);
    if (found == tensors.end())
      fail(ErrorCode::Format, index.path + ": tensor \"" + name + "\" is listed in " + shard + ", which does not contain it");
    by_name.emplace(name, &found->second);
  }
}

}  // namespace octet::convert
