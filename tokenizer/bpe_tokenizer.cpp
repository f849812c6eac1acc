// Byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM), exact to Hugging Face `tokenizers`:
// added tokens are split out first, the rest is normalized (NFC or not), pre-tokenized by regex
// splits, mapped to the GPT-2 byte alphabet and merged by rank.
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <queue>
#include <unordered_map>

#include "engine/error.h"
#include "tokenizer/backends.h"
#include "tokenizer/bpe.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace octet {
namespace {

using detail::Regex;
namespace bpe = detail::bpe;

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class T>
using StringMap = std::unordered_map<std::string, T, StringHash, std::equal_to<>>;

// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes stand for
// themselves, the others (controls, space, ...) for U+0100 onwards in byte order.
struct ByteAlphabet {
  std::array<std::string, 256> char_of_byte;  // UTF-8 of each byte's character
  std::array<int16_t, 0x144> byte_of_char;    // -1 for characters outside the alphabet

  ByteAlphabet() {
    byte_of_char.fill(-1);
    char32_t next_unprintable = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t c = printable ? static_cast<char32_t>(b) : next_unprintable++;
      utf8::append(char_of_byte[b], c);
      byte_of_char[c] = static_cast<int16_t>(b);
    }
  }

  // The ByteLevel decoder: a token made only of alphabet characters stands for their bytes;
  // any other token (an added token with a space in it, say) is its own UTF-8 text.
  std::string token_bytes(std::string_view token) const {
    std::string bytes;
    for (size_t pos = 0; pos < token.size();) {
      const utf8::Step step = utf8::decode(token, pos);
      if (!step.valid || step.code_point >= byte_of_char.size() || byte_of_char[step.code_point] < 0) {
        return std::string(token);
      }
      bytes += static_cast<char>(byte_of_char[step.code_point]);
      pos += step.length;
    }
    return bytes;
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

struct AddedToken {
  int32_t id;
  std::string content;
  int32_t flags;  // bpe::AddedTokenFlag bits
  bool has(bpe::AddedTokenFlag flag) const { return (flags & flag) != 0; }
};

// The added tokens matched in one kind of text (raw or normalized), found leftmost-longest as
// Hugging Face's Aho-Corasick matcher does.
class AddedTokenMatcher {
 public:
  void add(const AddedToken* token) {
    if (token->content.empty()) return;
    auto& bucket = by_first_byte_[static_cast<uint8_t>(token->content[0])];
    bucket.push_back(token);
    std::stable_sort(bucket.begin(), bucket.end(), [](const AddedToken* a, const AddedToken* b) {
      return a->content.size() > b->content.size();
    });
    empty_ = false;
  }
  bool empty() const { return empty_; }

  struct Match {
    size_t start, end;
    const AddedToken* token;
  };
  std::optional<Match> find(std::string_view text, size_t from) const {
    for (size_t pos = from; pos < text.size(); ++pos) {
      for (const AddedToken* token : by_first_byte_[static_cast<uint8_t>(text[pos])]) {
        if (text.substr(pos).starts_with(token->content)) return Match{pos, pos + token->content.size(), token};
      }
    }
    return std::nullopt;
  }

 private:
  std::array<std::vector<const AddedToken*>, 256> by_first_byte_;  // longest first
  bool empty_ = true;
};

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(const qbin::Metadata& metadata, const std::string& prefix) {
    const std::string key = prefix + ".bpe.";
    const std::vector<std::string>& tokens = metadata.str_array(key + "tokens");  // "" where an id has none
    for (size_t id = 0; id < tokens.size(); ++id) {
      if (!tokens[id].empty()) token_ids_.emplace(tokens[id], static_cast<int32_t>(id));
    }
    read_added_tokens(metadata, key, tokens.size());
    read_merges(metadata.str_array(key + "merges"), key + "merges");

    ignore_merges_ = metadata.boolean_or(key + "ignore_merges", false);
    unk_id_ = metadata.i32_or(key + "unk_id", -1);
    if (unk_id_ < -1 || unk_id_ >= vocab_size_) fail(ErrorCode::Format, key + "unk_id is outside the vocabulary");
    const std::string normalizer = metadata.str_or(key + "normalizer", "none");
    if (normalizer != "none" && normalizer != "nfc") {
      fail(ErrorCode::Unsupported, key + "normalizer '" + normalizer + "' is not supported");
    }
    nfc_ = normalizer == "nfc";
    for (const std::string& pattern : metadata.str_array(key + "split_patterns")) split_patterns_.emplace_back(pattern);

    // What each id decodes to; added tokens take precedence, as in Hugging Face.
    const ByteAlphabet& alphabet = byte_alphabet();
    decoded_.resize(vocab_size_);
    special_.resize(vocab_size_, false);
    for (size_t id = 0; id < tokens.size(); ++id) decoded_[id] = alphabet.token_bytes(tokens[id]);
    for (const AddedToken& token : added_) {
      decoded_[token.id] = alphabet.token_bytes(token.content);
      special_[token.id] = token.has(bpe::kSpecial);
    }

    const auto ids = detail::read_special_ids(metadata, prefix, {}, vocab_size_);
    bos_id_ = ids.bos_id, add_bos_ = ids.add_bos, eos_ids_ = ids.eos_ids;
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const override {
    utf8::require_valid(text);
    std::vector<int32_t> ids;
    if (add_bos && add_bos_ && bos_id_ >= 0) ids.push_back(bos_id_);
    // Tokens that are not "normalized" are found in the raw text; the text between them is
    // normalized and searched for the "normalized" ones; what is left is pre-tokenized.
    split_on_added_tokens(text, raw_matcher_, parse_special, ids, [&](std::string_view raw) {
      const std::string normalized = normalize(raw);
      split_on_added_tokens(normalized, normalized_matcher_, parse_special, ids,
                            [&](std::string_view plain) { encode_plain(plain, ids); });
    });
    return ids;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string bytes;
    for (int32_t id : ids) {
      // Ids outside the vocabulary are dropped, as Hugging Face does (a model's output layer may
      // be wider than its vocabulary).
      if (id < 0 || id >= vocab_size_ || (skip_special && special_[id])) continue;
      bytes += decoded_[id];
    }
    // Byte tokens may leave a character incomplete; like Hugging Face, show U+FFFD for it.
    return utf8::lossy(bytes);
  }

  int32_t vocab_size() const override { return vocab_size_; }
  bool is_special(int32_t id) const override { return id >= 0 && id < vocab_size_ && special_[id]; }

 private:
  struct MergeResult {
    uint32_t rank;
    int32_t merged_id;
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  void read_added_tokens(const qbin::Metadata& metadata, const std::string& key, size_t model_vocab_size) {
    const auto& ids = metadata.i32_array(key + "added_ids");
    const auto& contents = metadata.str_array(key + "added_contents");
    const auto& flags = metadata.i32_array(key + "added_flags");
    if (contents.size() != ids.size() || flags.size() != ids.size()) {
      fail(ErrorCode::Format, key + "added_ids, added_contents and added_flags differ in length");
    }
    // Ids may go past the model's vocabulary, but not leave holes larger than the table itself.
    const size_t id_limit = model_vocab_size + ids.size();
    vocab_size_ = static_cast<int32_t>(model_vocab_size);
    added_.reserve(ids.size());  // the matchers keep pointers into it
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || static_cast<size_t>(ids[i]) >= id_limit) {
        fail(ErrorCode::Format, key + "added_ids: id " + std::to_string(ids[i]) + " is out of range");
      }
      vocab_size_ = std::max(vocab_size_, ids[i] + 1);
      added_.push_back({ids[i], contents[i], flags[i]});
    }
    for (const AddedToken& token : added_) {
      (token.has(bpe::kNormalized) ? normalized_matcher_ : raw_matcher_).add(&token);
      if (token.has(bpe::kSingleWord) && !word_char_) {
        // Rust regex's \w, which Hugging Face uses to tell word boundaries.
        word_char_.emplace(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])");
      }
    }
  }

  void read_merges(const std::vector<std::string>& merges, const std::string& key) {
    merges_.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const std::string& merge = merges[rank];
      const size_t space = merge.find(' ');
      if (space == std::string::npos || merge.find(' ', space + 1) != std::string::npos) {
        fail(ErrorCode::Format, key + ": '" + merge + "' is not two tokens separated by a space");
      }
      const auto left = token_ids_.find(std::string_view(merge).substr(0, space));
      const auto right = token_ids_.find(std::string_view(merge).substr(space + 1));
      const auto merged = token_ids_.find(merge.substr(0, space) + merge.substr(space + 1));
      if (left == token_ids_.end() || right == token_ids_.end() || merged == token_ids_.end()) {
        fail(ErrorCode::Format, key + ": '" + merge + "' uses or makes a token missing from the vocabulary");
      }
      // The first occurrence of a pair has the best rank.
      merges_.try_emplace(pair_key(left->second, right->second),
                          MergeResult{static_cast<uint32_t>(rank), merged->second});
    }
  }

  std::string normalize(std::string_view text) const {
    const bool ascii = std::all_of(text.begin(), text.end(), [](char c) { return (c & 0x80) == 0; });
    if (!nfc_ || ascii) return std::string(text);
    utf8proc_uint8_t* composed = nullptr;
    const utf8proc_ssize_t length =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()), static_cast<utf8proc_ssize_t>(text.size()),
                     &composed, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (length < 0) fail(ErrorCode::Internal, std::string("NFC normalization failed: ") + utf8proc_errmsg(length));
    std::string result(reinterpret_cast<const char*>(composed), static_cast<size_t>(length));
    std::free(composed);
    return result;
  }

  // Hugging Face's AddedVocabulary::find_matches: ids of the added tokens found in `text` go to
  // `ids`, the text around them to `on_text`, in order.
  template <class OnText>
  void split_on_added_tokens(std::string_view text, const AddedTokenMatcher& matcher, bool parse_special,
                             std::vector<int32_t>& ids, OnText&& on_text) const {
    size_t text_start = 0, search_from = 0;
    while (!matcher.empty()) {
      const auto match = matcher.find(text, search_from);
      if (!match) break;
      search_from = match->end;
      const AddedToken& token = *match->token;
      if (token.has(bpe::kSpecial) && !parse_special) continue;
      if (token.has(bpe::kSingleWord) && (ends_with_word_char(text.substr(0, match->start)) ||
                                          word_char_->matches_at(text, match->end))) {
        continue;
      }
      size_t start = match->start, end = match->end;
      if (token.has(bpe::kLstrip)) {
        while (start > text_start) {
          size_t previous = start - 1;
          while (previous > 0 && (static_cast<uint8_t>(text[previous]) & 0xC0) == 0x80) --previous;
          if (!utf8::is_white_space(utf8::decode(text, previous).code_point)) break;
          start = previous;
        }
      }
      if (token.has(bpe::kRstrip)) {
        while (end < text.size()) {
          const utf8::Step step = utf8::decode(text, end);
          if (!utf8::is_white_space(step.code_point)) break;
          end += step.length;
        }
        search_from = end;
      }
      if (start > text_start) on_text(text.substr(text_start, start - text_start));
      ids.push_back(token.id);
      text_start = end;
    }
    if (text_start < text.size()) on_text(text.substr(text_start));
  }

  bool ends_with_word_char(std::string_view text) const {
    if (text.empty()) return false;
    size_t last = text.size() - 1;
    while (last > 0 && (static_cast<uint8_t>(text[last]) & 0xC0) == 0x80) --last;
    return word_char_->matches_at(text, last);
  }

  // Text with no added tokens in it: pre-tokenize, then BPE each piece.
  void encode_plain(std::string_view text, std::vector<int32_t>& ids) const {
    std::vector<std::string_view> pieces{text}, split;
    for (const Regex& pattern : split_patterns_) {
      split.clear();
      for (std::string_view piece : pieces) pattern.split_isolated(piece, split);
      pieces.swap(split);
    }
    const ByteAlphabet& alphabet = byte_alphabet();
    std::string word;
    for (std::string_view piece : pieces) {
      word.clear();
      for (char byte : piece) word += alphabet.char_of_byte[static_cast<uint8_t>(byte)];
      encode_word(word, ids);
    }
  }

  void encode_word(const std::string& word, std::vector<int32_t>& ids) const {
    if (ignore_merges_) {
      if (const auto whole = token_ids_.find(word); whole != token_ids_.end()) {
        ids.push_back(whole->second);
        return;
      }
    }
    {
      std::lock_guard lock(cache_mutex_);
      if (const auto hit = cache_.find(word); hit != cache_.end()) {
        ids.insert(ids.end(), hit->second.begin(), hit->second.end());
        return;
      }
    }
    std::vector<int32_t> merged = merge_word(word);
    ids.insert(ids.end(), merged.begin(), merged.end());
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(word, std::move(merged));
  }

  // Applies the merges to one word, lowest rank first and leftmost first among equal ranks
  // (Hugging Face's Word::merge_all), in O(n log n).
  std::vector<int32_t> merge_word(std::string_view word) const {
    struct Symbol {
      int32_t id;
      int32_t prev, next;  // neighbours still alive, -1 at the ends
      bool alive;
    };
    std::vector<Symbol> symbols;
    for (size_t pos = 0; pos < word.size();) {
      const size_t length = utf8::decode(word, pos).length;
      const auto found = token_ids_.find(word.substr(pos, length));
      pos += length;
      // A character missing from the vocabulary becomes unk, or is dropped when there is none.
      const int32_t id = found != token_ids_.end() ? found->second : unk_id_;
      if (id < 0) continue;
      const auto index = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, index - 1, index + 1, true});
    }
    if (symbols.empty()) return {};
    symbols.back().next = -1;

    struct Candidate {
      uint32_t rank;
      int32_t pos;  // the left symbol
      int32_t merged_id;
      bool operator>(const Candidate& other) const {
        return rank != other.rank ? rank > other.rank : pos > other.pos;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    const auto push_pair = [&](int32_t left) {
      if (left < 0 || symbols[left].next < 0) return;
      const auto merge = merges_.find(pair_key(symbols[left].id, symbols[symbols[left].next].id));
      if (merge != merges_.end()) queue.push({merge->second.rank, left, merge->second.merged_id});
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_pair(i);

    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.pos];
      if (!left.alive || left.next < 0) continue;
      // Skip candidates made stale by an earlier merge: the pair there now merges differently.
      const auto merge = merges_.find(pair_key(left.id, symbols[left.next].id));
      if (merge == merges_.end() || merge->second.merged_id != top.merged_id) continue;
      Symbol& right = symbols[left.next];
      left.id = top.merged_id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = top.pos;
      push_pair(left.prev);
      push_pair(top.pos);
    }
    std::vector<int32_t> ids;
    for (int32_t i = 0; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
    return ids;
  }

  static constexpr size_t kCacheCapacity = 10000;  // words; then new words are not cached

  StringMap<int32_t> token_ids_;     // the model's vocabulary (not the added tokens)
  std::unordered_map<uint64_t, MergeResult> merges_;
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  bool nfc_ = false;
  std::vector<Regex> split_patterns_;
  std::vector<AddedToken> added_;
  AddedTokenMatcher raw_matcher_, normalized_matcher_;
  std::optional<Regex> word_char_;  // only when some added token is single_word
  int32_t vocab_size_ = 0;
  std::vector<std::string> decoded_;  // bytes each id decodes to
  std::vector<bool> special_;

  mutable std::mutex cache_mutex_;
  mutable StringMap<std::vector<int32_t>> cache_;  // word -> ids
};

}  // namespace

namespace detail {
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const qbin::Metadata& metadata, const std::string& prefix) {
  return std::make_unique<BpeTokenizer>(metadata, prefix);
}
}  // namespace detail

}  // namespace octet
