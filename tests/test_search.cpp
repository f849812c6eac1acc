// Sequence search (engine/decoding/search.h) against Hugging Face generate() on a tiny bigram model
// (tests/data/search/bigram_goldens.json, made by tests/tools/make_search_goldens.py), plus the
// contract: batching, the settled-token stream, prefixes, cancellation, n-best order, options.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine/decoding/search.h"
#include "engine/error.h"
#include "tests/test_util.h"

using namespace octet;

namespace {

const nlohmann::json& goldens() {
  static const nlohmann::json json = test::read_json(test::test_data("search/bigram_goldens.json"));
  return json;
}

// logits(next | s_0 .. s_t) = token_table[s_t] + position_table[t % period]: on step k every row
// gets the row of the token it just appended plus the position term of step k. The model has no
// state to reorder, but it checks the contract: parents index the previous step's rows (the
// sentences on the first step) and rows never grow once the beams are expanded.
class BigramModel : public DecoderStep {
 public:
  // first_tokens: per sentence, the token the first step reads instead of the start token, to
  // search sentences with different start tokens in one batch (as an encoder would make them
  // differ); empty: the start token.
  explicit BigramModel(std::vector<int32_t> first_tokens = {}) : first_tokens_(std::move(first_tokens)) {
    const auto& g = goldens();
    vocab_ = g["vocab_size"].get<int32_t>();
    for (const auto& row : g["token_table"]) token_table_.push_back(row.get<std::vector<float>>());
    for (const auto& row : g["position_table"]) position_table_.push_back(row.get<std::vector<float>>());
  }

  int32_t vocab_size() const override { return vocab_; }

  void step(std::span<const int32_t> parents, std::span<const int32_t> tokens, float* logits) override {
    REQUIRE(parents.size() == tokens.size());
    const size_t previous = row_counts.empty() ? batch : row_counts.back();
    for (int32_t p : parents) REQUIRE((p >= 0 && static_cast<size_t>(p) < previous));
    const auto& position = position_table_[steps % position_table_.size()];
    for (size_t r = 0; r < tokens.size(); ++r) {
      const int32_t token = steps == 0 && !first_tokens_.empty() ? first_tokens_[parents[r]] : tokens[r];
      for (int32_t v = 0; v < vocab_; ++v) logits[r * vocab_ + v] = token_table_[token][v] + position[v];
    }
    row_counts.push_back(tokens.size());
    ++steps;
  }

  // log_softmax in double of the logits that follow `token` at `position`.
  double log_prob(int32_t token, int32_t position, int32_t next) const {
    const auto& t = token_table_[token];
    const auto& p = position_table_[position % position_table_.size()];
    double max = -INFINITY, sum = 0;
    for (int32_t v = 0; v < vocab_; ++v) max = std::max(max, double(t[v]) + p[v]);
    for (int32_t v = 0; v < vocab_; ++v) sum += std::exp(double(t[v]) + p[v] - max);
    return double(t[next]) + p[next] - max - std::log(sum);
  }

  // The score of a hypothesis without logits processors: sum of log-probs / length^penalty, the
  // EOS counted when the hypothesis ended with it.
  double score(int32_t start, std::vector<int32_t> tokens, bool ended_by_eos, double length_penalty) const {
    if (ended_by_eos) tokens.push_back(eos());
    double total = 0;
    int32_t last = start;
    for (size_t i = 0; i < tokens.size(); ++i) {
      total += log_prob(last, static_cast<int32_t>(i), tokens[i]);
      last = tokens[i];
    }
    return total / std::pow(double(tokens.size()), length_penalty);
  }

  static int32_t eos() { return goldens()["eos_token_id"].get<int32_t>(); }

  size_t batch = 1;  // sentences, for the parents check of the first step
  int32_t steps = 0;
  std::vector<size_t> row_counts;

 private:
  std::vector<int32_t> first_tokens_;
  int32_t vocab_ = 0;
  std::vector<std::vector<float>> token_table_, position_table_;
};

// SearchOptions from a case's generate() keyword arguments. HF's min_length counts the start token.
// (early_stopping "never", forced_eos_token_id and renormalize_logits were checked against HF once
// by hand, with this mapping; the goldens do not have them yet.)
SearchOptions options_from(const nlohmann::json& kwargs) {
  SearchOptions o;
  o.beam_size = kwargs.value("num_beams", 1);
  o.n_best = kwargs.value("num_return_sequences", 1);
  o.max_length = kwargs.at("max_new_tokens").get<int32_t>();
  o.length_penalty = kwargs.value("length_penalty", 1.0f);
  if (kwargs.contains("early_stopping")) {
    const auto& early = kwargs["early_stopping"];
    o.early_stopping_never = early.is_string() && early.get<std::string>() == "never";
    o.early_stopping = early.is_boolean() && early.get<bool>();
  }
  o.no_repeat_ngram_size = kwargs.value("no_repeat_ngram_size", 0);
  o.repetition_penalty = kwargs.value("repetition_penalty", 1.0f);
  o.bad_words = kwargs.value("bad_words_ids", std::vector<std::vector<int32_t>>{});
  o.min_length = std::max(0, kwargs.value("min_length", 0) - 1);
  o.forced_eos_id = kwargs.value("forced_eos_token_id", -1);
  o.renormalize_logits = kwargs.value("renormalize_logits", false);
  return o;
}

struct Run {
  std::vector<std::vector<Hypothesis>> results;
  std::vector<std::vector<int32_t>> settled;  // per sentence, the concatenated on_settled tokens
  std::vector<int32_t> first_settled_step;     // per sentence, model steps done at the first report
  std::vector<size_t> row_counts;
};

// Searches sentences starting with `starts` in one batch (with start token `start`, starts[0] by
// default; the model makes the first step read each sentence's own), recording the settled stream.
Run run_search(const std::vector<int32_t>& starts, const SearchOptions& options, int32_t start = -1) {
  BigramModel model(starts);
  model.batch = starts.size();
  Run run;
  run.settled.resize(starts.size());
  run.first_settled_step.assign(starts.size(), -1);
  const int32_t eos = BigramModel::eos();
  auto on_settled = [&](int32_t sentence, std::span<const int32_t> tokens) {
    REQUIRE(!tokens.empty());
    if (run.first_settled_step[sentence] < 0) run.first_settled_step[sentence] = model.steps;
    run.settled[sentence].insert(run.settled[sentence].end(), tokens.begin(), tokens.end());
    return true;
  };
  run.results = search(model, static_cast<int32_t>(starts.size()), start < 0 ? starts[0] : start, {&eos, 1},
                       options, on_settled);
  run.row_counts = model.row_counts;
  // The stream reports each token of the best hypothesis once, in order, and nothing else.
  for (size_t i = 0; i < starts.size(); ++i) CHECK(run.settled[i] == run.results[i][0].tokens);
  return run;
}

// Goldens end hypotheses finished by EOS with it; ours leave it out.
std::vector<int32_t> without_eos(std::vector<int32_t> tokens) {
  if (!tokens.empty() && tokens.back() == BigramModel::eos()) tokens.pop_back();
  return tokens;
}

void check_against_golden(const nlohmann::json& expected, const std::vector<Hypothesis>& got, bool greedy) {
  REQUIRE(got.size() == expected.size());
  for (size_t k = 0; k < got.size(); ++k) {
    CHECK(got[k].tokens == without_eos(expected[k]["tokens"].get<std::vector<int32_t>>()));
    // HF sums float32 log-probs of torch's log_softmax, we of ours: each differs by about an ulp
    // (~1e-7 here), summed over <= 12 steps, and the goldens keep 7 significant digits (<= 5e-7
    // for these scores below 10 in magnitude), hence 1e-5.
    if (!greedy) CHECK(std::fabs(got[k].score - expected[k]["score"].get<double>()) < 1e-5);
  }
}

// Processors that look at the whole sequence see the start token, so cases using them are run
// one sentence at a time with the sentence's true start token.
bool start_token_matters(const nlohmann::json& kwargs) {
  return kwargs.contains("repetition_penalty") || kwargs.contains("no_repeat_ngram_size");
}

}  // namespace

TEST_CASE("search reproduces Hugging Face generate() on the bigram model") {
  REQUIRE(!goldens()["cases"].empty());
  for (const auto& c : goldens()["cases"]) {
    const auto& kwargs = c["generate_kwargs"];
    const auto starts = c["start_tokens"].get<std::vector<int32_t>>();
    CAPTURE(c["name"].get<std::string>());
    const SearchOptions options = options_from(kwargs);
    const bool greedy = options.beam_size == 1;
    if (!start_token_matters(kwargs)) {
      const Run run = run_search(starts, options);
      for (size_t i = 0; i < starts.size(); ++i)
        check_against_golden(c["results"][i], run.results[i], greedy);
    }
    for (size_t i = 0; i < starts.size(); ++i) {
      const Run run = run_search({starts[i]}, options);
      check_against_golden(c["results"][i], run.results[0], greedy);
    }
  }
}

// Every logits processor on.
static SearchOptions all_options(int32_t beam_size) {
  SearchOptions o;
  o.beam_size = beam_size;
  o.n_best = std::min(2, beam_size);
  o.max_length = 12;
  o.length_penalty = 0.6f;
  o.bad_words = {{0}, {5, 6}};
  o.min_length = 2;
  o.no_repeat_ngram_size = 2;
  o.repetition_penalty = 1.3f;
  return o;
}

TEST_CASE("a batch gives the results of its sentences searched one by one") {
  const std::vector<int32_t> starts = {1, 7, 13, 9, 24};
  for (const SearchOptions& options : {all_options(4), all_options(1)}) {
    const Run batch = run_search(starts, options);
    for (size_t i = 0; i < starts.size(); ++i) {
      // The batch's start token, which the processors see: only the sentence differs.
      const Run single = run_search({starts[i]}, options, starts[0]);
      REQUIRE(single.results[0].size() == batch.results[i].size());
      for (size_t k = 0; k < single.results[0].size(); ++k) {
        CHECK(single.results[0][k].tokens == batch.results[i][k].tokens);
        CHECK(single.results[0][k].score == batch.results[i][k].score);  // same float ops
      }
    }
  }
}

TEST_CASE("rows: one per sentence on the first step, then beam_size per live sentence") {
  SearchOptions options;
  options.beam_size = 4;
  options.max_length = 12;
  options.early_stopping = true;  // sentences end at different steps
  const Run run = run_search({1, 7, 13}, options);
  REQUIRE(run.row_counts.size() >= 3);
  CHECK(run.row_counts[0] == 3);
  CHECK(run.row_counts[1] == 12);
  for (size_t k = 2; k < run.row_counts.size(); ++k) {
    CHECK(run.row_counts[k] % 4 == 0);
    CHECK(run.row_counts[k] <= run.row_counts[k - 1]);
  }
  CHECK(run.row_counts.back() < 12);  // finished sentences were dropped before the last step
}

TEST_CASE("settled tokens stream before the sentence ends") {
  // The invariant itself (each token once, in order, together the best hypothesis) is checked by
  // every run_search; here: tokens are reported while the search still runs.
  SearchOptions options;
  options.beam_size = 4;
  options.max_length = 12;
  const Run run = run_search({1, 7}, options);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(run.results[i][0].tokens.size() >= 3);
    CHECK(run.first_settled_step[i] < static_cast<int32_t>(run.row_counts.size()));
  }
}

TEST_CASE("n-best: hypotheses best first, scores as recomputed from the model") {
  BigramModel model;
  SearchOptions options;
  options.beam_size = 5;
  options.n_best = 5;
  options.max_length = 10;
  options.length_penalty = 0.8f;
  for (int32_t start : {1, 7, 13, 20}) {
    const Run run = run_search({start}, options);
    const auto& hyps = run.results[0];
    REQUIRE(hyps.size() == 5);
    for (size_t k = 0; k < hyps.size(); ++k) {
      if (k > 0) CHECK(hyps[k - 1].score >= hyps[k].score);
      const bool by_eos = hyps[k].tokens.size() < 10;
      CHECK(hyps[k].score == doctest::Approx(model.score(start, hyps[k].tokens, by_eos, 0.8)).epsilon(1e-5));
    }
  }
}

TEST_CASE("greedy scores are length-normalised sums of log-probs") {
  BigramModel model;
  SearchOptions options;
  options.beam_size = 1;
  options.max_length = 12;
  options.length_penalty = 1.0f;
  for (int32_t start : {1, 7, 13}) {
    const Run run = run_search({start}, options);
    const auto& best = run.results[0][0];
    const double expected = model.score(start, best.tokens, best.tokens.size() < 12, 1.0);
    CHECK(best.score == doctest::Approx(expected).epsilon(1e-5));
  }
}

TEST_CASE("a prefix is forced, stays in the output and counts in the score") {
  BigramModel model;
  SUBCASE("greedy: forcing its own first tokens changes nothing") {
    SearchOptions options;
    options.beam_size = 1;
    options.max_length = 12;
    const Run free = run_search({1}, options);
    options.prefix.assign(free.results[0][0].tokens.begin(), free.results[0][0].tokens.begin() + 2);
    const Run forced = run_search({1}, options);
    CHECK(forced.results[0][0].tokens == free.results[0][0].tokens);
    CHECK(forced.results[0][0].score == free.results[0][0].score);
  }
  SUBCASE("beam: every hypothesis starts with the prefix") {
    SearchOptions options;
    options.beam_size = 4;
    options.n_best = 4;
    options.max_length = 12;
    options.prefix = {5, 25};  // not what the model would pick after 1
    const Run run = run_search({1, 7}, options);
    const int32_t starts[] = {1, 7};
    for (int i = 0; i < 2; ++i) {
      REQUIRE(run.results[i].size() == 4);
      for (const Hypothesis& h : run.results[i]) {
        REQUIRE(h.tokens.size() >= 2);
        CHECK(h.tokens[0] == 5);
        CHECK(h.tokens[1] == 25);
        CHECK(h.score ==
              doctest::Approx(model.score(starts[i], h.tokens, h.tokens.size() < 12, 1.0)).epsilon(1e-5));
      }
    }
    CHECK(run.row_counts[0] == 2);  // one row per sentence while forcing
    CHECK(run.row_counts[1] == 2);
    CHECK(run.row_counts[2] == 2);
    CHECK(run.row_counts[3] == 8);
  }
}

TEST_CASE("the callback cancels the search") {
  for (int32_t beam : {1, 4}) {
    BigramModel model;
    SearchOptions options;
    options.beam_size = beam;
    options.max_length = 12;
    const int32_t eos = BigramModel::eos();
    int calls = 0;
    try {
      search(model, 1, 1, {&eos, 1}, options, [&](int32_t, std::span<const int32_t>) { return ++calls < 2; });
      FAIL("not cancelled");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::Cancelled);
    }
    CHECK(calls == 2);
    CHECK(model.steps < 12);
  }
}

TEST_CASE("sampling: seeded, and top_k 1 is greedy") {
  SearchOptions options;
  options.beam_size = 1;
  options.max_length = 12;
  const std::vector<int32_t> starts = {1, 7, 13, 9};
  const Run greedy = run_search(starts, options);
  options.temperature = 1.5f;
  options.seed = 42;
  const Run a = run_search(starts, options);
  const Run b = run_search(starts, options);
  options.top_k = 1;
  const Run top1 = run_search(starts, options);
  for (size_t i = 0; i < starts.size(); ++i) {
    CHECK(a.results[i][0].tokens == b.results[i][0].tokens);
    CHECK(top1.results[i][0].tokens == greedy.results[i][0].tokens);
  }
}

TEST_CASE("a sentence whose every continuation is banned ends without hypotheses") {
  // No EOS and no_repeat_ngram_size 1: after 39 tokens (the start token makes 40) nothing is left.
  BigramModel model;
  SearchOptions options;
  options.beam_size = 2;
  options.no_repeat_ngram_size = 1;
  options.max_length = 60;
  const auto results = search(model, 1, 1, {}, options);
  CHECK(results.at(0).empty());
  CHECK(model.steps == 40);
}

TEST_CASE("invalid options are rejected") {
  BigramModel model;
  const int32_t eos = BigramModel::eos();
  auto code = [&](SearchOptions o, int32_t batch = 1, int32_t start = 1) {
    try {
      search(model, batch, start, {&eos, 1}, o);
    } catch (const Error& e) {
      return e.code();
    }
    return ErrorCode::Internal;  // not rejected
  };
  SearchOptions o;
  o.beam_size = 0;
  CHECK(code(o) == ErrorCode::InvalidArgument);
  o = {};
  o.n_best = 5;
  CHECK(code(o) == ErrorCode::InvalidArgument);
  o.n_best = 0;
  CHECK(code(o) == ErrorCode::InvalidArgument);
  o = {};
  o.max_length = 0;
  CHECK(code(o) == ErrorCode::InvalidArgument);
  o = {};
  o.temperature = 1.0f;  // sampling needs beam_size 1
  CHECK(code(o) == ErrorCode::InvalidArgument);
  o = {};
  o.bad_words = {{}};
  CHECK(code(o) == ErrorCode::InvalidArgument);
  o.bad_words = {{40}};
  CHECK(code(o) == ErrorCode::InvalidArgument);
  o = {};
  o.prefix = {5, eos};
  CHECK(code(o) == ErrorCode::InvalidArgument);
  o.prefix = {5, 6};
  o.max_length = 2;
  CHECK(code(o) == ErrorCode::InvalidArgument);
  o = {};
  o.forced_eos_id = 40;
  CHECK(code(o) == ErrorCode::InvalidArgument);
  o = {};
  o.repetition_penalty = 0;
  CHECK(code(o) == ErrorCode::InvalidArgument);
  CHECK(code({}, -1) == ErrorCode::InvalidArgument);
  CHECK(code({}, 1, 40) == ErrorCode::InvalidArgument);
  CHECK(search(model, 0, 1, {&eos, 1}, {}).empty());
}

namespace {

// A model with a real vocabulary size (the fast paths work in blocks of 16, 64 and 512 tokens;
// the bigram model's vocabulary fits in one): logits from a hash of (step, token, id), larger
// for a few ids, plus an output bias that it adds itself or defers to search().
class WideModel : public DecoderStep {
 public:
  static constexpr int32_t kVocab = 65001;
  explicit WideModel(bool defer) : defer_(defer), bias_(kVocab) {
    for (int32_t v = 0; v < kVocab; ++v) bias_[v] = 0.25f * static_cast<float>(hash(7, 7, v) % 1000) / 1000.0f;
  }
  int32_t vocab_size() const override { return kVocab; }
  const float* deferred_logits_bias() const override { return defer_ ? bias_.data() : nullptr; }
  void step(std::span<const int32_t>, std::span<const int32_t> tokens, float* logits) override {
    for (size_t r = 0; r < tokens.size(); ++r) {
      float* row = logits + r * kVocab;
      logit_row(steps, tokens[r], row);
      if (!defer_)
        for (int32_t v = 0; v < kVocab; ++v) row[v] += bias_[v];
    }
    ++steps;
  }
  // The logits of a step, without the bias.
  static void logit_row(int32_t step, int32_t token, float* row) {
    for (int32_t v = 0; v < kVocab; ++v) {
      const uint32_t h = hash(step, token, v);
      row[v] = static_cast<float>(h % 20000) / 1000.0f - 10.0f + (h % 4099 == 0 ? 12.0f : 0.0f);
    }
  }
  static uint32_t hash(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t h = a * 0x9E3779B1u ^ (b + 0x7F4A7C15u) * 0x85EBCA77u ^ c * 0xC2B2AE3Du;
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    h ^= h >> 12;
    return h;
  }
  const std::vector<float>& bias() const { return bias_; }
  int32_t steps = 0;

 private:
  bool defer_;
  std::vector<float> bias_;
};

}  // namespace

TEST_CASE("a wide vocabulary: deferred bias, greedy log-probs against double precision") {
  const int32_t eos = 3;
  for (int32_t beams : {4, 1}) {
    SearchOptions o;
    o.beam_size = beams;
    o.max_length = 6;
    o.bad_words = {{0}};
    o.renormalize_logits = true;
    WideModel own(false), deferred(true);
    const auto a = search(own, 3, 1, {&eos, 1}, o);
    const auto b = search(deferred, 3, 1, {&eos, 1}, o);
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      REQUIRE(a[i].size() == b[i].size());
      for (size_t k = 0; k < a[i].size(); ++k) {
        CHECK(a[i][k].tokens == b[i][k].tokens);
        CHECK(a[i][k].score == b[i][k].score);
      }
    }
    if (beams > 1) continue;
    // Greedy: each token the argmax, the score the mean of log_softmax in double (the bad word
    // removed, renormalized: the same as a log_softmax without it).
    std::vector<float> row(WideModel::kVocab);
    for (const auto& hypotheses : a) {
      REQUIRE(hypotheses.size() == 1);
      const auto& h = hypotheses[0];
      int32_t previous = 1;
      double total = 0;
      for (size_t t = 0; t < h.tokens.size(); ++t) {
        WideModel::logit_row(static_cast<int32_t>(t), previous, row.data());
        for (int32_t v = 0; v < WideModel::kVocab; ++v) row[v] += own.bias()[v];
        row[0] = -INFINITY;
        const int32_t best = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
        CHECK(h.tokens[t] == best);
        double sum = 0;
        for (float v : row) sum += std::exp(double(v) - row[best]);
        total += -std::log(sum);
        previous = best;
      }
      REQUIRE(h.tokens.size() == 6);  // EOS never wins here
      CHECK(h.score == doctest::Approx(total / 6).epsilon(1e-6));
    }
  }
}
