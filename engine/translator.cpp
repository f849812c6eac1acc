#include "engine/translator.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>

#include "engine/error.h"

namespace octet {

// A piece of an input sentence translated on its own: the whole sentence, or one of the parts a
// sentence too long for the model is split into.
struct Translator::Segment {
  size_t sentence = 0;      // index into the input
  size_t part = 0;          // 0, 1, ... within the sentence
  std::string separator;    // the source's spacing before this part; joins the translations
  std::vector<int32_t> ids;  // source ids, BOS/EOS as the model was trained
  int32_t max_length = 0;   // generated tokens allowed
  std::vector<Hypothesis> hypotheses;
};

namespace {

[[noreturn]] void invalid(const std::string& message) { fail(ErrorCode::InvalidArgument, message); }

void validate(const TranslationOptions& o) {
  if (o.beam_size < 1) invalid("beam_size must be >= 1");
  if (o.n_best < 1 || o.n_best > o.beam_size) invalid("n_best must be in [1, beam_size]");
  if (!std::isfinite(o.length_penalty)) invalid("length_penalty must be finite");
  if (o.max_length < 1) invalid("max_length must be >= 1");
  if (!std::isfinite(o.max_length_ratio) || o.max_length_ratio < 0) invalid("max_length_ratio must be >= 0");
  if (o.batch_size < 1) invalid("batch_size must be >= 1");
  if (o.max_batch_tokens < 0) invalid("max_batch_tokens must be >= 0");
  if (o.no_repeat_ngram_size < 0) invalid("no_repeat_ngram_size must be >= 0");
  if (!std::isfinite(o.repetition_penalty) || o.repetition_penalty <= 0) invalid("repetition_penalty must be > 0");
}

// One sentence of a text and the spacing that preceded it.
struct Part {
  std::string_view separator;
  std::string_view text;
};

// Splits after each sentence end: '.', '!' or '?' followed by whitespace, or '。', '！', '？'
// (which need none). The whitespace after an end becomes the next part's separator.
std::vector<Part> split_sentences(std::string_view text) {
  static constexpr std::string_view kWideEnds[] = {"\u3002", "\uFF01", "\uFF1F"};  // 。！？
  const auto is_space = [](char ch) { return ch == ' ' || ch == '\t'; };
  std::vector<Part> parts;
  size_t start = 0, separator_start = 0;
  for (size_t i = 0; i < text.size();) {
    size_t end = 0;  // just past a sentence end at i, when there is one
    if ((text[i] == '.' || text[i] == '!' || text[i] == '?') && i + 1 < text.size() && is_space(text[i + 1])) {
      end = i + 1;
    }
    for (std::string_view wide : kWideEnds) {
      if (text.substr(i).starts_with(wide)) end = i + wide.size();
    }
    if (end == 0) {
      ++i;
      continue;
    }
    size_t next = end;
    while (next < text.size() && is_space(text[next])) ++next;
    if (next < text.size()) {
      parts.push_back({text.substr(separator_start, start - separator_start), text.substr(start, end - start)});
      separator_start = end;
      start = next;
    }
    i = next;
  }
  parts.push_back({text.substr(separator_start, start - separator_start), text.substr(start)});
  return parts;
}

}  // namespace

Translator::Translator(std::shared_ptr<const EncDecModel> model, DType kv_type)
    : model_(std::move(model)), kv_type_(kv_type) {
  states_.push_back(std::make_unique<EncDecState>(model_, kv_type));
}

TranslationOptions Translator::default_options() const {
  const GenerationDefaults& g = model_->generation_defaults();
  TranslationOptions o;
  o.beam_size = g.num_beams;
  o.max_length = g.max_length;
  o.length_penalty = g.length_penalty;
  o.no_repeat_ngram_size = g.no_repeat_ngram_size;
  return o;
}

// The source ids of a text as the model was trained on them: the tokenizer adds BOS/EOS as its
// add_bos/add_eos keys say (MarianTokenizer appends EOS; CTranslate2 models as their config says),
// and special tokens written in the text are parsed, as Hugging Face tokenizers do.
std::vector<int32_t> Translator::source_ids(std::string_view text) const {
  return model_->source_tokenizer().encode(text, /*add_bos=*/true, /*parse_special=*/true);
}

std::vector<Translator::Segment> Translator::segment(std::span<const std::string> sentences) const {
  const int64_t max_positions = model_->config().max_positions;
  std::vector<Segment> segments;
  for (size_t i = 0; i < sentences.size(); ++i) {
    const std::string& text = sentences[i];
    const std::string where = "sentence " + std::to_string(i + 1);
    try {
      // An empty text is translated like any other: Marian's is a lone EOS, as in transformers.
      // Only a source with no ids at all (no BOS/EOS added) has nothing to encode.
      std::vector<int32_t> ids = source_ids(text);
      if (static_cast<int64_t>(ids.size()) <= max_positions) {
        if (!ids.empty()) segments.push_back({i, 0, "", std::move(ids), 0, {}});
        continue;
      }
      // Too long: group whole sentences, as many as fit, into parts.
      const std::vector<Part> parts = split_sentences(text);
      size_t first = 0, n_parts = 0;
      while (first < parts.size()) {
        size_t last = first;  // parts [first, last] joined fit
        std::vector<int32_t> fitting;
        for (size_t next = first; next < parts.size(); ++next) {
          const char* begin = parts[first].text.data();
          const std::string_view joined(begin, parts[next].text.data() + parts[next].text.size() - begin);
          std::vector<int32_t> candidate = source_ids(joined);
          if (static_cast<int64_t>(candidate.size()) > max_positions) break;
          fitting = std::move(candidate);
          last = next;
        }
        if (fitting.empty()) {
          invalid(where + " is " + std::to_string(ids.size()) + " tokens long, more than the model's " +
                  std::to_string(max_positions) + " positions, and a sentence in it (\"" +
                  std::string(parts[first].text.substr(0, 40)) + "...\") is too long on its own");
        }
        segments.push_back({i, n_parts++, std::string(parts[first].separator), std::move(fitting), 0, {}});
        first = last + 1;
      }
    } catch (const Error& e) {
      if (std::string_view(e.what()).starts_with(where)) throw;
      fail(e.code(), where + ": " + e.what());
    }
  }
  return segments;
}

std::vector<Translation> Translator::translate(std::span<const std::string> sentences,
                                               const TranslationOptions& options, const TranslationStream& stream) {
  validate(options);
  const int64_t max_positions = model_->config().max_positions;
  const std::vector<int32_t> prefix = model_->target_tokenizer().encode(options.prefix, false, false);
  if (static_cast<int64_t>(prefix.size()) >= max_positions) invalid("the prefix is longer than the model's positions");

  std::vector<Segment> segments = segment(sentences);
  for (Segment& s : segments) {
    int64_t limit = std::min<int64_t>(options.max_length, max_positions);
    if (options.max_length_ratio > 0) {
      limit = std::min<int64_t>(limit, static_cast<int64_t>(std::ceil(options.max_length_ratio * s.ids.size())));
    }
    s.max_length = static_cast<int32_t>(std::max<int64_t>(limit, prefix.size() + 1));  // search needs room past the prefix
  }

  // Longest first, so a batch holds sentences of similar lengths; streaming keeps input order.
  std::vector<Segment*> order;
  for (Segment& s : segments) order.push_back(&s);
  if (!stream) {
    std::stable_sort(order.begin(), order.end(),
                     [](const Segment* a, const Segment* b) { return a->ids.size() > b->ids.size(); });
  }
  // A batch shares one length limit, so only segments of equal limits are batched: results
  // never depend on what else is in the batch.
  const size_t batch_size = stream ? 1 : static_cast<size_t>(options.batch_size);
  std::vector<std::span<Segment*>> batches;
  for (size_t first = 0; first < order.size();) {
    size_t last = first + 1;
    size_t tokens = order[first]->ids.size();
    while (last < order.size() && last - first < batch_size && order[last]->max_length == order[first]->max_length &&
           (options.max_batch_tokens == 0 || tokens + order[last]->ids.size() <= size_t(options.max_batch_tokens))) {
      tokens += order[last++]->ids.size();
    }
    batches.push_back(std::span(order).subspan(first, last - first));
    first = last;
  }
  // Several batches run side by side, one per thread, each on its own state with every op on
  // that thread: no barrier and no activation crosses cores within a batch. A single batch (or a
  // stream, which goes in input order) has the whole team inside each op instead.
  const int workers = stream ? 1 : static_cast<int>(std::min<size_t>(omp_get_max_threads(), batches.size()));
  if (workers <= 1) {
    for (std::span<Segment*> batch : batches) translate_batch(*states_[0], batch, options, prefix, stream);
  } else {
    while (static_cast<int>(states_.size()) < workers) states_.push_back(std::make_unique<EncDecState>(model_, kv_type_));
    std::exception_ptr error;
    std::atomic<bool> failed = false;
#pragma omp parallel num_threads(workers)
    {
      omp_set_num_threads(1);  // for the ops inside this thread's batches
      EncDecState& state = *states_[omp_get_thread_num()];
      // Longest batches first (the order is by length), so the last to start are the shortest.
#pragma omp for schedule(dynamic, 1)
      for (size_t i = 0; i < batches.size(); ++i) {
        if (failed) continue;
        try {
          translate_batch(state, batches[i], options, prefix, stream);
        } catch (...) {
#pragma omp critical(octet_translator_error)
          if (!error) error = std::current_exception();
          failed = true;
        }
      }
    }
    if (error) std::rethrow_exception(error);
  }

  // Back to input order, joining the parts of split sentences.
  const Tokenizer& target = model_->target_tokenizer();
  std::vector<Translation> results(sentences.size());
  for (Translation& t : results) t.assign(options.n_best, TranslationHypothesis{});  // sources without ids
  for (size_t i = 0; i < segments.size();) {
    size_t end = i + 1;
    while (end < segments.size() && segments[end].sentence == segments[i].sentence) ++end;
    size_t n = options.n_best;
    for (size_t j = i; j < end; ++j) n = std::min(n, segments[j].hypotheses.size());
    Translation& translation = results[segments[i].sentence];
    translation.resize(n);
    for (size_t k = 0; k < n; ++k) {
      TranslationHypothesis& h = translation[k];
      for (size_t j = i; j < end; ++j) {
        const Hypothesis& part = segments[j].hypotheses[k];
        h.text += (j > i ? segments[j].separator : "") + target.decode(part.tokens);
        h.score += part.score / static_cast<float>(end - i);  // a split sentence scores the mean of its parts
        h.tokens.insert(h.tokens.end(), part.tokens.begin(), part.tokens.end());
      }
    }
    i = end;
  }
  return results;
}

void Translator::translate_batch(EncDecState& state, std::span<Segment*> batch, const TranslationOptions& options,
                                 std::span<const int32_t> prefix, const TranslationStream& stream) {
  const EncDecConfig& c = model_->config();
  std::vector<int32_t> tokens, lengths;
  for (const Segment* s : batch) {
    tokens.insert(tokens.end(), s->ids.begin(), s->ids.end());
    lengths.push_back(static_cast<int32_t>(s->ids.size()));
  }
  const int32_t n = static_cast<int32_t>(batch.size());
  state.encode(tokens, lengths, n * options.beam_size);

  SearchOptions search_options;
  search_options.beam_size = options.beam_size;
  search_options.n_best = options.n_best;
  search_options.length_penalty = options.length_penalty;
  search_options.max_length = batch.front()->max_length;
  search_options.no_repeat_ngram_size = options.no_repeat_ngram_size;
  search_options.repetition_penalty = options.repetition_penalty;
  search_options.bad_words = model_->generation_defaults().bad_words;
  search_options.forced_eos_id = model_->generation_defaults().forced_eos_id;
  search_options.renormalize_logits = model_->generation_defaults().renormalize_logits;
  search_options.prefix.assign(prefix.begin(), prefix.end());
  const int32_t eos[] = {c.eos_id};

  // Streaming: settled tokens become text through one detokenizer per segment.
  std::vector<DetokenizeStream> detokenizers;
  SettledCallback on_settled;
  const auto emit = [&](const Segment& s, const std::string& text) {
    if (!text.empty() && !stream(s.sentence, text)) fail(ErrorCode::Cancelled, "translation cancelled by the callback");
  };
  if (stream) {
    for (const Segment* s : batch) {
      detokenizers.emplace_back(model_->target_tokenizer());
      if (s->part > 0) emit(*s, s->separator);
    }
    on_settled = [&](int32_t index, std::span<const int32_t> new_tokens) {
      std::string text;
      for (int32_t id : new_tokens) text += detokenizers[index].push(id);
      return text.empty() || stream(batch[index]->sentence, text);
    };
  }
  state.defer_logits_bias(true);  // search() adds it to each row of logits as it reads it
  std::vector<std::vector<Hypothesis>> results = search(state, n, c.decoder_start_id, eos, search_options, on_settled);
  for (int32_t i = 0; i < n; ++i) {
    if (stream) emit(*batch[i], detokenizers[i].finish());
    batch[i]->hypotheses = std::move(results[i]);
  }
}

}  // namespace octet
