#include "engine/model.h"

#include "engine/error.h"
#include "engine/llama.h"

namespace octet {

std::shared_ptr<const LanguageModel> LanguageModel::load(const std::string& path, bool verify_checksums) {
  std::shared_ptr<const qbin::File> file = qbin::File::open(path, verify_checksums);
  const std::string& architecture = file->metadata().str("general.architecture");
  if (architecture == "encdec") {
    fail(ErrorCode::Unsupported, path + ": a translation model (encdec): load it with octet_translator_load");
  }
  if (architecture != "llama") {
    fail(ErrorCode::Unsupported, path + ": unsupported architecture '" + architecture + "' (Octet runs: llama)");
  }
  std::unique_ptr<Tokenizer> tokenizer = Tokenizer::from_metadata(file->metadata());
  return load_llama(std::move(file), std::move(tokenizer));
}

}  // namespace octet
