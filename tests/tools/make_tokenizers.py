"""Trains the four fixture tokenizers and writes their goldens into tests/data/tokenizer/.

  gpt2.tokenizer.json    byte-level BPE, GPT-2 / SmolLM style (Digits + ByteLevel regex)
  llama3.tokenizer.json  byte-level BPE, Llama 3 style (Split regex + ByteLevel, ignore_merges)
  qwen2.tokenizer.json   byte-level BPE, Qwen2 style (NFC + Split regex + ByteLevel)
  llama_spm.model        SentencePiece BPE with byte fallback, Llama 1/2 style (spm_train)

plus corpus.json and <name>.golden.json. Input: tests/tools/tokenizer_train.txt
(see build_train_text.py). Usage: .venv/bin/python tests/tools/make_tokenizers.py
"""
import json
import subprocess
from pathlib import Path

import sentencepiece
import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tokenizer_corpus import CORPUS

TOOLS = Path(__file__).resolve().parent
TRAIN_TEXT = TOOLS / "tokenizer_train.txt"
OUT = TOOLS.parent / "data" / "tokenizer"

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                   "<|end_header_id|>"]
VOCAB_SIZE = 800  # including the added tokens
SPM_VOCAB_SIZE = 600


def training_documents():
    """The training text in chunks of 8 lines, so BPE also learns newline runs."""
    lines = TRAIN_TEXT.read_text().split("\n")
    return ["\n".join(lines[i:i + 8]) for i in range(0, len(lines), 8)]


def bpe_trainer(vocab_size, special_tokens=()):
    return trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)


def train_gpt2():
    """SmolLM-like: the specials come first (ids 0, 1, 2), as in SmolLM."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(training_documents(), bpe_trainer(VOCAB_SIZE, CHATML_SPECIALS))
    return tok


def train_llama3():
    """Llama-3-like: ignore_merges, specials appended after the BPE vocab, BOS added by the post-processor."""
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(training_documents(), bpe_trainer(VOCAB_SIZE - len(LLAMA3_SPECIALS)))
    tok.add_special_tokens(LLAMA3_SPECIALS)
    bos = LLAMA3_SPECIALS[0]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                      special_tokens=[(bos, tok.token_to_id(bos))]),
    ])
    return tok


def train_qwen2():
    """Qwen2-like: NFC, specials appended after the BPE vocab, plus two non-special added tokens
    (<tool_call>, </tool_call>, special=false as in Qwen2.5) that skip_special_tokens keeps."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.train_from_iterator(training_documents(), bpe_trainer(VOCAB_SIZE - len(CHATML_SPECIALS) - 2))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHATML_SPECIALS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ["<tool_call>", "</tool_call>"]])
    return tok


def train_spm(prefix):
    """Llama-1/2-like SentencePiece BPE, trained on the lines of the training text that are at least
    80% ASCII: 600 pieces leave too little room for a CJK alphabet, so most non-Latin text takes
    the byte fallback, as rare characters do in Llama's tokenizer."""
    lines = [line for line in TRAIN_TEXT.read_text().split("\n")
             if line and sum(c.isascii() for c in line) >= 0.8 * len(line)]
    # Relative paths, run in OUT: spm_train records its arguments in the model's trainer_spec.
    spm_input = OUT / f"{prefix}.train.txt"
    spm_input.write_text("\n".join(lines) + "\n")
    try:
        subprocess.run([
            "spm_train", f"--input={spm_input.name}", f"--model_prefix={prefix}", "--model_type=bpe",
            f"--vocab_size={SPM_VOCAB_SIZE}", "--byte_fallback=true", "--character_coverage=0.995",
            "--split_digits=true", "--normalization_rule_name=identity", "--remove_extra_whitespaces=false",
            "--add_dummy_prefix=true", "--allow_whitespace_only_pieces=true", "--split_by_unicode_script=true",
            "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1", "--num_threads=1",
            "--input_sentence_size=0", "--shuffle_input_sentence=false", "--minloglevel=2",
        ], check=True, cwd=OUT)
    finally:
        spm_input.unlink()
    (OUT / f"{prefix}.vocab").unlink()


def hf_golden(tok):
    cases = []
    for text in CORPUS:
        enc = tok.encode(text, add_special_tokens=False)
        tok.encode_special_tokens = True
        plain = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        cases.append({
            "text": text,
            "ids": enc.ids,
            "tokens": enc.tokens,
            "ids_no_special_parse": plain,
            "ids_add_special": tok.encode(text, add_special_tokens=True).ids,
            "decoded": tok.decode(enc.ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(enc.ids, skip_special_tokens=True),
        })
    return cases


def spm_golden(sp):
    return [{
        "text": text,
        "ids": sp.encode(text, out_type=int),
        "pieces": sp.encode(text, out_type=str),
        "ids_add_bos": sp.encode(text, out_type=int, add_bos=True),
        "decoded": sp.decode(sp.encode(text, out_type=int)),
    } for text in CORPUS]


def write_json(path, obj):
    """UTF-8 JSON, one top-level key per line and one element per line for top-level lists."""
    def dump(value):
        return json.dumps(value, ensure_ascii=False)

    if isinstance(obj, list):
        text = "[\n" + ",\n".join(dump(v) for v in obj) + "\n]"
    else:
        text = "{\n" + ",\n".join(
            f"{dump(k)}: " + ("[\n" + ",\n".join(dump(e) for e in v) + "\n]" if isinstance(v, list) else dump(v))
            for k, v in obj.items()) + "\n}"
    path.write_text(text + "\n")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "corpus.json", CORPUS)
    versions = {"tokenizers": tokenizers.__version__, "sentencepiece": sentencepiece.__version__}
    for name, train in [("gpt2", train_gpt2), ("llama3", train_llama3), ("qwen2", train_qwen2)]:
        path = OUT / f"{name}.tokenizer.json"
        tok = train()
        tok.save(str(path))
        tok = Tokenizer.from_file(str(path))  # goldens from the file as written
        assert PreTrainedTokenizerFast(tokenizer_file=str(path)).vocab_size > 0
        write_json(OUT / f"{name}.golden.json", {
            "tokenizer": path.name, "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "versions": versions, "cases": hf_golden(tok)})
        print(f"{path.name}: vocab {tok.get_vocab_size(with_added_tokens=True)}")
    train_spm("llama_spm")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(OUT / "llama_spm.model"))
    write_json(OUT / "llama_spm.golden.json", {
        "tokenizer": "llama_spm.model", "vocab_size": sp.get_piece_size(),
        "versions": versions, "cases": spm_golden(sp)})
    print(f"llama_spm.model: vocab {sp.get_piece_size()}")


if __name__ == "__main__":
    main()
