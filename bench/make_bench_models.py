#!/usr/bin/env python3
"""Random-weight benchmark models of real shapes, identical for Octet and its peers (dev only).

For each LLM shape it writes
  <out>/<shape>/hf/            a Hugging Face folder: config.json, model.safetensors (f16), tokenizer.json
  <out>/<shape>/octet-<q>.qbin  octet-convert of that folder (q8_0, q4_0: every matrix, embedding included)
  <out>/<shape>/llama-f16.gguf  the same weights as a llama.cpp GGUF (gguf package writer, Q/K permuted
                                the way llama.cpp's convert_hf_to_gguf.py permutes them)
  <out>/<shape>/llama-<Q>.gguf  llama_model_quantize of it (Q8_0, Q4_0; "pure": every matrix, the
                                embedding/output included, so both sides hold the same types)
and for the translation shape (--marian)
  <out>/opus_mt_en_zh/hf/       a MarianMTModel folder (random weights, sentencepiece + vocab.json)
  <out>/opus_mt_en_zh/octet-q8_0.qbin
  <out>/opus_mt_en_zh/ct2-int8/ ctranslate2's TransformersConverter, quantization int8
  <out>/sentences.en.txt        the source sentences both translation sides read

The tokenizer is tests/data/tokenizer/gpt2.tokenizer.json padded with unreachable "<extra_N>" entries to
the model's vocabulary size (llama.cpp wants exactly one token per embedding row). The benchmarks feed
token ids, so the tokenizer only has to load.

Usage (from the repository root, with the venv):
  .venv/bin/python bench/make_bench_models.py --out /tmp/octet-bench/models [--shapes smollm2_135m,tinyllama_1b] [--marian]
"""
import argparse
import ctypes
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "tests/data/tokenizer/gpt2.tokenizer.json"
SEED = 20240601

SHAPES = {
    # SmolLM2-135M: hidden 576, 30 layers, 9 heads (head_dim 64), 3 KV heads, FFN 1536, vocab 49152, tied.
    "smollm2_135m": dict(hidden=576, layers=30, heads=9, kv_heads=3, ffn=1536, vocab=49152, tied=True,
                         rope_theta=100000.0, eps=1e-5, max_pos=8192),
    # TinyLlama-1.1B: hidden 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632, vocab 32000, untied.
    "tinyllama_1b": dict(hidden=2048, layers=22, heads=32, kv_heads=4, ffn=5632, vocab=32000, tied=False,
                         rope_theta=10000.0, eps=1e-5, max_pos=2048),
}


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def padded_tokenizer(vocab_size):
    """gpt2.tokenizer.json with model.vocab padded to vocab_size entries; returns (json, tokens by id, merges)."""
    tok = json.loads(TOKENIZER.read_text())
    vocab = tok["model"]["vocab"]
    for added in tok.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    assert max(vocab.values()) + 1 == len(vocab) <= vocab_size
    for i in range(len(vocab), vocab_size):
        vocab[f"<extra_{i}>"] = i
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    by_id = [None] * vocab_size
    for piece, i in vocab.items():
        by_id[i] = piece
    return tok, by_id, merges


def llama_weights(s, rng):
    """HF-named f16 weights: N(0, 0.02) matrices, norms 1 (as a fresh HF init), for speed not quality."""
    h, hd = s["hidden"], s["hidden"] // s["heads"]

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    w = {"model.embed_tokens.weight": mat(s["vocab"], h), "model.norm.weight": np.ones(h, np.float16)}
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = np.ones(h, np.float16)
        w[p + "post_attention_layernorm.weight"] = np.ones(h, np.float16)
        w[p + "self_attn.q_proj.weight"] = mat(s["heads"] * hd, h)
        w[p + "self_attn.k_proj.weight"] = mat(s["kv_heads"] * hd, h)
        w[p + "self_attn.v_proj.weight"] = mat(s["kv_heads"] * hd, h)
        w[p + "self_attn.o_proj.weight"] = mat(h, s["heads"] * hd)
        w[p + "mlp.gate_proj.weight"] = mat(s["ffn"], h)
        w[p + "mlp.up_proj.weight"] = mat(s["ffn"], h)
        w[p + "mlp.down_proj.weight"] = mat(h, s["ffn"])
    if not s["tied"]:
        w["lm_head.weight"] = mat(s["vocab"], h)
    return w


def write_hf_llama(s, out, weights):
    from safetensors.numpy import save_file
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": s["hidden"], "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"], "intermediate_size": s["ffn"], "vocab_size": s["vocab"],
        "tie_word_embeddings": s["tied"], "rope_theta": s["rope_theta"], "rope_scaling": None,
        "rms_norm_eps": s["eps"], "max_position_embeddings": s["max_pos"], "head_dim": s["hidden"] // s["heads"],
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    tok, _, _ = padded_tokenizer(s["vocab"])
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "add_prefix_space": False, "clean_up_tokenization_spaces": False,
        "model_max_length": s["max_pos"]}, indent=2) + "\n")
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})


def permute_qk(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: HF's rotate-half layout -> llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf_f16(s, path, weights):
    import gguf
    _, tokens, merges = padded_tokenizer(s["vocab"])
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("octet-bench random " + path.parent.name)
    w.add_context_length(s["max_pos"])
    w.add_embedding_length(s["hidden"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_dimension_count(s["hidden"] // s["heads"])
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(s["eps"])
    w.add_vocab_size(s["vocab"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    types = [gguf.TokenType.CONTROL if i < 3 else gguf.TokenType.NORMAL for i in range(len(tokens))]
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for hf_name, t in weights.items():
        if hf_name == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif hf_name == "model.norm.weight":
            name = "output_norm.weight"
        elif hf_name == "lm_head.weight":
            name = "output.weight"
        else:
            _, _, i, rest = hf_name.split(".", 3)
            name = f"blk.{i}.{names[rest.rsplit('.', 1)[0]]}.weight"
            if rest.startswith("self_attn.q_proj"):
                t = permute_qk(t, s["heads"])
            elif rest.startswith("self_attn.k_proj"):
                t = permute_qk(t, s["kv_heads"])
        if t.ndim == 1:
            t = t.astype(np.float32)  # llama.cpp keeps norms in f32
        w.add_tensor(name, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_quantize(src, dst, qtype):
    import llama_cpp
    ftype = {"Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}[qtype]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    params.pure = True  # every matrix in qtype (default Q4_0 would make the tied embedding/output Q6_K)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {src} -> {dst}: {rc}")


def octet_convert(convert_bin, src, dst, quant):
    if not convert_bin.exists():
        sys.exit(f"{convert_bin} not found: build it (cmake --build build-bench --target octet-convert)")
    subprocess.run([str(convert_bin), str(src), "-o", str(dst), "--quant", quant], check=True,
                   stdout=subprocess.DEVNULL)


def make_llama(name, out, convert_bin, quants, force):
    s = SHAPES[name]
    d = out / name
    hf = d / "hf"
    if force or not (hf / "model.safetensors").exists():
        log(f"{name}: random weights")
        weights = llama_weights(s, np.random.default_rng(SEED))
        write_hf_llama(s, hf, weights)
        log(f"{name}: GGUF f16")
        write_gguf_f16(s, d / "llama-f16.gguf", weights)
        del weights
    for q in quants:
        qbin = d / f"octet-{q}.qbin"
        if force or not qbin.exists():
            log(f"{name}: octet-convert {q}")
            octet_convert(convert_bin, hf, qbin, q)
        gguf_q = d / f"llama-{q.upper()}.gguf"
        if force or not gguf_q.exists():
            log(f"{name}: llama_model_quantize {q.upper()}")
            llama_quantize(d / "llama-f16.gguf", gguf_q, q.upper())
    (d / "shape.json").write_text(json.dumps({"name": name, **s}, indent=2) + "\n")


# ---- translation ----------------------------------------------------------------------------------

WORDS = ("the a one this that file system user data network server model memory time year people way day "
         "man world life hand part child eye woman place work week case point government company number group "
         "problem fact open close read write send find keep give take make know think see come want look use "
         "tell ask work seem feel try leave call good new first last long great little own other old right big "
         "high different small large next early young important few public bad same able quickly slowly "
         "carefully today yesterday always never often because although while after before with without from "
         "into over under between during against river mountain city village market school hospital letter "
         "message window door table chair book paper report program language translation sentence").split()


def sentences(n, seed=7):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(6, 28)
        words = [rng.choice(WORDS) for _ in range(k)]
        out.append(" ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"]))
    return out


def make_marian(out, convert_bin, force):
    """opus-mt-en-zh shape: d_model 512, 6+6 layers, 8 heads, FFN 2048, vocab 65001, separate src/tgt spm."""
    import torch
    from transformers import MarianConfig, MarianMTModel
    sys.path.insert(0, str(ROOT / "tests/tools"))
    import make_marian as mm  # train_spm (spm_train, unigram), the Marian vocab.json layout

    d = out / "opus_mt_en_zh"
    hf = d / "hf"
    (out / "sentences.en.txt").write_text("\n".join(sentences(500)) + "\n")
    vocab_size = 65001
    if force or not (hf / "model.safetensors").exists():
        log("opus_mt_en_zh: tokenizers + random MarianMTModel")
        shutil.rmtree(hf, ignore_errors=True)
        hf.mkdir(parents=True)
        sp_src = mm.train_spm(hf, "source", "en")
        sp_tgt = mm.train_spm(hf, "target", "de")  # a small real spm; target ids are random anyway
        for p in ("source", "target"):
            (hf / f"{p}.txt").unlink()
            (hf / f"{p}.vocab").unlink(missing_ok=True)
            (hf / f"{p}.model").rename(hf / f"{p}.spm")
        vocab = mm.marian_vocab([(sp_src, "en"), (sp_tgt, "de")])
        vocab.pop("<pad>")  # re-added as the last id, after the padding
        for i in range(len(vocab), vocab_size - 1):
            vocab[f"<extra_{i}>"] = i
        vocab["<pad>"] = vocab_size - 1
        (hf / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1) + "\n")
        (hf / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "MarianTokenizer", "source_lang": "en", "target_lang": "zh",
            "model_max_length": 512, "separate_vocabs": False}, indent=2) + "\n")
        config = MarianConfig(vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=512,
                              encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                              decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                              activation_function="swish", max_position_embeddings=512,
                              pad_token_id=vocab_size - 1, eos_token_id=0, decoder_start_token_id=vocab_size - 1,
                              forced_eos_token_id=0, scale_embedding=True, share_encoder_decoder_embeddings=True,
                              tie_word_embeddings=True, num_beams=4, max_length=512, bad_words_ids=[[vocab_size - 1]])
        torch.manual_seed(SEED)
        model = MarianMTModel(config).eval()
        model.save_pretrained(hf)
        (hf / "generation_config.json").write_text(json.dumps({
            "bad_words_ids": [[vocab_size - 1]], "bos_token_id": 0, "decoder_start_token_id": vocab_size - 1,
            "eos_token_id": 0, "forced_eos_token_id": 0, "max_length": 512, "num_beams": 4,
            "pad_token_id": vocab_size - 1}, indent=2) + "\n")
    qbin = d / "octet-q8_0.qbin"
    if force or not qbin.exists():
        log("opus_mt_en_zh: octet-convert q8_0")
        octet_convert(convert_bin, hf, qbin, "q8_0")
    ct2 = d / "ct2-int8"
    if force or not (ct2 / "model.bin").exists():
        log("opus_mt_en_zh: ctranslate2 int8")
        import ctranslate2.converters
        ctranslate2.converters.TransformersConverter(str(hf)).convert(str(ct2), quantization="int8", force=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/octet-bench/models"))
    ap.add_argument("--convert", type=Path, default=ROOT / "build-bench/bin/octet-convert")
    ap.add_argument("--shapes", default="smollm2_135m", help="comma list of " + ", ".join(SHAPES) + " (or none)")
    ap.add_argument("--quants", default="q8_0,q4_0")
    ap.add_argument("--marian", action="store_true", help="also the opus-mt-en-zh shape translation models")
    ap.add_argument("--force", action="store_true", help="rebuild what exists")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for name in filter(None, a.shapes.split(",")):
        if name == "none":
            continue
        make_llama(name, a.out, a.convert, [q for q in a.quants.split(",") if q and q != "none"], a.force)
    if a.marian:
        make_marian(a.out, a.convert, a.force)
    log("done:", a.out)


if __name__ == "__main__":
    main()
