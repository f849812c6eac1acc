"""Independent numpy reference for the llama2.c stories260K checkpoint, and its goldens.

The forward pass follows llama2.c's run.c, in float32: RMSNorm (eps 1e-5), RoPE (theta 10000) on
interleaved pairs (2i, 2i+1) of each head, grouped-query attention, SwiGLU FFN, classifier tied to
the token embedding. The checkpoint layout is described in ../shared/models/stories260K/README.md.

The script cross-checks the numpy logits against transformers' LlamaForCausalLM (wq/wk rows permuted
from interleaved to rotate-half pairs) and writes tests/data/stories260K/goldens.json.

Usage: .venv/bin/python tests/tools/llama2c_reference.py [--model-dir ../shared/models/stories260K]
"""
import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parent.parent.parent
OUT = REPO / "tests" / "data" / "stories260K" / "goldens.json"
PROMPTS = ["Once upon a time", "The little dog", "Lily wanted to"]
BOS, EOS = 1, 2
MAX_NEW_TOKENS = 64
LOGIT_STEPS = 21  # the prompt's last position + the first 20 generated steps
NORM_EPS = 1e-5
ROPE_THETA = 10000.0
CROSSCHECK_TOLERANCE = 1e-4


@dataclass
class Config:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int

    @property
    def head_size(self):
        return self.dim // self.n_heads


def load_checkpoint(path):
    """Reads a llama2.c legacy (version 0) checkpoint with a shared classifier."""
    data = np.fromfile(path, dtype="<f4")
    config = Config(*np.frombuffer(data[:7].tobytes(), dtype="<i4").tolist())
    assert config.vocab_size > 0, "a negative vocab_size means an unshared classifier, not handled"
    c, kv_dim = config, config.n_kv_heads * config.head_size
    shapes = [
        ("token_embedding", (c.vocab_size, c.dim)),
        ("rms_att", (c.n_layers, c.dim)),
        ("wq", (c.n_layers, c.dim, c.dim)),
        ("wk", (c.n_layers, kv_dim, c.dim)),
        ("wv", (c.n_layers, kv_dim, c.dim)),
        ("wo", (c.n_layers, c.dim, c.dim)),
        ("rms_ffn", (c.n_layers, c.dim)),
        ("w1", (c.n_layers, c.hidden_dim, c.dim)),
        ("w2", (c.n_layers, c.dim, c.hidden_dim)),
        ("w3", (c.n_layers, c.hidden_dim, c.dim)),
        ("rms_final", (c.dim,)),
        ("freq_cis_real", (c.seq_len, c.head_size // 2)),  # legacy, unused
        ("freq_cis_imag", (c.seq_len, c.head_size // 2)),  # legacy, unused
    ]
    weights, offset = {}, 7
    for name, shape in shapes:
        size = int(np.prod(shape))
        weights[name] = data[offset:offset + size].reshape(shape)
        offset += size
    assert offset == data.size, (offset, data.size)
    return config, weights


def rmsnorm(x, weight):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(NORM_EPS)) * weight


def rope(x, n_heads, head_size):
    """Rotates interleaved pairs (2i, 2i+1) of each head of x [T, n_heads * head_size]."""
    t = x.shape[0]
    freq = 1.0 / np.power(np.float32(ROPE_THETA), np.arange(0, head_size, 2, dtype=np.float32) / head_size)
    angle = np.arange(t, dtype=np.float32)[:, None] * freq[None, :]  # [T, head_size / 2]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    pairs = x.reshape(t, n_heads, head_size // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return np.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1).reshape(t, -1)


def forward(config, w, tokens):
    """Logits [len(tokens), vocab_size] for every position, causal attention."""
    c, t = config, len(tokens)
    hs, group = c.head_size, c.n_heads // c.n_kv_heads
    mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), k=1)
    x = w["token_embedding"][tokens]
    for layer in range(c.n_layers):
        h = rmsnorm(x, w["rms_att"][layer])
        q = rope(h @ w["wq"][layer].T, c.n_heads, hs).reshape(t, c.n_heads, hs)
        k = rope(h @ w["wk"][layer].T, c.n_kv_heads, hs).reshape(t, c.n_kv_heads, hs)
        v = (h @ w["wv"][layer].T).reshape(t, c.n_kv_heads, hs)
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # query head h uses kv head h // group
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(np.float32(hs)) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", probs, v).reshape(t, c.dim)
        x = x + att @ w["wo"][layer].T
        h = rmsnorm(x, w["rms_ffn"][layer])
        gate = h @ w["w1"][layer].T
        x = x + ((gate / (1.0 + np.exp(-gate))) * (h @ w["w3"][layer].T)) @ w["w2"][layer].T
    return rmsnorm(x, w["rms_final"]) @ w["token_embedding"].T


def greedy(config, w, prompt_ids):
    """Argmax decoding of up to MAX_NEW_TOKENS tokens, stopping before a BOS or EOS would be emitted.
    Returns the generated ids, the stop token (or None) and the logits that chose each token."""
    ids, step_logits = list(prompt_ids), []
    for _ in range(MAX_NEW_TOKENS):
        logits = forward(config, w, ids)[-1]
        step_logits.append(logits)
        next_id = int(np.argmax(logits))
        if next_id in (BOS, EOS):
            return ids[len(prompt_ids):], next_id, step_logits
        ids.append(next_id)
    return ids[len(prompt_ids):], None, step_logits


def to_transformers(config, w):
    """The same weights as a LlamaForCausalLM; wq/wk rows go from interleaved to rotate-half order."""
    c = config
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
        max_position_embeddings=c.seq_len, rms_norm_eps=NORM_EPS, rope_theta=ROPE_THETA,
        tie_word_embeddings=True, bos_token_id=BOS, eos_token_id=EOS))

    def permute(m, n_heads):  # as transformers' convert_llama_weights_to_hf.py
        rows, cols = m.shape
        return m.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)

    state = {"model.embed_tokens.weight": w["token_embedding"], "model.norm.weight": w["rms_final"],
             "lm_head.weight": w["token_embedding"]}
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        state |= {
            p + "input_layernorm.weight": w["rms_att"][i],
            p + "self_attn.q_proj.weight": permute(w["wq"][i], c.n_heads),
            p + "self_attn.k_proj.weight": permute(w["wk"][i], c.n_kv_heads),
            p + "self_attn.v_proj.weight": w["wv"][i],
            p + "self_attn.o_proj.weight": w["wo"][i],
            p + "post_attention_layernorm.weight": w["rms_ffn"][i],
            p + "mlp.gate_proj.weight": w["w1"][i],
            p + "mlp.down_proj.weight": w["w2"][i],
            p + "mlp.up_proj.weight": w["w3"][i],
        }
    hf.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=True)
    return hf.eval()


def crosscheck(config, w, sequences):
    """Max |numpy - transformers| over all positions of each full sequence (prompt + continuation)."""
    hf = to_transformers(config, w)
    max_diff, max_logit = 0.0, 0.0
    for ids in sequences:
        reference = forward(config, w, ids)
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0].numpy()
        max_diff = max(max_diff, float(np.abs(logits - reference).max()))
        max_logit = max(max_logit, float(np.abs(reference).max()))
        assert (logits.argmax(-1) == reference.argmax(-1)).all()
    assert max_diff < CROSSCHECK_TOLERANCE, max_diff
    return {"max_abs_diff": max_diff, "max_abs_logit": max_logit, "tolerance": CROSSCHECK_TOLERANCE,
            "positions": sum(len(ids) for ids in sequences), "argmax_equal_at_every_position": True}


def rounded(vector):
    return [float(f"{x:.7g}") for x in vector.tolist()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=REPO.parent / "shared" / "models" / "stories260K")
    args = parser.parse_args()
    config, w = load_checkpoint(args.model_dir / "stories260K.bin")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(args.model_dir / "tok512.model"))
    cases = []
    for prompt in PROMPTS:
        prompt_ids = [BOS] + sp.encode(prompt)
        generated, stop, step_logits = greedy(config, w, prompt_ids)
        cases.append({
            "prompt": prompt,
            "input_ids": prompt_ids,
            "generated_ids": generated,
            "stop_token": stop,
            "generated_text": sp.decode(generated),
            "full_text": sp.decode(prompt_ids + generated),
            "logits": [rounded(x) for x in step_logits[:LOGIT_STEPS]],
        })
        print(f"{prompt!r} -> {cases[-1]['full_text']!r} (stop {stop})")
    check = crosscheck(config, w, [c["input_ids"] + c["generated_ids"] for c in cases])
    print(f"transformers cross-check: {check}")
    golden = {
        "model": "stories260K.bin + tok512.model (llama2.c, read from ../shared/models/stories260K)",
        "config": vars(config),
        "versions": {"numpy": np.__version__, "sentencepiece": sentencepiece.__version__,
                     "torch": torch.__version__, "transformers": transformers.__version__},
        "max_new_tokens": MAX_NEW_TOKENS,
        "stop_tokens": [BOS, EOS],
        "logits_significant_digits": 7,
        "transformers_crosscheck": check,
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in golden.items() if k != "cases"]
    case_texts = []
    for case in cases:
        head = ", ".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in case.items() if k != "logits")
        rows = ",\n  ".join(json.dumps(row, separators=(",", ":")) for row in case["logits"])
        case_texts.append(f" {{{head},\n  \"logits\": [\n  {rows}]}}")
    lines.append('"cases": [\n' + ",\n".join(case_texts) + "\n]")
    OUT.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
