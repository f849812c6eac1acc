// The "whitespace" kind: text that is already tokens separated by spaces, as CTranslate2 models
// without a SentencePiece model take it (character-level transliteration, pre-tokenized input).
#include <algorithm>

#include "engine/error.h"
#include "tokenizer/backends.h"
#include "tokenizer/utf8.h"

namespace octet {
namespace {

bool is_separator(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

class WhitespaceTokenizer final : public Tokenizer {
 public:
  WhitespaceTokenizer(const qbin::Metadata& metadata, const std::string& prefix) : tokens_(metadata, prefix) {
    const auto ids = detail::read_special_ids(metadata, prefix, {}, vocab_size());
    bos_id_ = ids.bos_id, add_bos_ = ids.add_bos, eos_ids_ = ids.eos_ids;
  }

  // Every token is looked up, special ones included: in this kind they are text like any other,
  // so parse_special changes nothing.
  std::vector<int32_t> encode(std::string_view text, bool add_specials, bool /*parse_special*/) const override {
    utf8::require_valid(text);
    std::vector<int32_t> ids;
    if (add_specials && add_bos_ && bos_id_ >= 0) ids.push_back(bos_id_);
    size_t pos = 0;
    while (pos < text.size()) {
      if (is_separator(text[pos])) {
        ++pos;
        continue;
      }
      const size_t end = std::find_if(text.begin() + pos, text.end(), is_separator) - text.begin();
      ids.push_back(tokens_.id(text.substr(pos, end - pos)));
      pos = end;
    }
    if (add_specials && tokens_.add_eos() && !eos_ids_.empty()) ids.push_back(eos_ids_.front());
    return ids;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string text;
    for (int32_t id : ids) {
      if (!tokens_.contains(id) || (skip_special && tokens_.is_special(id))) continue;
      if (!text.empty()) text += ' ';
      text += tokens_.token(id);
    }
    return text;
  }

  int32_t vocab_size() const override { return tokens_.size(); }
  bool is_special(int32_t id) const override { return tokens_.is_special(id); }

 private:
  detail::TokenList tokens_;
};

}  // namespace

namespace detail {
std::unique_ptr<Tokenizer> make_whitespace_tokenizer(const qbin::Metadata& metadata, const std::string& prefix) {
  return std::make_unique<WhitespaceTokenizer>(metadata, prefix);
}
}  // namespace detail

}  // namespace octet
