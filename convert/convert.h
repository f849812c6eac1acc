// The converter: checkpoints as people download them -> one .qbin file (docs/qbin.md), in C++
// with no Python involved. Sources: Hugging Face folders (config.json + safetensors + tokenizer
// files) of the llama family, and llama2.c .bin checkpoints. The C API's octet_convert wraps this.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "kernels/blocks.h"

namespace octet::convert {

struct Options {
  // Type of the 2-D weight matrices. Block types need rows that are a multiple of 32 elements; a
  // tensor whose rows are not falls back to f16, as general.quantization records.
  DType quant = DType::Q8_0;
  std::optional<DType> embedding_type, output_type;  // overrides for the token embedding / output head
  std::string tokenizer_path;  // llama2.c: the SentencePiece .model; empty: look beside the checkpoint
};

struct Stats {
  int64_t tensors = 0;
  uint64_t bytes = 0;       // size of the written file
  int64_t parameters = 0;   // elements over all tensors
  double bits_per_weight = 0;  // over the matrices (the tensors that were quantized)
  double seconds = 0;
};

// Called after each tensor is written: bytes of tensor data done and in all, and its name.
using Progress = std::function<void(uint64_t done, uint64_t total, const std::string& tensor)>;

// `input`: a Hugging Face model folder (or a file inside it, such as its config.json), or a
// llama2.c .bin checkpoint. Throws octet::Error; on failure no partial output file is left.
Stats convert(const std::string& input, const std::string& output, const Options& options, const Progress& progress);

}  // namespace octet::convert
