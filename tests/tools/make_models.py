"""Writes tiny random-weight Hugging Face models and their goldens into tests/data/models/<name>/.

Each folder is a real HF model folder (config.json, generation_config.json, safetensors, tokenizer
files, tokenizer_config.json) plus goldens.json with, for a few prompts, the input ids, the float32
logits at every position and the greedy continuation. Needs tests/data/tokenizer/ (make_tokenizers.py).

Usage: .venv/bin/python tests/tools/make_models.py
"""
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import sentencepiece
import tokenizers
import torch
import transformers
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaTokenizer,
                          MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

DATA = Path(__file__).resolve().parent.parent / "data"
TOKENIZERS = DATA / "tokenizer"
SEED = 1234
WEIGHT_STD = 0.15  # matrices and embeddings; large enough that the logits are far from zero
MAX_NEW_TOKENS = 16
LOGIT_DIGITS = 6  # significant digits kept in goldens.json

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

SPM_TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    "add_bos_token": True, "add_eos_token": False, "legacy": True, "clean_up_tokenization_spaces": False,
    "model_max_length": 256,
}

# Plain prompts (tokenized with the tokenizer's own BOS handling) and chat conversations (rendered
# with the chat template, then tokenized with add_special_tokens=False, as apply_chat_template does).
# The prompts are short because goldens.json holds the logits of every position (fixture size).
# BOS models start with "" (the BOS token alone); the others with "a" (one token).
PLAIN_PROMPTS = ["The", "The dog ran to the park, 42 times!"]
CHAT = [{"role": "user", "content": "Hi!"}]
CHAT_WITH_SYSTEM = [{"role": "system", "content": "Hi"}, {"role": "user", "content": "Yo"}]


@dataclass
class Spec:
    name: str
    model_class: type
    config: transformers.PretrainedConfig
    save_dtype: torch.dtype
    tokenizer_file: str  # in tests/data/tokenizer/; .model files become tokenizer.model
    tokenizer_config: dict
    generation_config: dict
    prompts: list  # str (plain) or list of messages (chat)
    max_shard_size: str = "10MB"
    classic_config: bool = True  # rewrite config.json with transformers-4 keys (rope_theta, rope_scaling, torch_dtype)
    spm_tokenizer_json: bool = False  # also ship the tokenizer.json HF's LlamaTokenizer converts tokenizer.model to
    notes: list = field(default_factory=list)


def small(cls, **kwargs):
    return cls(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=128, **kwargs)


SPECS = [
    Spec("llama_gqa_tied", LlamaForCausalLM,
         small(LlamaConfig, vocab_size=600, tie_word_embeddings=True, rope_theta=10000.0,
               max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2),
         torch.float32, "llama_spm.model", SPM_TOKENIZER_CONFIG,
         {"bos_token_id": 1, "eos_token_id": 2},
         [""] + PLAIN_PROMPTS + ["First part.</s><s>Second part"],
         notes=["Llama 2 style, no chat template. The last prompt has </s><s> written in the text: the HF "
                "tokenizer parses them as special tokens (legacy=true: the text after a special token "
                "gets SentencePiece's dummy-prefix space, as encoding each segment on its own does)."]),
    Spec("llama_untied_bf16", LlamaForCausalLM,
         small(LlamaConfig, vocab_size=800, tie_word_embeddings=False, rope_theta=10000.0,
               max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=795, eos_token_id=796,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
         torch.bfloat16, "llama3.tokenizer.json",
         {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
          "clean_up_tokenization_spaces": False, "model_max_length": 256, "chat_template": LLAMA3_TEMPLATE},
         {"bos_token_id": 795, "eos_token_id": [796, 797], "do_sample": True, "temperature": 0.6, "top_p": 0.9},
         [""] + PLAIN_PROMPTS + [CHAT],
         notes=["Llama 3.1 style. generation_config.json: eos_token_id [796 <|end_of_text|>, 797 <|eot_id|>] "
                "and sampling defaults; the goldens override them with do_sample=False. The rope_scaling "
                "(llama3, original_max_position_embeddings 64) changes the low frequencies."]),
    Spec("qwen2_bias", Qwen2ForCausalLM,
         small(Qwen2Config, vocab_size=800, tie_word_embeddings=True, rope_theta=1000000.0,
               max_position_embeddings=256, rms_norm_eps=1e-6, use_sliding_window=False,
               bos_token_id=795, eos_token_id=797),
         torch.bfloat16, "qwen2.tokenizer.json",
         {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
          "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace",
          "clean_up_tokenization_spaces": False, "model_max_length": 256, "chat_template": QWEN2_TEMPLATE},
         {"bos_token_id": 795, "pad_token_id": 795, "eos_token_id": [797, 795], "do_sample": True,
          "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},
         ["a"] + PLAIN_PROMPTS + [CHAT_WITH_SYSTEM], classic_config=False,
         notes=["Qwen2 style: q/k/v projections have biases, no BOS. config.json is as transformers 5 "
                "writes it (rope_parameters, dtype) instead of the transformers-4 keys the others use."]),
    Spec("mistral", MistralForCausalLM,
         small(MistralConfig, vocab_size=600, tie_word_embeddings=False, rope_theta=1000000.0,
               max_position_embeddings=256, rms_norm_eps=1e-5, sliding_window=None, head_dim=16,
               bos_token_id=1, eos_token_id=2),
         torch.float32, "llama_spm.model", {**SPM_TOKENIZER_CONFIG, "chat_template": MISTRAL_TEMPLATE},
         {"bos_token_id": 1, "eos_token_id": 2},
         [""] + PLAIN_PROMPTS + [CHAT], max_shard_size="400KB", spm_tokenizer_json=True,
         notes=["Mistral v0.2 style (no sliding window), weights sharded into 2 files with "
                "model.safetensors.index.json.",
                "Ships tokenizer.model AND tokenizer.json, as Mistral's repositories do. tokenizer.json is "
                "HF's conversion of tokenizer.model (Metaspace + BPE with byte_fallback); transformers 5 "
                "needs it because for model_type mistral it ignores tokenizer_class and would otherwise "
                "convert tokenizer.model wrongly (no dummy-prefix space). The conversion is not exact for "
                "runs of spaces; tokenizer.model is the reference."]),
    Spec("smollm_like", LlamaForCausalLM,
         small(LlamaConfig, vocab_size=800, tie_word_embeddings=True, rope_theta=10000.0,
               max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2),
         torch.float16, "gpt2.tokenizer.json",
         {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
          "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>", "add_prefix_space": False,
          "clean_up_tokenization_spaces": False, "model_max_length": 256, "chat_template": CHATML_TEMPLATE},
         {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2},
         ["a"] + PLAIN_PROMPTS + [CHAT],
         notes=["SmolLM2 style: tied, no BOS added, chatml."]),
]


def randomize(model, generator):
    """Fixed-seed weights: N(0, WEIGHT_STD) matrices, 1 + N(0, 0.1) norms, N(0, 0.1) biases."""
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name:
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.1 * noise)
            else:
                param.copy_(WEIGHT_STD * noise)


def to_classic_config(path):
    """transformers 5 writes rope_parameters/dtype; most published checkpoints use the 4.x keys."""
    config = json.loads(path.read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope if rope["rope_type"] != "default" else None
    config["torch_dtype"] = config.pop("dtype")
    path.write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")


def write_folder(spec, out):
    shutil.rmtree(out, ignore_errors=True)
    model = spec.model_class(spec.config)
    randomize(model, torch.Generator().manual_seed(SEED))
    model.to(spec.save_dtype).save_pretrained(out, max_shard_size=spec.max_shard_size)
    if spec.classic_config:
        to_classic_config(out / "config.json")
    (out / "generation_config.json").write_text(json.dumps(spec.generation_config, indent=2) + "\n")
    target = "tokenizer.model" if spec.tokenizer_file.endswith(".model") else "tokenizer.json"
    shutil.copyfile(TOKENIZERS / spec.tokenizer_file, out / target)
    (out / "tokenizer_config.json").write_text(json.dumps(spec.tokenizer_config, indent=2) + "\n")
    if spec.spm_tokenizer_json:
        LlamaTokenizer.from_pretrained(out).backend_tokenizer.save(str(out / "tokenizer.json"))


def reference_ids(spec, text, add_special_tokens):
    """The ids straight from the tokenizer library, to check the HF tokenizer class against. For
    SentencePiece: BOS, then the text split at "<s>"/"</s>", each segment encoded on its own."""
    if not spec.tokenizer_file.endswith(".model"):
        tok = tokenizers.Tokenizer.from_file(str(TOKENIZERS / spec.tokenizer_file))
        return tok.encode(text, add_special_tokens=add_special_tokens).ids
    sp = sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZERS / spec.tokenizer_file))
    ids = [sp.bos_id()] if add_special_tokens else []
    for i, segment in enumerate(re.split(r"(</?s>)", text)):
        if i % 2:
            ids.append(sp.piece_to_id(segment))
        elif segment:
            ids += sp.encode(segment)
    return ids


def rounded(tensor):
    return [[float(f"{x:.{LOGIT_DIGITS}g}") for x in row] for row in tensor.tolist()]


def goldens(spec, out):
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    assert model.config.rope_parameters == spec.config.rope_parameters, "config.json rewrite changed RoPE"
    eos = spec.generation_config["eos_token_id"]
    # HF's ByteFallback decoder turns a whole run of byte tokens into U+FFFD when the run is not valid
    # UTF-8; SentencePiece replaces only the invalid bytes. Record both for SentencePiece models.
    sp = (sentencepiece.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
          if spec.tokenizer_file.endswith(".model") else None)
    cases = []
    for prompt in spec.prompts:
        chat = not isinstance(prompt, str)
        text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) if chat else prompt
        ids = tok(text, add_special_tokens=not chat).input_ids
        assert ids == reference_ids(spec, text, not chat), (spec.name, text, ids)
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids).logits[0].float()
            generated = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                       max_new_tokens=MAX_NEW_TOKENS, pad_token_id=eos if isinstance(eos, int) else eos[0])
        new_ids = generated[0, len(ids):].tolist()
        cases.append({
            "prompt": text,
            "messages": prompt if chat else None,
            "add_special_tokens": not chat,
            "input_ids": ids,
            "generated_ids": new_ids,
            "generated_text": tok.decode(new_ids, skip_special_tokens=False),
            "generated_text_skip_special": tok.decode(new_ids, skip_special_tokens=True),
            **({"generated_text_sentencepiece": sp.decode(new_ids)} if sp else {}),
            "logits": rounded(logits),
        })
    return {
        "model": spec.name,
        "notes": spec.notes,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
                     "sentencepiece": sentencepiece.__version__},
        "seed": SEED,
        "logits_significant_digits": LOGIT_DIGITS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "eos_token_id": eos,
        "cases": cases,
    }


def write_goldens(path, golden):
    """One key per line, one case per line except for the logits, which get one row per line."""
    lines = []
    for key, value in golden.items():
        if key != "cases":
            lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    case_texts = []
    for case in golden["cases"]:
        head = ", ".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in case.items() if k != "logits")
        rows = ",\n  ".join(json.dumps(row, separators=(",", ":")) for row in case["logits"])
        case_texts.append(f" {{{head},\n  \"logits\": [\n  {rows}]}}")
    lines.append('"cases": [\n' + ",\n".join(case_texts) + "\n]")
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def main():
    for spec in SPECS:
        out = DATA / "models" / spec.name
        write_folder(spec, out)
        write_goldens(out / "goldens.json", goldens(spec, out))
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{spec.name}: {sorted(f.name for f in out.iterdir())} {size} bytes")


if __name__ == "__main__":
    main()
