"""Writes tiny random-weight MarianMT folders and their goldens into tests/data/marian/<name>/.

Each folder looks like a Helsinki-NLP/opus-mt-* download: config.json, generation_config.json,
model.safetensors AND pytorch_model.bin (the same tensors), source.spm, target.spm, vocab.json (plus
target_vocab.json with separate vocabularies), tokenizer_config.json, plus goldens.json (see
tests/tools/README.md, section "Marian").

  marian_shared    en -> de, one vocab.json (union of both SentencePiece models' pieces), tied
                   embeddings (encoder = decoder = lm_head), swish, config.json in the transformers-4
                   layout of the published opus-mt configs.
  marian_separate  en -> ru, separate vocabularies (vocab.json / target_vocab.json, same size as
                   Marian requires), share_encoder_decoder_embeddings false, untied lm_head, relu,
                   config.json exactly as transformers 5 writes it.

Both: d_model 32, 2 + 2 layers, 4 heads, ffn 64, scale_embedding, static sinusoidal positions,
max_position_embeddings 64, eos 0, pad = decoder start = vocab size - 1, final_logits_bias random.
SentencePiece: unigram (as opus-mt), trained with spm_train on lines of tests/tools/tokenizer_train.txt.

Usage: .venv/bin/python tests/tools/make_marian.py      (~30 s, CPU)
"""
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import safetensors
import safetensors.torch
import sentencepiece
import tokenizers
import torch
import transformers
from transformers import AutoTokenizer, MarianConfig, MarianMTModel, MarianTokenizer

TOOLS = Path(__file__).resolve().parent
TRAIN_TEXT = TOOLS / "tokenizer_train.txt"
OUT = TOOLS.parent / "data" / "marian"
SEED = 1234
SPM_VOCAB = 256  # pieces per SentencePiece model, including <unk> <s> </s>
DIGITS = 6  # significant digits of floats in goldens.json
MAX_NEW_TOKENS = 20
BEAM = {"num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.6}

# ------------------------------------------------------------------------------------------------
# Texts. Sources: English, 1 to ~25 source tokens, plus "" (encodes to </s> alone) and a few edge
# cases (characters the source SentencePiece model does not know -> <unk>, emoji, digits, runs of
# spaces and a tab, which nmt_nfkc normalization turns into one space).

SOURCES = [
    "",
    "Hello",
    "Yes.",
    "Thank you!",
    "The file is empty.",
    "Copy the file to the directory.",
    "Do not remove the license notice.",
    "This program is free software.",
    "You may not use this file except in compliance with the License.",
    "Print the lines that match the pattern, then exit.",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, there was a little dog named Max.",
    "It costs 42 dollars, or 3.50 per unit.",
    "WARNING: no input files",
    "I like 🍕 a lot.",
    "Tea or 你好 tea?",
    "Two  spaces and\ta tab.",
    "What is the capital of France?",
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software.",
    "the the the the the",
    "Error: cannot open '/tmp/x' (No such file or directory)",
    "Redistribution and use in source and binary forms, with or without modification, are permitted.",
    "A",
]
ENCODER_CASES = [1, 6, 10]          # indexes into SOURCES: encoder last_hidden_state recorded


@dataclass
class Spec:
    name: str
    source_lang: str
    target_lang: str
    separate_vocabs: bool
    activation: str
    tie_word_embeddings: bool
    classic_config: bool              # rewrite config.json in the transformers-4 layout of opus-mt
    targets: list                     # target-language strings: target tokenization goldens
    teacher_forcing: list             # (source, target) pairs: decoder logits with teacher forcing
    scales: dict                      # random weight scales, see randomize()
    notes: list = field(default_factory=list)


SPECS = [
    Spec("marian_shared", "en", "de", separate_vocabs=False, activation="swish", tie_word_embeddings=True,
         classic_config=True, scales={"matrix": 0.6, "qk": 0.3, "cross": 0.1, "embed": 0.6, "eos_bias": 6.0},
         targets=["Die Datei ist leer.", "Hallo Welt!", "Größe: 42 Bytes", "", "nicht übereinstimmende Zeilen"],
         teacher_forcing=[("The file is empty.", "Die Datei ist leer."),
                          ("Hello", "Hallo"),
                          ("Do not remove the license notice.", "Entfernen Sie nicht den Lizenzhinweis.")],
         notes=["opus-mt-en-de style: one vocab.json for both sides (the union of the pieces of source.spm, "
                "English, and target.spm, German); model.shared = encoder/decoder embed_tokens = lm_head."]),
    Spec("marian_separate", "en", "ru", separate_vocabs=True, activation="relu", tie_word_embeddings=False,
         classic_config=False, scales={"matrix": 1.0, "qk": 1.0, "cross": 0.1, "embed": 0.6, "eos_bias": 5.5},
         targets=["Файл пуст.", "Привет, мир!", "неверный аргумент", "", "ошибка 42: нет такого файла"],
         teacher_forcing=[("The file is empty.", "Файл пуст."),
                          ("Hello", "Привет"),
                          ("Copy the file to the directory.", "Скопируйте файл в каталог.")],
         notes=["Separate vocabularies: vocab.json (source, English) and target_vocab.json (target, Russian), "
                "both of the same size (Marian requires it), pad = last id in both; "
                "share_encoder_decoder_embeddings false (encoder.embed_tokens, decoder.embed_tokens), "
                "tie_word_embeddings false (own lm_head.weight). config.json as transformers 5 writes it."]),
]


def lines_of(lang):
    """Training lines per language, picked by script/markers from the shared training text."""
    out = []
    for line in TRAIN_TEXT.read_text().split("\n"):
        letters = [c for c in line if c.isalpha()]
        if len(letters) < 3:
            continue
        cyrillic = sum("\u0400" <= c <= "\u04ff" for c in letters)
        ascii_letters = sum(c.isascii() for c in letters)
        if lang == "en":
            keep = ascii_letters == len(letters) and not re.search(r"\b(der|die|und|nicht|le|la|les|el|los)\b", line)
        elif lang == "ru":
            keep = cyrillic >= 0.5 * len(letters)
        elif lang == "de":
            keep = (ascii_letters >= 0.9 * len(letters)
                    and re.search(r"\b(der|die|das|und|nicht|ist|eine?|Datei|werden)\b", line)
                    and not re.search(r"\b(le|la|les|el|los|est|une|des)\b|[éèàçñ¿¡]", line))
        out.append(line) if keep else None
    return out


def train_spm(directory, prefix, lang):
    """Unigram SentencePiece (as opus-mt), default nmt_nfkc normalization, one thread (deterministic)."""
    (directory / f"{prefix}.txt").write_text("\n".join(lines_of(lang)) + "\n")
    subprocess.run([
        "spm_train", f"--input={prefix}.txt", f"--model_prefix={prefix}", "--model_type=unigram",
        f"--vocab_size={SPM_VOCAB}", "--character_coverage=1.0", "--num_threads=1",
        "--input_sentence_size=0", "--shuffle_input_sentence=false", "--minloglevel=2",
    ], check=True, cwd=directory)
    return sentencepiece.SentencePieceProcessor(model_file=str(directory / f"{prefix}.model"))


def marian_vocab(models_and_langs):
    """A Marian vocab.yml as the converter turns it into vocab.json: </s> 0, <unk> 1, then the pieces by
    decreasing frequency on the training text (ties: by piece), finally <pad>. So vocabulary ids are NOT
    SentencePiece ids: text -> pieces (SentencePiece) -> ids (this map); unknown pieces -> <unk>."""
    counts = collections.Counter()
    for sp, lang in models_and_langs:
        for line in lines_of(lang):
            counts.update(sp.encode(line, out_type=str))
        for i in range(sp.get_piece_size()):
            if not (sp.is_control(i) or sp.is_unknown(i)):
                counts[sp.id_to_piece(i)] += 0
    vocab = {"</s>": 0, "<unk>": 1}
    for piece, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    return vocab


def write_json(path, obj, indent=2):
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def to_classic_config(path, pad):
    """The transformers-4 layout of the published opus-mt config.json files (with their legacy keys and the
    generation settings, which transformers 5 moves to generation_config.json)."""
    config = json.loads(path.read_text())
    config.pop("dtype")
    config.update({"torch_dtype": "float32", "transformers_version": "4.22.0.dev0",
                   "add_bias_logits": False, "add_final_layer_norm": False, "classif_dropout": 0.0,
                   "classifier_dropout": 0.0, "gradient_checkpointing": False, "normalize_before": False,
                   "normalize_embedding": False, "static_position_embeddings": True, "num_hidden_layers": 2,
                   "bad_words_ids": [[pad]], "max_length": 512, "num_beams": 4, "forced_eos_token_id": 0,
                   "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"},
                   "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}})
    write_json(path, dict(sorted(config.items())))


def randomize(model, pad, scales, generator):
    """Fixed-seed weights. Random transformers tend to repeat one token forever; these scales (found by a
    small search) give outputs that depend on the input AND change along the sequence: attention
    q/k projections N(0, qk) (sharp attention), cross-attention v/out N(0, cross) (small, else the
    decoder state barely changes from step to step), other matrices N(0, matrix), embeddings and lm_head
    N(0, embed) with the pad row zero (as Marian's converter adds it), LayerNorm weights 1 + N(0, 0.1),
    biases N(0, 0.1), final_logits_bias N(0, 0.5) with 0 for pad and eos_bias for EOS (so that about a
    third of the greedy outputs end with EOS before max_new_tokens)."""
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator)
            if "layer_norm" in name and name.endswith(".weight"):
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.1 * noise)
            elif "embed_tokens" in name or name.endswith("shared.weight") or name == "lm_head.weight":
                noise[pad] = 0.0
                param.copy_(scales["embed"] * noise)
            elif "embed_positions" in name:
                continue  # static sinusoids
            elif "q_proj" in name or "k_proj" in name:
                param.copy_(scales["qk"] * noise)
            elif "encoder_attn." in name:
                param.copy_(scales["cross"] * noise)
            else:
                param.copy_(scales["matrix"] * noise)
        bias = 0.5 * torch.randn(model.final_logits_bias.shape, generator=generator)
        bias[0, pad] = 0.0
        bias[0, model.config.eos_token_id] = scales["eos_bias"]
        model.final_logits_bias.copy_(bias)


def write_folder(spec, out):
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sp_src = train_spm(tmp, "source", spec.source_lang)
        sp_tgt = train_spm(tmp, "target", spec.target_lang)
        shutil.copyfile(tmp / "source.model", out / "source.spm")
        shutil.copyfile(tmp / "target.model", out / "target.spm")
    if spec.separate_vocabs:
        vocab, target_vocab = marian_vocab([(sp_src, spec.source_lang)]), marian_vocab([(sp_tgt, spec.target_lang)])
        assert len(vocab) == len(target_vocab), "Marian needs equal vocabulary sizes"
        write_json(out / "vocab.json", vocab)
        write_json(out / "target_vocab.json", target_vocab)
    else:
        vocab = marian_vocab([(sp_src, spec.source_lang), (sp_tgt, spec.target_lang)])
        write_json(out / "vocab.json", vocab)
    size = len(vocab)
    pad = size - 1
    tokenizer_config = {"source_lang": spec.source_lang, "target_lang": spec.target_lang,
                        "separate_vocabs": spec.separate_vocabs}
    if spec.separate_vocabs:  # the fuller form newer conversions write
        tokenizer_config.update({"tokenizer_class": "MarianTokenizer", "model_max_length": 512,
                                 "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                                 "sp_model_kwargs": {}, "target_vocab_file": "target_vocab.json"})
    write_json(out / "tokenizer_config.json", tokenizer_config)

    config = MarianConfig(
        vocab_size=size, decoder_vocab_size=size, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        activation_function=spec.activation, scale_embedding=True, max_position_embeddings=64,
        pad_token_id=pad, eos_token_id=0, bos_token_id=0, decoder_start_token_id=pad, forced_eos_token_id=0,
        share_encoder_decoder_embeddings=not spec.separate_vocabs, tie_word_embeddings=spec.tie_word_embeddings,
        dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, architectures=["MarianMTModel"])
    model = MarianMTModel(config).eval()
    randomize(model, pad, spec.scales, torch.Generator().manual_seed(SEED))
    model.save_pretrained(out)
    if spec.classic_config:
        to_classic_config(out / "config.json", pad)
    # As opus-mt's generation_config.json (bad_words_ids [[pad]], forced EOS at max_length, 4 beams).
    write_json(out / "generation_config.json", {
        "bad_words_ids": [[pad]], "bos_token_id": 0, "decoder_start_token_id": pad, "eos_token_id": 0,
        "forced_eos_token_id": 0, "max_length": 512, "num_beams": 4, "pad_token_id": pad})
    # pytorch_model.bin: the very same tensors, torch.save zip format (transformers 5 writes only safetensors).
    state = safetensors.torch.load_file(out / "model.safetensors")
    torch.save(state, out / "pytorch_model.bin")
    return sp_src, sp_tgt


def check_bin_equals_safetensors(out):
    st = safetensors.torch.load_file(out / "model.safetensors")
    pt = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert sorted(st) == sorted(pt), (sorted(st), sorted(pt))
    for key in st:
        assert st[key].dtype == pt[key].dtype and st[key].shape == pt[key].shape and torch.equal(st[key], pt[key]), key
    # and a model loaded from the .bin alone is the same model
    with tempfile.TemporaryDirectory() as tmp:
        for f in out.iterdir():
            if f.name != "model.safetensors":
                shutil.copyfile(f, Path(tmp) / f.name)
        from_bin = MarianMTModel.from_pretrained(tmp, dtype=torch.float32).state_dict()
    from_st = MarianMTModel.from_pretrained(out, dtype=torch.float32).state_dict()
    assert sorted(from_bin) == sorted(from_st) and all(torch.equal(from_bin[k], from_st[k]) for k in from_st)
    return {key: list(st[key].shape) for key in sorted(st)}


# ------------------------------------------------------------------------------------------------
# Goldens

def rounded(values):
    if isinstance(values, list):
        return [rounded(v) for v in values]
    return float(f"{values:.{DIGITS}g}")


def strip(seq, eos, start):
    """Generated ids without the decoder start token, cut after the first EOS (the rest is padding)."""
    assert seq[0] == start
    seq = seq[1:]
    return seq[:seq.index(eos) + 1] if eos in seq else seq


def generate(model, batch, kwargs):
    with torch.no_grad():
        return model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, return_dict_in_generate=True,
                              output_scores=True, **kwargs)


def texts(tok, ids):
    """HF's decode, checked against the plain rule README.md documents: the ids' pieces (target vocabulary),
    special ones (</s>, <unk>, <pad>) dropped, concatenated, U+2581 -> space, outer whitespace stripped.
    (HF decodes them with the source OR the target SentencePiece model, see README; pieces a model does not
    know pass through verbatim, so both give this.)"""
    text = tok.decode(ids, skip_special_tokens=True)
    pieces = [p for p in tok.convert_ids_to_tokens(ids) if p not in ("</s>", "<unk>", "<pad>")]
    assert text == "".join(pieces).replace("\u2581", " ").strip(), (ids, text, pieces)
    return {"text": text}


def search_results(tok, model, sources, kwargs, n):
    """Per source: n hypotheses {"ids", "text", "score"} (score None for greedy)."""
    batch = tok(sources, return_tensors="pt", padding=True)
    out = generate(model, batch, kwargs)
    start, eos = model.config.decoder_start_token_id, model.config.eos_token_id
    results = []
    for i in range(len(sources)):
        hyps = []
        for j in range(i * n, (i + 1) * n):
            ids = strip(out.sequences[j].tolist(), eos, start)
            score = out.sequences_scores[j].item() if "sequences_scores" in out and out.sequences_scores is not None else None
            hyps.append({"ids": ids, **texts(tok, ids), "score": score})
        results.append(hyps)
    return results


def recompute_score(model, input_ids, ids):
    """The documented beam score: sum over the generated ids (EOS included) of log_softmax(logits)[id],
    where a forced EOS (the max_new_tokens-th token) counts 0, / len(ids) ** length_penalty. (bad_words_ids
    [[pad]] sets the pad log-prob to -inf without renormalising, so it changes no other value.)"""
    start = model.config.decoder_start_token_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids]), decoder_input_ids=torch.tensor([[start] + ids[:-1]])).logits[0]
    log_probs = torch.log_softmax(logits.double(), -1)
    total = sum(0.0 if t == MAX_NEW_TOKENS - 1 else log_probs[t, tok].item() for t, tok in enumerate(ids))
    return total / len(ids) ** BEAM["length_penalty"]


def same(a, b, tol=1e-4):
    return all(x["ids"] == y["ids"] and (x["score"] is None or abs(x["score"] - y["score"]) < tol)
               for x, y in zip(a, b))


def goldens(spec, out, sp_tgt):
    """sp_tgt: the target SentencePiece model (target tokenization check)."""
    tok = AutoTokenizer.from_pretrained(out)
    assert isinstance(tok, MarianTokenizer) and tok.separate_vocabs == spec.separate_vocabs
    model = MarianMTModel.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    cfg = model.config
    assert model.generation_config.forced_eos_token_id == 0 and model.generation_config.bad_words_ids == [[cfg.pad_token_id]]
    sp_src = sentencepiece.SentencePieceProcessor(model_file=str(out / "source.spm"))
    vocab = json.loads((out / "vocab.json").read_text())
    target_vocab = json.loads((out / ("target_vocab.json" if spec.separate_vocabs else "vocab.json")).read_text())

    # Source tokenization, checked against SentencePiece pieces -> vocab.json (+ </s>).
    cases = []
    for text in SOURCES:
        ids = tok(text).input_ids
        pieces = sp_src.encode(text, out_type=str)
        assert ids == [vocab.get(p, vocab["<unk>"]) for p in pieces] + [0], (text, ids, pieces)
        cases.append({"text": text, "input_ids": ids, "pieces": pieces})

    # Greedy and beam, one by one and all in one padded batch.
    greedy_kwargs = {"num_beams": 1}
    batch_notes, max_score_diff = [], 0.0
    for key, kwargs, n in [("greedy", greedy_kwargs, 1), ("beam", BEAM, BEAM["num_return_sequences"])]:
        batched = search_results(tok, model, SOURCES, kwargs, n)
        for case, batch_hyps in zip(cases, batched):
            single = search_results(tok, model, [case["text"]], kwargs, n)[0]
            for h, b in zip(single, batch_hyps):
                if h["score"] is not None:
                    assert abs(recompute_score(model, case["input_ids"], h["ids"]) - h["score"]) < 1e-4, (case, h)
                    max_score_diff = max(max_score_diff, abs(h["score"] - b["score"]))
                    h["score"] = rounded(h["score"])
            case[key] = single if n > 1 else single[0]
            if not same(single, batch_hyps):
                for h in batch_hyps:
                    h["score"] = None if h["score"] is None else rounded(h["score"])
                case[key + "_batch"] = batch_hyps
                batch_notes.append(f"{key}: {case['text']!r} differs in the padded batch")
    for case in cases:
        if "score" in case["greedy"]:
            del case["greedy"]["score"]

    encoder = []
    for i in ENCODER_CASES:
        ids = torch.tensor([cases[i]["input_ids"]])
        with torch.no_grad():
            hidden = model.get_encoder()(input_ids=ids).last_hidden_state[0]
        encoder.append({"text": SOURCES[i], "input_ids": cases[i]["input_ids"], "last_hidden_state": rounded(hidden.tolist())})

    teacher = []
    for src, tgt in spec.teacher_forcing:
        batch = tok(src, text_target=tgt, return_tensors="pt")
        labels = batch["labels"]
        with torch.no_grad():
            output = model(input_ids=batch["input_ids"], labels=labels)
        decoder_input_ids = [cfg.decoder_start_token_id] + labels[0, :-1].tolist()
        check = model(input_ids=batch["input_ids"], decoder_input_ids=torch.tensor([decoder_input_ids])).logits
        assert torch.equal(check, output.logits)
        teacher.append({"source": src, "target": tgt, "input_ids": batch["input_ids"][0].tolist(),
                        "labels": labels[0].tolist(), "decoder_input_ids": decoder_input_ids,
                        "logits": rounded(output.logits[0].tolist())})

    targets = []
    for text in spec.targets:
        ids = tok(text_target=text).input_ids
        pieces = sp_tgt.encode(text, out_type=str)
        assert ids == [target_vocab.get(p, target_vocab["<unk>"]) for p in pieces] + [0], (text, ids, pieces)
        targets.append({"text": text, "ids": ids, "pieces": pieces, "decoded": tok.decode(ids, skip_special_tokens=True)})

    return {
        "model": spec.name,
        "notes": spec.notes + batch_notes,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
                     "sentencepiece": sentencepiece.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
        "seed": SEED,
        "float_significant_digits": DIGITS,
        "vocab_size": cfg.vocab_size,
        "decoder_vocab_size": cfg.decoder_vocab_size,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "generate_kwargs": {"greedy": {"do_sample": False, "max_new_tokens": MAX_NEW_TOKENS, **greedy_kwargs},
                            "beam": {"do_sample": False, "max_new_tokens": MAX_NEW_TOKENS, **BEAM}},
        "generation_config": json.loads((out / "generation_config.json").read_text()),
        "batch_vs_single": {"all_sources_in_one_padded_batch_agree": not batch_notes,
                            "max_beam_score_difference": float(f"{max_score_diff:.2g}")},
        "cases": cases,
        "encoder": encoder,
        "teacher_forcing": teacher,
        "targets": targets,
    }


def write_goldens(path, golden):
    """One key per line; one case per line; float matrices one row per line."""
    def dump(v):
        return json.dumps(v, ensure_ascii=False)

    def matrix_case(case, key):
        head = ", ".join(f"{dump(k)}: {dump(v)}" for k, v in case.items() if k != key)
        rows = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in case[key])
        return f" {{{head},\n  {dump(key)}: [\n  {rows}]}}"

    lines = []
    for key, value in golden.items():
        if key in ("cases", "targets"):
            lines.append(f"{dump(key)}: [\n" + ",\n".join(" " + dump(c) for c in value) + "\n]")
        elif key == "encoder":
            lines.append(f"{dump(key)}: [\n" + ",\n".join(matrix_case(c, "last_hidden_state") for c in value) + "\n]")
        elif key == "teacher_forcing":
            lines.append(f"{dump(key)}: [\n" + ",\n".join(matrix_case(c, "logits") for c in value) + "\n]")
        else:
            lines.append(f"{dump(key)}: {dump(value)}")
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # fast for these tiny models, and the same float results on every machine
    for spec in SPECS:
        out = OUT / spec.name
        _, sp_tgt = write_folder(spec, out)
        shapes = check_bin_equals_safetensors(out)
        golden = goldens(spec, out, sp_tgt)
        golden["tensors"] = shapes
        write_goldens(out / "goldens.json", golden)
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{spec.name}: {sorted(f.name for f in out.iterdir())} {size} bytes")
        for case in golden["cases"]:
            print(f"  {case['text'][:40]!r:44} {case['greedy']['ids']} | {case['beam'][0]['ids']}")
        print("  notes:", golden["notes"])


if __name__ == "__main__":
    main()
