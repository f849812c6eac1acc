// Tokenizers as models ship them -> the "tokenizer.*" metadata keys (docs/qbin.md). The tokenizer
// layer turns the vocabulary files into metadata; this adds the special-token settings around
// them (BOS, every EOS id, whether to prepend BOS, the chat template).
#pragma once
#include <filesystem>

#include "convert/sources/hf_config.h"
#include "engine/qbin.h"

namespace octet::convert {

// A SentencePiece .model file, with BOS and EOS as the model defines them and add_bos set.
void add_sentencepiece_tokenizer(const std::filesystem::path& model_file, qbin::Metadata& out);

// A Hugging Face folder: tokenizer.model (SentencePiece, preferred: Llama 2 and Mistral ship a
// tokenizer.json too, which is not byte-level) or tokenizer.json (byte-level BPE), then
// tokenizer_config.json, generation_config.json and `config` for the special tokens.
// Throws (Io) naming the files it looked for when the folder has no tokenizer.
void add_hf_tokenizer(const std::filesystem::path& folder, const HfConfig& config, qbin::Metadata& out);

}  // namespace octet::convert
