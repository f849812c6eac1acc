// The decoder-only LLaMA family (LLaMA 1/2/3, Mistral, Qwen2, SmolLM, llama2.c): general.architecture "llama".
#pragma once
#include <memory>

#include "engine/model.h"

namespace octet {

// Validates the "llama.*" metadata and every tensor against it; throws octet::Error (Format).
std::shared_ptr<const LanguageModel> load_llama(std::shared_ptr<const qbin::File> file,
                                                std::unique_ptr<Tokenizer> tokenizer);

}  // namespace octet
