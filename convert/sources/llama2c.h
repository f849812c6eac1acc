// Reader for llama2.c checkpoints: the legacy (version 0) .bin export, a 7 x int32 header followed
// by f32 arrays, with a SentencePiece .model for the tokenizer.
#pragma once
#include <filesystem>
#include <string>

#include "convert/model_plan.h"

namespace octet::convert {

// `tokenizer_path`: the SentencePiece .model; empty: tokenizer.model or tok<vocab>.model beside
// the checkpoint. The header is validated and the file size checked against it exactly before
// anything is read; q and k are permuted from llama2.c's interleaved RoPE pairs (2i, 2i+1) to the
// rotate-half form (i, i + head_dim/2) the runtime uses.
ModelPlan plan_llama2c(const std::filesystem::path& checkpoint, const std::string& tokenizer_path);

}  // namespace octet::convert
