// MarianMT (Hugging Face opus-mt folders) -> the "encdec" architecture: config.json,
// model.safetensors or pytorch_model.bin (each maybe sharded), source.spm/target.spm with
// vocab.json (and target_vocab.json for separate vocabularies), generation_config.json.
#pragma once
#include <filesystem>

#include "convert/model_plan.h"
#include "convert/sources/hf_config.h"

namespace octet::convert {

// `config` is the folder's config.json, already loaded (architectures: MarianMTModel). The metadata
// does not depend on which weight file was read, so both give byte-identical output.
ModelPlan plan_marian(const std::filesystem::path& folder, const HfConfig& config);

}  // namespace octet::convert
