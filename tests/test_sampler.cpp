// Decoding without a model: the sampler on crafted logits, the stop-string hold-back logic, and
// the generation loop driven by a scripted fake model.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "engine/decoding/generator.h"
#include "engine/decoding/sampler.h"
#include "engine/decoding/stop_strings.h"
#include "engine/error.h"

using namespace octet;
using namespace octet::decoding;

namespace {

// Every filter off, temperature 1: the distribution is the plain softmax of the logits.
SamplingParams plain(float temperature = 1.0f) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.repeat_penalty = 1.0f;
  return p;
}

// Logits whose softmax is exactly `probabilities`.
std::vector<float> logits_of(const std::vector<float>& probabilities) {
  std::vector<float> logits;
  for (float p : probabilities) logits.push_back(std::log(p));
  return logits;
}

std::vector<int32_t> ids_of(std::span<const Candidate> candidates) {
  std::vector<int32_t> ids;
  for (const auto& c : candidates) ids.push_back(c.id);
  return ids;
}

}  // namespace

TEST_SUITE("rng") {
  TEST_CASE("xoshiro256** seeded by splitmix64 gives the reference sequence") {
    // Values from an independent Python implementation of the same two published algorithms.
    Rng zero(0);
    CHECK(zero.next() == 0x99ec5f36cb75f2b4ull);
    CHECK(zero.next() == 0xbf6e1f784956452aull);
    CHECK(zero.next() == 0x1a5f849d4933e6e0ull);
    Rng answer(42);
    CHECK(answer.next() == 0x15780b2e0c2ec716ull);
  }
  TEST_CASE("uniform numbers lie in [0, 1)") {
    Rng rng(7);
    for (int i = 0; i < 10000; ++i) {
      const double u = rng.uniform();
      REQUIRE(u >= 0.0);
      REQUIRE(u < 1.0);
    }
  }
}

TEST_SUITE("sampler") {
  TEST_CASE("greedy picks the argmax, ties going to the lowest id") {
    Sampler sampler(5, plain(0.0f));
    const std::vector<float> logits = {0.1f, 3.0f, -1.0f, 3.0f, 2.9f};
    CHECK(sampler.sample(logits, {}) == 1);
    const auto d = sampler.distribution(logits, {});
    REQUIRE(d.size() == 1);
    CHECK(d[0].p == 1.0f);
  }

  TEST_CASE("greedy ignores the filters and the seed") {
    SamplingParams p = plain(0.0f);
    p.top_k = 1;
    p.top_p = 0.1f;
    p.min_p = 0.9f;
    for (uint64_t seed : {1u, 2u, 3u}) {
      p.seed = seed;
      Sampler sampler(3, p);
      CHECK(sampler.sample(std::vector<float>{1.0f, 5.0f, 2.0f}, {}) == 1);
    }
  }

  TEST_CASE("repetition penalty divides positive logits and multiplies negative ones, once") {
    SamplingParams p = plain();
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 3;
    Sampler sampler(5, p);
    const std::vector<float> logits = {4.0f, -1.0f, 3.0f, 1.0f, 2.0f};
    // Token 3 is outside the last 3; token 1 occurs twice but is penalized once.
    const std::vector<int32_t> history = {3, 1, 0, 1};
    std::map<int32_t, float> penalized;
    for (const auto& c : sampler.distribution(logits, history)) penalized[c.id] = c.logit;
    CHECK(penalized[0] == 2.0f);
    CHECK(penalized[1] == -2.0f);
    CHECK(penalized[2] == 3.0f);
    CHECK(penalized[3] == 1.0f);
    CHECK(penalized[4] == 2.0f);
  }

  TEST_CASE("repetition penalty changes the greedy choice; repeat_last_n 0 turns it off") {
    SamplingParams p = plain(0.0f);
    p.repeat_penalty = 1.5f;
    p.repeat_last_n = 64;
    const std::vector<float> logits = {3.0f, 2.5f};
    CHECK(Sampler(2, p).sample(logits, std::vector<int32_t>{0}) == 1);
    p.repeat_last_n = 0;
    CHECK(Sampler(2, p).sample(logits, std::vector<int32_t>{0}) == 0);
    p.repeat_last_n = -1;  // the whole history
    CHECK(Sampler(2, p).sample(logits, std::vector<int32_t>{0, 1, 1, 1}) == 0);
  }

  TEST_CASE("top-k keeps the k best, renormalized") {
    SamplingParams p = plain();
    p.top_k = 2;
    Sampler sampler(4, p);
    const auto d = sampler.distribution(logits_of({0.1f, 0.4f, 0.2f, 0.3f}), {});
    CHECK(ids_of(d) == std::vector<int32_t>{1, 3});
    CHECK(d[0].p == doctest::Approx(0.4 / 0.7));
    CHECK(d[1].p == doctest::Approx(0.3 / 0.7));
  }

  TEST_CASE("top-p keeps the smallest prefix reaching p") {
    const auto logits = logits_of({0.05f, 0.5f, 0.15f, 0.3f});
    SamplingParams p = plain();
    p.top_p = 0.75f;
    CHECK(ids_of(Sampler(4, p).distribution(logits, {})) == std::vector<int32_t>{1, 3});
    p.top_p = 0.85f;
    CHECK(ids_of(Sampler(4, p).distribution(logits, {})) == std::vector<int32_t>{1, 3, 2});
    p.top_p = 0.0f;  // edge: still keeps the best token
    CHECK(ids_of(Sampler(4, p).distribution(logits, {})) == std::vector<int32_t>{1});
    p.top_p = 1.0f;  // off
    CHECK(Sampler(4, p).distribution(logits, {}).size() == 4);
  }

  TEST_CASE("top-p sums over the top-k survivors (llama.cpp order)") {
    // Over all four, 0.5 + 0.3 = 0.8 < 0.82; renormalized over the top 3, 0.526 + 0.316 > 0.82.
    const auto logits = logits_of({0.5f, 0.3f, 0.15f, 0.05f});
    SamplingParams p = plain();
    p.top_p = 0.82f;
    CHECK(Sampler(4, p).distribution(logits, {}).size() == 3);
    p.top_k = 3;
    CHECK(Sampler(4, p).distribution(logits, {}).size() == 2);
  }

  TEST_CASE("min-p keeps tokens at least min_p times as likely as the best") {
    const auto logits = logits_of({0.5f, 0.3f, 0.15f, 0.05f});
    SamplingParams p = plain();
    p.min_p = 0.2f;  // threshold 0.1
    CHECK(ids_of(Sampler(4, p).distribution(logits, {})) == std::vector<int32_t>{0, 1, 2});
    p.min_p = 1.0f;  // edge: only the best
    CHECK(ids_of(Sampler(4, p).distribution(logits, {})) == std::vector<int32_t>{0});
    // edge: ties with the best survive min_p = 1, lower id first
    CHECK(ids_of(Sampler(3, p).distribution(std::vector<float>{1.0f, 2.0f, 2.0f}, {})) ==
          std::vector<int32_t>{1, 2});
    p.min_p = 0.0f;  // off
    CHECK(Sampler(4, p).distribution(logits, {}).size() == 4);
  }

  TEST_CASE("top-p and min-p together keep the shorter prefix") {
    const auto logits = logits_of({0.5f, 0.3f, 0.15f, 0.05f});
    SamplingParams p = plain();
    p.top_p = 0.99f;  // alone: all four
    p.min_p = 0.5f;   // alone: 0.5 and 0.3
    CHECK(ids_of(Sampler(4, p).distribution(logits, {})) == std::vector<int32_t>{0, 1});
    p.top_p = 0.4f;
    CHECK(ids_of(Sampler(4, p).distribution(logits, {})) == std::vector<int32_t>{0});
  }

  TEST_CASE("temperature reshapes the survivors") {
    const std::vector<float> logits = {0.0f, std::log(2.0f)};
    Sampler cold(2, plain(0.5f));
    auto d = cold.distribution(logits, {});  // p ~ exp(2 * logit): 1 : 4
    CHECK(d[0].id == 1);
    CHECK(d[0].p == doctest::Approx(0.8));
    Sampler hot(2, plain(2.0f));
    d = hot.distribution(logits, {});  // 1 : sqrt(2)
    CHECK(d[0].p == doctest::Approx(std::sqrt(2.0) / (1 + std::sqrt(2.0))));
  }

  TEST_CASE("the same seed gives the same tokens, another seed others") {
    const auto logits = logits_of({0.2f, 0.2f, 0.2f, 0.2f, 0.2f});
    auto draw = [&](uint64_t seed) {
      SamplingParams p = plain();
      p.seed = seed;
      Sampler sampler(5, p);
      std::vector<int32_t> ids;
      for (int i = 0; i < 64; ++i) ids.push_back(sampler.sample(logits, {}));
      return ids;
    };
    CHECK(draw(1234) == draw(1234));
    CHECK(draw(1234) != draw(1235));
  }

  TEST_CASE("draws follow the distribution") {
    SamplingParams p = plain();
    p.seed = 99;
    Sampler sampler(3, p);
    const auto logits = logits_of({0.6f, 0.3f, 0.1f});
    int counts[3] = {};
    const int n = 20000;
    for (int i = 0; i < n; ++i) ++counts[sampler.sample(logits, {})];
    CHECK(counts[0] / double(n) == doctest::Approx(0.6).epsilon(0.05));
    CHECK(counts[1] / double(n) == doctest::Approx(0.3).epsilon(0.05));
    CHECK(counts[2] / double(n) == doctest::Approx(0.1).epsilon(0.1));
  }

  TEST_CASE("NaN and -inf logits are never drawn; no finite logit is an error") {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    SamplingParams p = plain();
    Sampler sampler(3, p);
    for (int i = 0; i < 200; ++i) CHECK(sampler.sample(std::vector<float>{nan, 1.0f, -inf}, {}) == 1);
    CHECK_THROWS_AS(sampler.sample(std::vector<float>{nan, -inf, -inf}, {}), octet::Error);
    CHECK_THROWS_AS(Sampler(3, plain(0.0f)).sample(std::vector<float>{-inf, -inf, nan}, {}), octet::Error);
  }

  TEST_CASE("wrong logit count and bad parameters are refused") {
    Sampler sampler(3, plain());
    CHECK_THROWS_AS(sampler.sample(std::vector<float>{1.0f, 2.0f}, {}), octet::Error);
    SamplingParams p = plain();
    p.repeat_penalty = 0.0f;
    CHECK_THROWS_AS(Sampler(3, p), octet::Error);
  }
}

TEST_SUITE("stop strings") {
  TEST_CASE("no stop strings: text passes straight through") {
    StopStringMatcher m({});
    CHECK(m.push("Hello") == "Hello");
    CHECK(m.push(", world") == ", world");
    CHECK(m.finish().empty());
  }

  TEST_CASE("a stop string split over pieces is held back and never emitted") {
    StopStringMatcher m({"\nUser:"});
    CHECK(m.push("Hello\nUs") == "Hello");
    CHECK(m.push("er") == "");
    CHECK(m.push(": hi") == "");
    CHECK(m.stopped());
    CHECK(m.push("more").empty());
    CHECK(m.finish().empty());
  }

  TEST_CASE("held text is released once it cannot start a stop string") {
    StopStringMatcher m({"\nUser:"});
    CHECK(m.push("a\nU") == "a");
    CHECK(m.push("nicorn") == "\nUnicorn");
    CHECK_FALSE(m.stopped());
    CHECK(m.push("\n") == "");
    CHECK(m.finish() == "\n");  // the end of generation releases what was held
  }

  TEST_CASE("the earliest of several stop strings wins, inside one piece") {
    StopStringMatcher m({"END", "ab"});
    CHECK(m.push("xxabyyEND") == "xx");
    CHECK(m.stopped());
  }

  TEST_CASE("a stop string that overlaps its own partial match") {
    StopStringMatcher m({"aab"});
    CHECK(m.push("a") == "");
    CHECK(m.push("a") == "");
    CHECK(m.push("a") == "a");  // "aaa": the last two may still begin "aab"
    CHECK(m.push("b") == "");
    CHECK(m.stopped());
  }

  TEST_CASE("multi-byte characters are never split") {
    // "é" is C3 A9. A stop string starting with A9 (not valid UTF-8 on its own) must not make
    // the matcher release "caf\xC3" while holding "\xA9".
    StopStringMatcher m({"\xA9x"});
    CHECK(m.push("caf\xC3\xA9") == "caf");
    CHECK(m.push("y") == "\xC3\xA9y");
    // A piece ending inside a character waits for the rest of it.
    StopStringMatcher n({"STOP"});
    CHECK(n.push("na\xC3") == "na");
    CHECK(n.push("\xAFve ") == "\xC3\xAFve ");
    // A multi-byte stop string arriving one character at a time.
    StopStringMatcher dash({"\xE2\x80\x94\xE2\x80\x94"});  // "——"
    CHECK(dash.push("x\xE2\x80\x94") == "x");
    CHECK(dash.push("\xE2\x80\x94") == "");
    CHECK(dash.stopped());
  }

  TEST_CASE("utf8_boundary_at_or_before") {
    CHECK(utf8_boundary_at_or_before("abc", 3) == 3);
    CHECK(utf8_boundary_at_or_before("a\xC3\xA9", 2) == 1);
    CHECK(utf8_boundary_at_or_before("a\xC3\xA9", 3) == 3);
    CHECK(utf8_boundary_at_or_before("\xF0\x9F\x98\x80", 3) == 0);  // inside an emoji
    CHECK(utf8_boundary_at_or_before("\xF0\x9F\x98\x80", 4) == 4);
    CHECK(utf8_boundary_at_or_before("", 0) == 0);
  }
}

// ---- The generation loop on a scripted model -------------------------------------------------

namespace {

// Tokens are fixed strings; 0 is EOS and 1 BOS (both special, decoded to nothing).
const std::vector<std::string> kPieces = {"", "", "a", "b", "\n", "User", ":", " ", "\xC3", "\xA9"};
constexpr int32_t kEos = 0, kBos = 1, kA = 2, kB = 3, kNewline = 4, kUser = 5, kColon = 6,
                  kSpace = 7;

class FakeTokenizer : public Tokenizer {
 public:
  FakeTokenizer() {
    bos_id_ = kBos;
    eos_ids_ = {kEos};
  }
  std::vector<int32_t> encode(std::string_view, bool, bool) const override { return {}; }
  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string text;
    for (int32_t id : ids)
      if (!(skip_special && is_special(id))) text += kPieces.at(id);
    return text;
  }
  int32_t vocab_size() const override { return static_cast<int32_t>(kPieces.size()); }
  bool is_special(int32_t id) const override { return id == kEos || id == kBos; }
};

// Predicts script[position] after evaluating `position` tokens; records each batch's size.
class ScriptedState : public DecoderState {
 public:
  ScriptedState(std::vector<int32_t> script, int32_t capacity, std::vector<size_t>& batches)
      : script_(std::move(script)), capacity_(capacity), batches_(batches), logits_(kPieces.size()) {}
  const float* forward(std::span<const int32_t> tokens, float*) override {
    if (used_ + static_cast<int32_t>(tokens.size()) > capacity_)
      fail(ErrorCode::InvalidArgument, "does not fit");
    used_ += static_cast<int32_t>(tokens.size());
    batches_.push_back(tokens.size());
    std::fill(logits_.begin(), logits_.end(), 0.0f);
    logits_[script_.at(used_ % script_.size())] = 10.0f;
    return logits_.data();
  }
  int32_t used() const override { return used_; }
  int32_t capacity() const override { return capacity_; }
  void reset() override { used_ = 0; }

 private:
  std::vector<int32_t> script_;
  int32_t capacity_;
  std::vector<size_t>& batches_;
  std::vector<float> logits_;
  int32_t used_ = 0;
};

class ScriptedModel : public LanguageModel {
 public:
  explicit ScriptedModel(std::vector<int32_t> script) : script_(std::move(script)) {
    tokenizer_ = std::make_unique<FakeTokenizer>();
  }
  const std::string& architecture() const override { return name_; }
  int32_t vocab_size() const override { return static_cast<int32_t>(kPieces.size()); }
  int32_t context_length() const override { return 64; }
  using LanguageModel::new_state;
  std::unique_ptr<DecoderState> new_state(int32_t context_length, DType) const override {
    return std::make_unique<ScriptedState>(script_, context_length, batches);
  }
  mutable std::vector<size_t> batches;

 private:
  std::vector<int32_t> script_;
  std::string name_ = "scripted";
};

struct Run {
  std::string text;
  GenerationStats stats;
};

Run run(Generator& generator, std::vector<int32_t> prompt, GenerationOptions options,
        int cancel_after_pieces = -1) {
  Sampler greedy(static_cast<int32_t>(kPieces.size()), plain(0.0f));
  Run r;
  int pieces = 0;
  r.stats = generator.generate(prompt, options, greedy, [&](std::string_view piece) {
    r.text += piece;
    return ++pieces != cancel_after_pieces;
  });
  return r;
}

GenerationOptions max_tokens(int32_t n, std::vector<std::string> stop = {}) {
  GenerationOptions o;
  o.max_tokens = n;
  o.stop_strings = std::move(stop);
  return o;
}

}  // namespace

TEST_SUITE("generator") {
  TEST_CASE("the prompt is one forward call, then one token per call; EOS ends the turn") {
    // positions: 0 BOS, 1 b ; then it predicts a, b, EOS
    auto model = std::make_shared<ScriptedModel>(std::vector<int32_t>{kB, kB, kA, kB, kEos, kA});
    Generator generator(model, 32);
    const Run r = run(generator, {kBos, kB}, max_tokens(10));
    CHECK(r.text == "ab");
    CHECK(r.stats.stop_reason == StopReason::Eos);
    CHECK(r.stats.prompt_tokens == 2);
    CHECK(r.stats.generated_tokens == 2);
    CHECK(model->batches == std::vector<size_t>{2, 1, 1});
    CHECK(generator.used() == 4);  // the EOS does not join the conversation
  }

  TEST_CASE("max tokens: the last token is evaluated at the start of the next call") {
    auto model = std::make_shared<ScriptedModel>(std::vector<int32_t>{kA, kA, kB, kA, kB, kA, kB});
    Generator generator(model, 32);
    Run r = run(generator, {kBos}, max_tokens(3));
    CHECK(r.text == "aba");
    CHECK(r.stats.stop_reason == StopReason::MaxTokens);
    CHECK(generator.used() == 4);
    CHECK(model->batches == std::vector<size_t>{1, 1, 1});
    r = run(generator, {kSpace}, max_tokens(1));  // pending "a" + the prompt, in one batch
    CHECK(model->batches.back() == 2);
    CHECK(generator.used() == 6);
    generator.reset();
    CHECK(generator.used() == 0);
  }

  TEST_CASE("max_tokens 0 evaluates the prompt only") {
    auto model = std::make_shared<ScriptedModel>(std::vector<int32_t>{kA});
    Generator generator(model, 32);
    const Run r = run(generator, {kBos, kA}, max_tokens(0));
    CHECK(r.text.empty());
    CHECK(r.stats.generated_tokens == 0);
    CHECK(generator.used() == 2);
  }

  TEST_CASE("a stop string ends generation and is never streamed") {
    // "a" "b" "\n" "User" ":" ...
    auto model = std::make_shared<ScriptedModel>(
        std::vector<int32_t>{kA, kA, kB, kNewline, kUser, kColon, kA, kA});
    Generator generator(model, 32);
    const Run r = run(generator, {kBos}, max_tokens(20, {"\nUser:"}));
    CHECK(r.text == "ab");
    CHECK(r.stats.stop_reason == StopReason::StopString);
    CHECK(r.stats.generated_tokens == 5);
  }

  TEST_CASE("held-back text that turns out not to be a stop string is released at the end") {
    auto model = std::make_shared<ScriptedModel>(std::vector<int32_t>{kA, kA, kNewline, kUser});
    Generator generator(model, 32);
    const Run r = run(generator, {kBos}, max_tokens(3, {"\nUser:"}));
    CHECK(r.text == "a\nUser");
    CHECK(r.stats.stop_reason == StopReason::MaxTokens);
  }

  TEST_CASE("a character split over two tokens is streamed whole") {
    auto model = std::make_shared<ScriptedModel>(std::vector<int32_t>{kA, 8, 9, kEos});
    Generator generator(model, 32);
    std::vector<std::string> pieces;
    Sampler greedy(static_cast<int32_t>(kPieces.size()), plain(0.0f));
    generator.generate(std::vector<int32_t>{kBos}, max_tokens(10), greedy, [&](std::string_view p) {
      pieces.emplace_back(p);
      return true;
    });
    CHECK(pieces == std::vector<std::string>{"\xC3\xA9"});
  }

  TEST_CASE("a full context stops generation") {
    auto model = std::make_shared<ScriptedModel>(std::vector<int32_t>{kA});
    Generator generator(model, 5);
    const Run r = run(generator, {kBos, kA}, max_tokens(100));
    CHECK(r.stats.stop_reason == StopReason::ContextFull);
    CHECK(r.text == "aaaa");
    CHECK(generator.used() == 5);
    CHECK_THROWS_AS(run(generator, {kA}, max_tokens(1)), octet::Error);  // no room for a prompt
  }

  TEST_CASE("the callback can cancel") {
    auto model = std::make_shared<ScriptedModel>(std::vector<int32_t>{kA});
    Generator generator(model, 32);
    const Run r = run(generator, {kBos}, max_tokens(10), /*cancel_after_pieces=*/2);
    CHECK(r.stats.stop_reason == StopReason::Cancelled);
    CHECK(r.text == "aa");
    CHECK(r.stats.generated_tokens == 2);
  }

  TEST_CASE("an empty prompt on an empty context is refused") {
    auto model = std::make_shared<ScriptedModel>(std::vector<int32_t>{kA});
    Generator generator(model, 32);
    CHECK_THROWS_AS(run(generator, {}, max_tokens(1)), octet::Error);
  }
}
