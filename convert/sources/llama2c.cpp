#include "convert/sources/llama2c.h"

#include <cstring>
#include <map>
#include <memory>

#include "convert/archs/llama.h"
#include "convert/mapped_file.h"
#include "convert/sources/tokenizer_files.h"
#include "engine/error.h"

namespace octet::convert {
namespace {

constexpr uint64_t kHeaderBytes = 7 * sizeof(int32_t);

struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// Where a tensor's f32 data starts in the file, and for q and k the head size whose interleaved
// rotary pairs must be regrouped (0: rows are copied as they are).
struct Source {
  const float* data;
  int64_t cols;
  int64_t rope_head_dim;
};

// Row r of a rotate-half head is row source_row(r) of the interleaved one: within each head,
// output row i < half comes from 2i and row half + i from 2i + 1.
int64_t interleaved_source_row(int64_t row, int64_t head_dim) {
  const int64_t head = row / head_dim, within = row % head_dim, half = head_dim / 2;
  return head * head_dim + (within < half ? 2 * within : 2 * (within - half) + 1);
}

LlamaHyperParams read_header(const MappedFile& file) {
  const std::string& path = file.path();
  if (file.size() < kHeaderBytes)
    fail(ErrorCode::Format, path + ": " + std::to_string(file.size()) + " bytes is too short for a llama2.c header");
  Header h;
  std::memcpy(&h, file.data(), kHeaderBytes);
  const std::string header = "header (dim " + std::to_string(h.dim) + ", hidden_dim " + std::to_string(h.hidden_dim) +
                             ", n_layers " + std::to_string(h.n_layers) + ", n_heads " + std::to_string(h.n_heads) +
                             ", n_kv_heads " + std::to_string(h.n_kv_heads) + ", vocab_size " +
                             std::to_string(h.vocab_size) + ", seq_len " + std::to_string(h.seq_len) + ")";
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) fail(ErrorCode::Format, path + ": invalid llama2.c " + header + ": " + what);
  };
  check(h.dim > 0 && h.dim <= kLlamaMaxDim, "dim out of range");
  check(h.hidden_dim > 0 && h.hidden_dim <= kLlamaMaxDim, "hidden_dim out of range");
  check(h.n_layers > 0 && h.n_layers <= kLlamaMaxLayers, "n_layers out of range");
  check(h.n_heads > 0 && h.dim % h.n_heads == 0, "dim is not a multiple of n_heads");
  check(h.n_kv_heads > 0 && h.n_heads % h.n_kv_heads == 0, "n_heads is not a multiple of n_kv_heads");
  check((h.dim / h.n_heads) % 2 == 0, "the head size is odd");
  const int64_t vocab = h.vocab_size < 0 ? -static_cast<int64_t>(h.vocab_size) : h.vocab_size;  // int64: -INT32_MIN fits
  check(vocab > 0 && vocab <= kLlamaMaxDim, "vocab_size out of range");
  check(h.seq_len > 0 && h.seq_len <= kLlamaMaxContext, "seq_len out of range");

  LlamaHyperParams params;
  params.vocab_size = vocab;
  params.dim = h.dim;
  params.n_layers = h.n_layers;
  params.n_heads = h.n_heads;
  params.n_kv_heads = h.n_kv_heads;
  params.head_dim = h.dim / h.n_heads;
  params.ffn_dim = h.hidden_dim;
  params.context_length = h.seq_len;
  params.rms_eps = 1e-5f;
  params.rope_theta = 10000.0f;
  params.tied_output = h.vocab_size > 0;  // a negative vocab_size announces a separate classifier
  return params;
}

std::filesystem::path find_tokenizer(const std::filesystem::path& checkpoint, const std::string& tokenizer_path,
                                     int64_t vocab_size) {
  if (!tokenizer_path.empty()) {
    if (std::filesystem::path(tokenizer_path).extension() == ".bin")
      fail(ErrorCode::InvalidArgument, tokenizer_path + " looks like a llama2.c tokenizer.bin; Octet needs the "
                                       "SentencePiece .model it was exported from");
    return tokenizer_path;
  }
  const std::filesystem::path folder = checkpoint.parent_path();
  const std::filesystem::path candidates[] = {folder / "tokenizer.model",
                                              folder / ("tok" + std::to_string(vocab_size) + ".model")};
  for (const auto& candidate : candidates)
    if (std::filesystem::exists(candidate)) return candidate;
  fail(ErrorCode::Io, "no SentencePiece tokenizer for " + checkpoint.string() + ": looked for " +
                          candidates[0].string() + " and " + candidates[1].string() + "; give its path as the tokenizer");
}

}  // namespace

ModelPlan plan_llama2c(const std::filesystem::path& checkpoint, const std::string& tokenizer_path) {
  auto file = std::make_shared<MappedFile>(checkpoint.string());
  const LlamaHyperParams params = read_header(*file);
  const int64_t dim = params.dim, layers = params.n_layers, hidden = params.ffn_dim;
  const int64_t kv_dim = params.n_kv_heads * params.head_dim;

  // The arrays in file order, each stacked over the layers: {name, floats per layer or in all}.
  // Every product is bounded by the header limits, far from overflowing int64.
  struct Array {
    const char* name;
    int64_t floats;
  };
  const Array arrays[] = {
      {"token_embedding", params.vocab_size * dim},
      {"attn_norm", layers * dim},
      {"attn_q", layers * dim * dim},
      {"attn_k", layers * kv_dim * dim},
      {"attn_v", layers * kv_dim * dim},
      {"attn_out", layers * dim * dim},
      {"ffn_norm", layers * dim},
      {"ffn_gate", layers * hidden * dim},  // w1
      {"ffn_down", layers * dim * hidden},  // w2
      {"ffn_up", layers * hidden * dim},    // w3
      {"norm", dim},
      {"freq_cis", params.context_length * params.head_dim},  // legacy real + imaginary parts, unused
      {"output", params.tied_output ? 0 : params.vocab_size * dim},
  };
  std::map<std::string, int64_t> start;  // array name -> offset in floats after the header
  int64_t floats = 0;
  for (const Array& array : arrays) {
    start[array.name] = floats;
    floats += array.floats;
  }
  const uint64_t expected_size = kHeaderBytes + 4 * static_cast<uint64_t>(floats);
  if (file->size() != expected_size)
    fail(ErrorCode::Format, checkpoint.string() + ": " + std::to_string(file->size()) + " bytes, but its llama2.c header implies " +
                                std::to_string(expected_size) + " (truncated, or not a version-0 export)");

  const float* base = reinterpret_cast<const float*>(file->data() + kHeaderBytes);  // 4-byte aligned: mapped + 28
  ModelPlan plan;
  for (const LlamaTensor& tensor : llama_tensors(params)) {
    const std::string array = tensor.part.substr(0, tensor.part.find('.'));
    int64_t elements = 1;
    for (int64_t d : tensor.shape) elements *= d;
    const bool rope = array == "attn_q" || array == "attn_k";
    const Source source{base + start.at(array) + std::max<int64_t>(tensor.layer, 0) * elements, tensor.shape.back(),
                        rope ? params.head_dim : 0};
    plan.tensors.push_back({tensor.name, tensor.shape, tensor.kind, [file, source](int64_t first, int64_t count, float* out) {
                              for (int64_t row = first; row < first + count; ++row) {
                                const int64_t from = source.rope_head_dim ? interleaved_source_row(row, source.rope_head_dim) : row;
                                std::memcpy(out + (row - first) * source.cols, source.data + from * source.cols,
                                            source.cols * sizeof(float));
                              }
                            }});
  }

  plan.metadata.set("general.name", checkpoint.stem().string());
  plan.metadata.set("general.source", std::string("llama2c"));
  add_sentencepiece_tokenizer(find_tokenizer(checkpoint, tokenizer_path, params.vocab_size), plan.metadata);
  add_llama_metadata(params, plan.metadata);
  return plan;
}

}  // namespace octet::convert
