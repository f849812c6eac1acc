// CTranslate2 Transformer directories (TransformerSpec and its older names TransformerBase/Big)
// -> the "encdec" architecture: model.bin through the reader in convert/sources/ctranslate2.h,
// the vocabularies as whitespace tokenizers, or as SentencePiece ones when a SentencePiece model
// ships beside (Argos Translate packages).
#pragma once
#include <filesystem>

#include "convert/convert.h"
#include "convert/model_plan.h"

namespace octet::convert {

// `folder` holds model.bin. Quantized variables (int8, int16) are dequantized here; convert()
// then stores them as options.quant like any other weights.
ModelPlan plan_ctranslate2(const std::filesystem::path& folder, const Options& options);

}  // namespace octet::convert
