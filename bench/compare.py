#!/usr/bin/env python3
"""Octet vs llama.cpp (llama-cpp-python) and CTranslate2, side by side, on the models of
bench/make_bench_models.py (identical shapes and weights on both sides; dev only).

LLM: per shape and quant, `rounds` rounds; each round runs Octet (build-bench/bin/octet-bench) and
llama.cpp (this script as a worker process, low-level llama_cpp API) once each, alternating which goes
first. Each process loads the model, warms up once, then times prefill of 64 and 512 random token ids
from an empty KV cache (one batch: n_batch = n_ubatch = 512 on llama.cpp) and 128 greedy decode steps
(argmax, EOS ignored) from an empty cache, as llama-bench's pp/tg do. Medians over rounds, and
Octet/llama.cpp ratios (> 1: Octet faster). Each round starts with octet-bench's read probe; "tg /
probe" is each side's decode (weight bytes per token x tokens/s) over its round's probe, the median
over rounds, so a VM whose bandwidth moves between minutes is compared with itself.

Translation: Octet (octet-bench on the encdec .qbin) vs ctranslate2.Translator (int8), same 500 source
sentences, batch 32, beam 4 and greedy, the same max length on both sides (random models rarely emit
EOS, so most outputs run to max length): target tokens/s (EOS not counted) and sentences/s.

Usage (from the repository root):
  .venv/bin/python bench/compare.py --models /tmp/octet-bench/models --shapes smollm2_135m --json /tmp/octet-bench/compare.json
  .venv/bin/python bench/compare.py --translation-only
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OCTET_BENCH = ROOT / "build-bench/bin/octet-bench"


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- llama.cpp worker (runs in its own process) --------------------------------------------------

def llama_worker(a):
    import numpy as np
    import llama_cpp as L

    L.llama_backend_init()
    reset_peak_rss()
    mp = L.llama_model_default_params()
    load_fn = getattr(L, "llama_model_load_from_file", None) or L.llama_load_model_from_file
    # Warm the page cache, then time a load.
    model = load_fn(a.model.encode(), mp)
    (getattr(L, "llama_model_free", None) or L.llama_free_model)(model)
    t0 = time.perf_counter()
    model = load_fn(a.model.encode(), mp)
    load_s = time.perf_counter() - t0
    if not model:
        sys.exit(f"llama.cpp could not load {a.model}")
    cp = L.llama_context_default_params()
    cp.n_ctx = a.context
    cp.n_batch = max(a.prompts)
    cp.n_ubatch = max(a.prompts)
    cp.n_threads = a.threads
    cp.n_threads_batch = a.threads
    ctx = (getattr(L, "llama_init_from_model", None) or L.llama_new_context_with_model)(model, cp)
    if hasattr(L, "llama_model_get_vocab"):
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    else:
        n_vocab = L.llama_n_vocab(model)
    if hasattr(L, "llama_get_memory"):
        clear = lambda: L.llama_memory_clear(L.llama_get_memory(ctx), True)  # noqa: E731
    elif hasattr(L, "llama_kv_self_clear"):
        clear = lambda: L.llama_kv_self_clear(ctx)  # noqa: E731
    else:
        clear = lambda: L.llama_kv_cache_clear(ctx)  # noqa: E731

    def decode(ids):
        arr = (L.llama_token * len(ids))(*ids)
        rc = L.llama_decode(ctx, L.llama_batch_get_one(arr, len(ids)))
        if rc != 0:
            sys.exit(f"llama_decode: {rc}")
        return np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))

    rng = np.random.default_rng(1234)
    out = {"load_ms": 1e3 * load_s, "prefill": {}, "decode": {}}
    for p in a.prompts:
        ids = [int(x) for x in rng.integers(3, n_vocab, p)]
        tps = []
        for i in range(a.runs + 1):  # the first run warms up
            clear()
            t0 = time.perf_counter()
            logits = decode(ids)
            t = time.perf_counter() - t0
            assert np.isfinite(logits[0])
            if i:
                tps.append(p / t)
        out["prefill"][str(p)] = {"tokens_per_s": statistics.median(tps), "runs_tokens_per_s": tps}
    tps = []
    for i in range(a.runs + 1):
        clear()
        token = int(rng.integers(3, n_vocab))
        t0 = time.perf_counter()
        for _ in range(a.gen):
            token = int(np.argmax(decode([token])))
        t = time.perf_counter() - t0
        if i:
            tps.append(a.gen / t)
    out["decode"] = {"tokens": a.gen, "tokens_per_s": statistics.median(tps), "runs_tokens_per_s": tps}
    out["peak_rss_mib"] = peak_rss_mib()
    out["file_bytes"] = os.path.getsize(a.model)
    out["system_info"] = L.llama_print_system_info().decode()
    cpp = L.llama_context_default_params()
    out["flash_attn"] = str(getattr(cpp, "flash_attn_type", getattr(cpp, "flash_attn", "?")))
    L.llama_free(ctx)
    (getattr(L, "llama_model_free", None) or L.llama_free_model)(model)
    print(json.dumps(out))


# ---- drivers -------------------------------------------------------------------------------------

def run_json(cmd, json_path=None):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    if json_path:
        return json.loads(Path(json_path).read_text())
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_octet_llm(model, a, tmp):
    out = tmp / "octet.json"
    cmd = [str(a.octet_bench), "--threads", str(a.threads), "--runs", str(a.runs), "--no-bandwidth",
           "--prompts", ",".join(map(str, a.prompts)), "--gen", str(a.gen), "--context", str(a.context),
           "--json", str(out), str(model)]
    r = run_json(cmd, out)["results"][0]
    return {"load_ms": r["load_ms"]["median"], "load_ms_no_verify": r["load_ms_other"]["median"],
            "prefill": {p: v["tokens_per_s"] for p, v in r["prefill"].items()},
            "decode": r["decode"]["tokens_per_s"], "peak_rss_mib": r["peak_rss_mib"], "file_bytes": r["file_bytes"],
            "weight_bytes_per_token": r["weight_bytes_per_token"]}


def run_llama_llm(model, a):
    cmd = [sys.executable, __file__, "--llama-worker", str(model), "--threads", str(a.threads), "--runs", str(a.runs),
           "--prompts", ",".join(map(str, a.prompts)), "--gen", str(a.gen), "--context", str(a.context)]
    r = run_json(cmd)
    return {"load_ms": r["load_ms"], "prefill": {p: v["tokens_per_s"] for p, v in r["prefill"].items()},
            "decode": r["decode"]["tokens_per_s"], "peak_rss_mib": r["peak_rss_mib"], "file_bytes": r["file_bytes"],
            "system_info": r["system_info"], "flash_attn": r["flash_attn"]}


def settle_page_cache(paths):
    """Drops each file from the page cache and reads it back, so both sides start from the state a
    cold read leaves. How a file first entered the cache decides the size of its cached folios (on
    the 6.18 VM, 4 KiB after some writes, 2 MiB after a read), and with them the cost of mapping it:
    the same 1.1 GB .qbin loaded in 82-92 ms with 4 KiB folios and in 39-43 ms with 2 MiB ones."""
    for path in paths:
        for f in ([path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                while fh.read(8 << 20):
                    pass


def bandwidth(a):
    out = Path(a.tmp) / "bw.json"
    r = run_json([str(a.octet_bench), "--bandwidth-only", "--threads", str(a.threads), "--json", str(out)], out)
    return r["bandwidth"]


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def med(xs):
    return statistics.median(xs)


def compare_llm(a, shape, quant):
    d = Path(a.models) / shape
    ours, theirs = d / f"octet-{quant}.qbin", d / f"llama-{quant.upper()}.gguf"
    for f in (ours, theirs):
        if not f.exists():
            sys.exit(f"{f} missing: run bench/make_bench_models.py")
    settle_page_cache([ours, theirs])
    tmp = Path(a.tmp)
    o_runs, l_runs, loads, probes = [], [], [], []
    for r in range(a.rounds):
        loads.append(os.getloadavg()[0])
        # The VM's bandwidth moves from minute to minute: each round's decode is set against a probe
        # taken just before it, not against one taken at the start of the whole run.
        probes.append(bandwidth(a)["read_gb_s"])
        order = [("octet", ours), ("llama", theirs)] if r % 2 == 0 else [("llama", theirs), ("octet", ours)]
        for side, path in order:
            res = run_octet_llm(path, a, tmp) if side == "octet" else run_llama_llm(path, a)
            (o_runs if side == "octet" else l_runs).append(res)
        log(f"{shape} {quant} round {r + 1}/{a.rounds}: octet tg {o_runs[-1]['decode']:.1f} pp512 "
            f"{o_runs[-1]['prefill'].get('512', 0):.1f} | llama.cpp tg {l_runs[-1]['decode']:.1f} pp512 "
            f"{l_runs[-1]['prefill'].get('512', 0):.1f} (load {os.getloadavg()[0]:.1f}, probe {probes[-1]:.1f} GB/s)")

    def summary(runs):
        s = {"load_ms": med([x["load_ms"] for x in runs]),
             "prefill": {str(p): med([x["prefill"][str(p)] for x in runs]) for p in a.prompts},
             "decode": med([x["decode"] for x in runs]),
             "decode_runs": [x["decode"] for x in runs],
             "prefill_runs": {str(p): [x["prefill"][str(p)] for x in runs] for p in a.prompts},
             "peak_rss_mib": med([x["peak_rss_mib"] for x in runs]), "file_bytes": runs[0]["file_bytes"]}
        if "load_ms_no_verify" in runs[0]:
            s["load_ms_no_verify"] = med([x["load_ms_no_verify"] for x in runs])
            s["weight_bytes_per_token"] = runs[0]["weight_bytes_per_token"]
        return s

    o, l = summary(o_runs), summary(l_runs)
    # Share of the round's probe that each side's decode streams: weight bytes per token (the same
    # shapes and types on both sides) x tokens/s; medians over rounds.
    weight_gb = o_runs[0]["weight_bytes_per_token"] / 1e9
    for side, runs in ((o, o_runs), (l, l_runs)):
        side["decode_share_of_probe"] = med([x["decode"] * weight_gb / bw for x, bw in zip(runs, probes)])
    ratios = {f"pp{p}": o["prefill"][str(p)] / l["prefill"][str(p)] for p in a.prompts}
    ratios[f"tg{a.gen}"] = o["decode"] / l["decode"]
    return {"shape": shape, "quant": quant, "octet": o, "llama_cpp": l, "ratio_octet_over_llama": ratios,
            "load_average_1m_during": loads, "probe_read_gb_s": probes, "llama_system_info": l_runs[0]["system_info"],
            "llama_flash_attn_default": l_runs[0]["flash_attn"]}


# ---- translation -------------------------------------------------------------------------------

def ct2_worker(a):
    import ctranslate2
    import sentencepiece
    reset_peak_rss()
    hf = Path(a.ct2_model).parent / "hf"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(hf / "source.spm"))
    lines = [l for l in Path(a.sentences).read_text().split("\n") if l]
    tokens = [sp.encode(l, out_type=str) + ["</s>"] for l in lines]
    t0 = time.perf_counter()
    # "intra": CTranslate2's default layout, one batch at a time with the threads inside each op;
    # "inter": its throughput layout, batches side by side, one thread each.
    inter = a.ct2_layout == "inter"
    tr = ctranslate2.Translator(a.ct2_model, device="cpu", compute_type="int8",
                                inter_threads=a.threads if inter else 1, intra_threads=1 if inter else a.threads)
    load_s = time.perf_counter() - t0
    out = {"load_ms": 1e3 * load_s, "translate": {}, "version": ctranslate2.__version__}
    for beam in a.beams:
        secs, tps, n_tok = [], [], 0
        for _ in range(a.runs):
            t0 = time.perf_counter()
            res = tr.translate_batch(tokens, beam_size=beam, max_batch_size=a.batch, batch_type="examples",
                                     max_decoding_length=a.max_length, num_hypotheses=1)
            t = time.perf_counter() - t0
            n_tok = sum(len(r.hypotheses[0]) for r in res)  # EOS not included
            secs.append(t)
            tps.append(n_tok / t)
        out["translate"][str(beam)] = {"seconds": med(secs), "sentences_per_s": len(lines) / med(secs),
                                       "target_tokens": n_tok, "target_tokens_per_s": med(tps)}
    out["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(out))


def compare_translation(a):
    d = Path(a.models) / "opus_mt_en_zh"
    ours, theirs = d / "octet-q8_0.qbin", d / "ct2-int8"
    sentences = Path(a.models) / "sentences.en.txt"
    tmp = Path(a.tmp)
    if a.n_sentences:  # the first N only (a full 500-sentence run of ours takes ~20 min on 2 busy cores)
        lines = [l for l in sentences.read_text().split("\n") if l][:a.n_sentences]
        sentences = tmp / f"sentences.first{a.n_sentences}.txt"
        sentences.write_text("\n".join(lines) + "\n")
    settle_page_cache([ours, theirs])
    o_runs, c_runs = [], {"intra": [], "inter": []}
    beams = ",".join(map(str, a.beams))
    for r in range(a.translation_rounds):
        order = ["octet", "intra", "inter"]
        order = order[r % 3:] + order[:r % 3]
        for side in order:
            if side == "octet":
                out = tmp / "octet-tr.json"
                res = run_json([str(a.octet_bench), "--threads", str(a.threads), "--runs", "1", "--no-bandwidth",
                                "--sentences", str(sentences), "--beams", beams, "--batch", str(a.batch),
                                "--max-length", str(a.max_length), "--kv-type", a.kv_type, "--json", str(out),
                                str(ours)], out)["results"][0]
                o_runs.append(res)
            else:
                c_runs[side].append(run_json([sys.executable, __file__, "--ct2-worker", str(theirs), "--ct2-layout",
                                              side, "--sentences", str(sentences), "--threads", str(a.threads),
                                              "--runs", "1", "--beams", beams, "--batch", str(a.batch),
                                              "--max-length", str(a.max_length)]))
        log(f"translation round {r + 1}: " + ", ".join(
            f"beam {b}: octet {o_runs[-1]['translate'][str(b)]['target_tokens_per_s']:.0f} tok/s, ct2 " +
            " / ".join(f"{c_runs[k][-1]['translate'][str(b)]['target_tokens_per_s']:.0f}" for k in c_runs) +
            " tok/s (intra / inter)" for b in a.beams))
    result = {"sentences": str(sentences), "batch": a.batch, "max_length": a.max_length, "octet_kv_type": a.kv_type,
              "by_beam": {},
              "ct2_version": c_runs["intra"][0]["version"]}
    keys = ("sentences_per_s", "target_tokens_per_s")
    for b in map(str, a.beams):
        o = {k: med([x["translate"][b][k] for x in o_runs]) for k in keys}
        o["target_tokens"] = o_runs[-1]["translate"][b]["target_tokens"]
        result["by_beam"][b] = {"octet": o}
        for layout, runs in c_runs.items():
            c = {k: med([x["translate"][b][k] for x in runs]) for k in keys}
            c["target_tokens"] = runs[-1]["translate"][b]["target_tokens"]
            result["by_beam"][b][f"ctranslate2_{layout}"] = c
            result["by_beam"][b][f"ratio_tokens_per_s_{layout}"] = o["target_tokens_per_s"] / c["target_tokens_per_s"]
            result["by_beam"][b][f"ratio_sentences_per_s_{layout}"] = o["sentences_per_s"] / c["sentences_per_s"]
    result["octet_load_ms"] = med([x["load_ms"]["median"] for x in o_runs])
    result["ct2_load_ms"] = med([x["load_ms"] for x in c_runs["intra"]])
    result["octet_peak_rss_mib"] = med([x["peak_rss_mib"] for x in o_runs])
    result["ct2_peak_rss_mib"] = {layout: med([x["peak_rss_mib"] for x in runs]) for layout, runs in c_runs.items()}
    return result


def print_tables(report):
    for r in report.get("llm", []):
        o, l, q = r["octet"], r["llama_cpp"], r["ratio_octet_over_llama"]
        print(f"\n{r['shape']} {r['quant']}  (medians of {len(o['decode_runs'])} rounds; tokens/s; ratio = Octet / llama.cpp)")
        print(f"  {'':10} {'Octet':>10} {'llama.cpp':>10} {'ratio':>7}")
        for k in q:
            if k.startswith("pp"):
                ov, lv = o["prefill"][k[2:]], l["prefill"][k[2:]]
            else:
                ov, lv = o["decode"], l["decode"]
            print(f"  {k:10} {ov:10.1f} {lv:10.1f} {q[k]:7.2f}")
        print(f"  {'tg / probe':10} {o['decode_share_of_probe']:10.2f} {l['decode_share_of_probe']:10.2f}   "
              f"(weight bytes x tokens/s over each round's read probe, {min(r['probe_read_gb_s']):.1f}-"
              f"{max(r['probe_read_gb_s']):.1f} GB/s; medians)")
        print(f"  {'load ms':10} {o['load_ms']:10.1f} {l['load_ms']:10.1f}   (Octet verifies checksums; "
              f"without: {o.get('load_ms_no_verify', 0):.1f} ms)")
        print(f"  {'RSS MiB':10} {o['peak_rss_mib']:10.1f} {l['peak_rss_mib']:10.1f}   (llama.cpp side includes Python)")
        print(f"  {'file MiB':10} {o['file_bytes'] / 2**20:10.1f} {l['file_bytes'] / 2**20:10.1f}")
    t = report.get("translation")
    if t:
        print(f"\ntranslation opus-mt-en-zh shape, {t['batch']} per batch, max length {t['max_length']}")
        print("  CT2 intra: one batch at a time, threads inside each op (its default); "
              "inter: batches side by side, a thread each")
        print(f"  {'':8} {'Octet tok/s':>12} {'CT2 intra':>10} {'ratio':>6} {'CT2 inter':>10} {'ratio':>6}")
        for b, v in t["by_beam"].items():
            print(f"  beam {b:3} {v['octet']['target_tokens_per_s']:12.1f} "
                  f"{v['ctranslate2_intra']['target_tokens_per_s']:10.1f} {v['ratio_tokens_per_s_intra']:6.2f} "
                  f"{v['ctranslate2_inter']['target_tokens_per_s']:10.1f} {v['ratio_tokens_per_s_inter']:6.2f}")
    bw = report.get("bandwidth_before"), report.get("bandwidth_after")
    if all(bw):
        print(f"\nbandwidth read GB/s before/after: {bw[0]['read_gb_s']:.1f} / {bw[1]['read_gb_s']:.1f}; "
              f"load average {report['load_average_start']} -> {report['load_average_end']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="/tmp/octet-bench/models")
    ap.add_argument("--shapes", default="smollm2_135m")
    ap.add_argument("--quants", default="q8_0,q4_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="alternating process pairs per shape/quant")
    ap.add_argument("--runs", type=int, default=1, help="timed repetitions inside each process (after 1 warm-up)")
    ap.add_argument("--prompts", default="64,512")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--translation", action="store_true", help="also the translation comparison")
    ap.add_argument("--translation-only", action="store_true")
    ap.add_argument("--translation-rounds", type=int, default=2)
    ap.add_argument("--beams", default="4,1")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--n-sentences", type=int, default=0, help="translate only the first N sentences (0: all 500)")
    ap.add_argument("--kv-type", default="f16", choices=("f16", "f32", "q8_0"),
                    help="Octet's translation caches (CTranslate2 keeps float32 ones)")
    ap.add_argument("--octet-bench", type=Path, default=OCTET_BENCH)
    ap.add_argument("--tmp", default="/tmp/octet-bench")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--llama-worker", dest="model", help=argparse.SUPPRESS)
    ap.add_argument("--ct2-worker", dest="ct2_model", help=argparse.SUPPRESS)
    ap.add_argument("--ct2-layout", choices=("intra", "inter"), default="intra", help=argparse.SUPPRESS)
    ap.add_argument("--sentences", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.prompts = [int(x) for x in a.prompts.split(",")]
    a.beams = [int(x) for x in a.beams.split(",")]
    if a.model:
        return llama_worker(a)
    if a.ct2_model:
        return ct2_worker(a)
    Path(a.tmp).mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "cpu": platform.processor(),
              "threads": a.threads, "load_average_start": loadavg(), "settings": {
                  "rounds": a.rounds, "runs_per_process": a.runs, "prompts": a.prompts, "gen": a.gen,
                  "context": a.context}}
    with open("/proc/cpuinfo") as f:
        report["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    report["bandwidth_before"] = bandwidth(a)
    log(f"bandwidth read {report['bandwidth_before']['read_gb_s']:.1f} GB/s; load average {report['load_average_start']}")
    if not a.translation_only:
        report["llm"] = [compare_llm(a, s, q) for s in a.shapes.split(",") if s for q in a.quants.split(",")]
    if a.translation or a.translation_only:
        report["translation"] = compare_translation(a)
    report["bandwidth_after"] = bandwidth(a)
    report["load_average_end"] = loadavg()
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)


if __name__ == "__main__":
    main()
