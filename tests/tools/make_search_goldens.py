"""Writes tests/data/search/bigram_goldens.json: Hugging Face generate() outputs (beam search and
greedy) of a tiny deterministic "bigram" language model, for engine/decoding/search.h to reproduce.

The model has no weights to speak of: two float32 tables,

    logits(next token | sequence s_0 .. s_t) = token_table[s_t] + position_table[t % PERIOD]

where s_0 is the start token (position 0; the decoder start token of a translation model) and t the
position of the last token. The position term makes rows that end in the same token differ from step
to step, so beams diverge. A C++ DecoderStep implements this in a few lines: on step k (k = 0 on the
first call) row r gets token_table[tokens[r]] + position_table[k % PERIOD].

Driven through transformers' GenerationMixin as a decoder-only model (input_ids = [[start]]), and
cross-checked as an encoder-decoder model (dummy encoder, decoder_input_ids = [[start]]): both go
through the same _beam_search code and give identical results (asserted below).

Table values are multiples of 2^-16 below 8 in magnitude: exact in float32 and in decimal, so the
JSON parses to the very same floats in any language. No two logits of a row tie exactly (asserted),
and every case is re-run with the tables perturbed by up to 1e-5 to make sure no result hinges on a
near-tie that float rounding differences in C++ could flip (asserted: same tokens, scores within 1e-4).

Usage: .venv/bin/python tests/tools/make_search_goldens.py      (~5 s, CPU)
"""
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput, Seq2SeqLMOutput

OUT = Path(__file__).resolve().parent.parent / "data" / "search"
SEED = 4321
VOCAB = 40
PAD, UNK, EOS = 0, 1, 2
PERIOD = 3
START_TOKENS = [1, 7, 13]  # one sequence each, searched together in one batch
QUANTUM = 2.0 ** -16


def make_tables():
    """Random tables, then a few hand-made features so every option of the search matters:
    - EOS gets likelier along the sequence (the position table) so hypotheses end at varied lengths;
    - start token 13 strongly prefers EOS first (min_length matters, a one-token hypothesis [EOS]);
    - 5 -> 6 is a likely bigram and 7 -> 5 likely (bad_words [5, 6] matters);
    - pad (0) is a plausible token after some tokens (bad_words [0] matters);
    - 9 <-> 10 attract each other (n-gram repetition, repetition penalty matter)."""
    g = np.random.default_rng(SEED)
    token = g.normal(0.0, 1.5, (VOCAB, VOCAB))
    position = g.normal(0.0, 0.7, (PERIOD, VOCAB))
    token[:, EOS] -= 0.5
    position[:, EOS] = [-1.0, 0.3, 0.9]
    token[13, EOS] = token[13].max() + 2.0
    token[7, 5] = token[7].max() + 0.7
    token[5, 6] = token[5].max() + 1.0
    token[[3, 11, 20, 27], PAD] = token[[3, 11, 20, 27]].max(axis=1) + 1.5
    token[9, 10] = token[9].max() + 1.2
    token[10, 9] = token[10].max() + 1.2
    token[1, 9] = token[1].max() + 0.5
    token = np.clip(np.round(token / QUANTUM) * QUANTUM, -7.5, 7.5).astype(np.float32)
    position = np.clip(np.round(position / QUANTUM) * QUANTUM, -7.5, 7.5).astype(np.float32)
    for p in range(PERIOD):  # no exact ties within a row of logits
        rows = token + position[p]
        assert all(len(set(r.tolist())) == VOCAB for r in rows)
    return token, position


# ------------------------------------------------------------------------------------------------
# The bigram model as a transformers model. No KV cache: each call gets the whole sequence (use_cache
# False), the logits depend on the last token and its position only.

class BigramConfig(PretrainedConfig):
    model_type = "octet_bigram"

    def __init__(self, vocab_size=VOCAB, period=PERIOD, **kwargs):
        self.vocab_size = vocab_size
        self.period = period
        super().__init__(**kwargs)


def bigram_logits(token_table, position_table, ids):
    positions = torch.arange(ids.shape[1]) % position_table.shape[0]
    return token_table[ids] + position_table[positions][None]  # [batch, length, vocab]


class BigramLM(PreTrainedModel, GenerationMixin):
    config_class = BigramConfig

    def __init__(self, config, token_table, position_table):
        super().__init__(config)
        self.token_table = nn.Parameter(torch.tensor(token_table), requires_grad=False)
        self.position_table = nn.Parameter(torch.tensor(position_table), requires_grad=False)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return CausalLMOutput(logits=bigram_logits(self.token_table, self.position_table, input_ids))


class DummyEncoder(nn.Module):
    main_input_name = "input_ids"

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return BaseModelOutput(last_hidden_state=torch.zeros(input_ids.shape[0], input_ids.shape[1], 1))


class BigramSeq2Seq(PreTrainedModel, GenerationMixin):
    """The same bigram model as the decoder of an encoder-decoder model whose encoder output is ignored."""
    config_class = BigramConfig

    def __init__(self, config, token_table, position_table):
        super().__init__(config)
        self.token_table = nn.Parameter(torch.tensor(token_table), requires_grad=False)
        self.position_table = nn.Parameter(torch.tensor(position_table), requires_grad=False)
        self.encoder = DummyEncoder()

    def get_encoder(self):
        return self.encoder

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None, **kwargs):
        return Seq2SeqLMOutput(logits=bigram_logits(self.token_table, self.position_table, decoder_input_ids))


def build(cls, token, position, encoder_decoder=False):
    config = BigramConfig(pad_token_id=PAD, eos_token_id=EOS, bos_token_id=UNK,
                          decoder_start_token_id=UNK, is_encoder_decoder=encoder_decoder)
    model = cls(config, token, position).eval()
    model.generation_config = GenerationConfig(pad_token_id=PAD, eos_token_id=EOS, use_cache=False,
                                               decoder_start_token_id=UNK)
    return model


# ------------------------------------------------------------------------------------------------
# Cases: generate() keyword arguments. All use do_sample=False; beam cases return
# num_return_sequences hypotheses per start token with their sequences_scores.

BEAM = {"num_beams": 4, "num_return_sequences": 2, "max_new_tokens": 12}
CASES = [
    ("beam_lp1.0", {**BEAM, "length_penalty": 1.0}),
    ("beam_lp0.6", {**BEAM, "length_penalty": 0.6}),
    ("beam_lp2.0", {**BEAM, "length_penalty": 2.0}),
    ("beam_lp0.0", {**BEAM, "length_penalty": 0.0}),
    ("beam_lp1.0_early", {**BEAM, "length_penalty": 1.0, "early_stopping": True}),
    ("beam_lp0.6_early", {**BEAM, "length_penalty": 0.6, "early_stopping": True}),
    ("beam_lp2.0_early", {**BEAM, "length_penalty": 2.0, "early_stopping": True}),
    ("beam_no_repeat_ngram2", {**BEAM, "no_repeat_ngram_size": 2}),
    ("beam_repetition_penalty1.3", {**BEAM, "repetition_penalty": 1.3}),
    ("beam_bad_words", {**BEAM, "bad_words_ids": [[0], [5, 6]]}),
    ("beam_min_length3", {**BEAM, "min_length": 3}),
    ("beam_all_options", {**BEAM, "length_penalty": 0.6, "no_repeat_ngram_size": 2, "repetition_penalty": 1.3,
                          "bad_words_ids": [[0], [5, 6]], "min_length": 3}),
    ("beam4_return4_max5", {"num_beams": 4, "num_return_sequences": 4, "max_new_tokens": 5, "length_penalty": 1.0}),
    ("beam2_return1", {"num_beams": 2, "num_return_sequences": 1, "max_new_tokens": 12, "length_penalty": 1.0}),
    ("beam5_return3_lp0.6", {"num_beams": 5, "num_return_sequences": 3, "max_new_tokens": 12, "length_penalty": 0.6}),
    # Cases where the early_stopping=False heuristic (stop once the best running beam, scored with its
    # current length, cannot beat the worst hypothesis) cuts off a better, longer hypothesis.
    ("beam2_lp1.5_heuristic", {"num_beams": 2, "num_return_sequences": 1, "max_new_tokens": 20,
                               "length_penalty": 1.5, "bad_words_ids": [[0], [5, 6]]}, [1, 9, 24]),
    ("beam3_lp1.0_heuristic", {"num_beams": 3, "num_return_sequences": 1, "max_new_tokens": 20,
                               "length_penalty": 1.0, "bad_words_ids": [[0], [5, 6]]}, [6, 18, 1]),
    # early_stopping="never": the heuristic assumes the best running beam could reach max length.
    ("beam_lp1.0_never", {**BEAM, "length_penalty": 1.0, "early_stopping": "never"}),
    ("beam_lp2.0_never", {**BEAM, "length_penalty": 2.0, "early_stopping": "never"}),
    ("beam2_lp1.5_never", {"num_beams": 2, "num_return_sequences": 1, "max_new_tokens": 20,
                           "length_penalty": 1.5, "bad_words_ids": [[0], [5, 6]], "early_stopping": "never"},
     [1, 9, 24]),
    ("greedy", {"num_beams": 1, "max_new_tokens": 12}),
    ("greedy_all_options", {"num_beams": 1, "max_new_tokens": 12, "no_repeat_ngram_size": 2,
                            "repetition_penalty": 1.3, "bad_words_ids": [[0], [5, 6]], "min_length": 3}),
]


def run_case(model, kwargs, start_tokens, encoder_decoder=False):
    """Returns per start token a list of {"tokens", "score"} (score None for greedy)."""
    starts = torch.tensor(start_tokens)[:, None]
    common = dict(do_sample=False, return_dict_in_generate=True, output_scores=True, **kwargs)
    with torch.no_grad():
        if encoder_decoder:
            out = model.generate(input_ids=torch.ones_like(starts), decoder_input_ids=starts, **common)
        else:
            out = model.generate(input_ids=starts, attention_mask=torch.ones_like(starts), **common)
    n = kwargs.get("num_return_sequences", 1)
    sequences = out.sequences[:, 1:].tolist()  # drop the start token
    scores = out.sequences_scores.tolist() if kwargs["num_beams"] > 1 else [None] * len(sequences)
    results = []
    for b in range(len(start_tokens)):
        hyps = []
        for seq, score in zip(sequences[b * n:(b + 1) * n], scores[b * n:(b + 1) * n]):
            if EOS in seq:  # the rest is padding (pad_token_id)
                seq = seq[:seq.index(EOS) + 1]
            hyps.append({"tokens": seq, "score": score})
        results.append(hyps)
    return results


def processed(scores, seq, kwargs):
    """Our own re-implementation of the HF logits processors, in HF's order, on one row of scores
    (log-probs in beam search, raw logits in greedy). seq = start token + tokens so far."""
    scores = scores.copy()
    penalty = kwargs.get("repetition_penalty", 1.0)
    if penalty != 1.0:  # every distinct token of seq, the start token included
        for tok in set(seq):
            scores[tok] = scores[tok] * penalty if scores[tok] < 0 else scores[tok] / penalty
    n = kwargs.get("no_repeat_ngram_size", 0)
    if n and len(seq) >= n:  # ban the tokens that would repeat an n-gram of seq (start token included)
        for i in range(len(seq) - n + 1):
            if seq[i:i + n - 1] == seq[len(seq) - n + 1:]:
                scores[seq[i + n - 1]] = -np.inf
    for bad in kwargs.get("bad_words_ids", []):  # ban the last token of a bad sequence whose prefix just occurred
        if bad != [EOS] and (len(bad) == 1 or seq[len(seq) - len(bad) + 1:] == bad[:-1]):
            scores[bad[-1]] = -np.inf
    if len(seq) < kwargs.get("min_length", 0):  # length counts the start token
        scores[EOS] = -np.inf
    return scores


def log_softmax(row):
    row = row.astype(np.float64)
    return row - row.max() - np.log(np.exp(row - row.max()).sum())


def recompute_score(token, position, start, tokens, kwargs):
    """Checks the documented semantics: the HF score is the sum over the generated tokens (EOS
    included) of their log-probs after the logits processors, / len(tokens) ** length_penalty."""
    seq = [start] + tokens
    total = 0.0
    for t in range(len(tokens)):
        total += processed(log_softmax(token[seq[t]] + position[t % PERIOD]), seq[:t + 1], kwargs)[seq[t + 1]]
    return total / len(tokens) ** kwargs.get("length_penalty", 1.0)


def reference_greedy(token, position, start, kwargs):
    """Greedy with the processors applied to the raw logits (as HF's _sample does)."""
    seq = [start]
    while len(seq) - 1 < kwargs["max_new_tokens"] and seq[-1] != EOS or len(seq) == 1:
        t = len(seq) - 1
        seq.append(int(np.argmax(processed(token[seq[t]] + position[t % PERIOD], seq, kwargs))))
    return seq[1:]


def reference_beam(token, position, start, kwargs, heuristic=True):
    """Our own beam search with HF's semantics (the spec that README.md describes), one sentence.
    Returns num_return_sequences (tokens, score) pairs, best first."""
    beams, n_best = kwargs["num_beams"], kwargs["num_return_sequences"]
    alpha, max_new = kwargs.get("length_penalty", 1.0), kwargs["max_new_tokens"]
    early = kwargs.get("early_stopping", False)
    running = [([start], 0.0)]  # (sequence with the start token, sum of processed log-probs)
    finished = []  # (score, tokens), at most `beams`, best first
    for step in range(max_new):
        generated = step + 1  # tokens each candidate has after this step, the new one included
        candidates = []
        for beam, (seq, total) in enumerate(running):
            log_probs = processed(log_softmax(token[seq[-1]] + position[(len(seq) - 1) % PERIOD]), seq, kwargs)
            candidates += [(total + log_probs[tok], beam, tok) for tok in range(VOCAB)]
        candidates.sort(key=lambda c: -c[0])
        top = candidates[:2 * beams]  # 2 x beams: enough to keep `beams` running after some EOS
        # Only EOS candidates (or any candidate at the last step: max length) ranked among the first
        # `beams` become hypotheses; a full list of hypotheses takes no more when early_stopping.
        if not (early is True and len(finished) == beams):
            for rank, (total, beam, tok) in enumerate(top[:beams]):
                if tok == EOS or generated == max_new:
                    finished.append((total / generated ** alpha, running[beam][0][1:] + [tok]))
            finished = sorted(finished, key=lambda f: -f[0])[:beams]
        running = [(running[beam][0] + [tok], total) for total, beam, tok in top if tok != EOS][:beams]
        if generated == max_new or (early is True and len(finished) == beams):
            break
        # early_stopping False: stop once the list is full and the best running beam, normalised
        # with its CURRENT length, is no better than the worst hypothesis. "never": the same, but
        # normalised with the MAXIMUM length when length_penalty > 0 (the best it could still get).
        best_length = max_new if early == "never" and alpha > 0 else generated
        if heuristic and len(finished) == beams and running[0][1] / best_length ** alpha <= finished[-1][0]:
            break
    return [{"tokens": tokens, "score": score} for score, tokens in finished[:n_best]]


def main():
    torch.manual_seed(0)
    token, position = make_tables()
    lm = build(BigramLM, token, position)
    s2s = build(BigramSeq2Seq, token, position, encoder_decoder=True)
    cases = []
    for name, kwargs, *starts in CASES:
        starts = starts[0] if starts else START_TOKENS
        results = run_case(lm, kwargs, starts)
        # Same code path as an encoder-decoder model.
        assert run_case(s2s, kwargs, starts, encoder_decoder=True) == results, name
        # Robust to tiny changes of the tables: no near-ties decide anything.
        g = np.random.default_rng(7)
        for _ in range(4):
            noisy = build(BigramLM, token + g.uniform(-1e-5, 1e-5, token.shape).astype(np.float32),
                          position + g.uniform(-1e-5, 1e-5, position.shape).astype(np.float32))
            other = run_case(noisy, kwargs, starts)
            for hyps, others in zip(results, other):
                assert [h["tokens"] for h in hyps] == [o["tokens"] for o in others], (name, hyps, others)
                if hyps[0]["score"] is not None:
                    assert all(abs(h["score"] - o["score"]) < 1e-4 for h, o in zip(hyps, others))
        # The documented semantics (processors, scores) reproduce HF.
        heuristic_matters = []
        for start, hyps in zip(starts, results):
            if kwargs["num_beams"] == 1:
                assert hyps[0]["tokens"] == reference_greedy(token, position, start, kwargs), name
                continue
            ours = reference_beam(token, position, start, kwargs)
            assert [h["tokens"] for h in hyps] == [o["tokens"] for o in ours], (name, hyps, ours)
            without = reference_beam(token, position, start, kwargs, heuristic=False)
            heuristic_matters.append([h["tokens"] for h in ours] != [h["tokens"] for h in without])
            for h in hyps:
                expect = recompute_score(token, position, start, h["tokens"], kwargs)
                assert abs(expect - h["score"]) < 1e-5, (name, h, expect)
        for hyps in results:
            for h in hyps:
                if h["score"] is not None:
                    h["score"] = float(f"{h['score']:.7g}")
        assert any(heuristic_matters) == name.endswith("_heuristic"), (name, heuristic_matters)
        if name == "beam2_lp1.5_never":  # "never" finds the longer, better hypotheses the heuristic cuts off
            assert results != cases[[c["name"] for c in cases].index("beam2_lp1.5_heuristic")]["results"]
        cases.append({"name": name, "generate_kwargs": {"do_sample": False, **kwargs}, "start_tokens": starts,
                      "results": results, **({"heuristic_changes_result": heuristic_matters} if heuristic_matters else {})})
        print(name, [[(h["tokens"], h["score"]) for h in hyps] for hyps in results])

    OUT.mkdir(parents=True, exist_ok=True)
    header = {
        "description": "HF generate() on a bigram LM: logits(next | s_0..s_t) = token_table[s_t] + "
                       "position_table[t % period], s_0 = the start token at position 0. Per case, results[i] = the "
                       "hypotheses for start_tokens[i] (all of a case searched in one batch), best first; tokens exclude "
                       "the start token and end with eos_token_id when the hypothesis finished by EOS; score = "
                       "HF sequences_scores (null for greedy).",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__},
        "seed": SEED,
        "vocab_size": VOCAB,
        "pad_token_id": PAD,
        "eos_token_id": EOS,
        "period": PERIOD,
        "score_significant_digits": 7,
    }
    lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in header.items()]
    lines.append('"token_table": [\n' + ",\n".join(json.dumps(r) for r in token.tolist()) + "\n]")
    lines.append('"position_table": [\n' + ",\n".join(json.dumps(r) for r in position.tolist()) + "\n]")
    lines.append('"cases": [\n' + ",\n".join(json.dumps(c) for c in cases) + "\n]")
    path = OUT / "bigram_goldens.json"
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
