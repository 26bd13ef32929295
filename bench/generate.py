"""Generation speed of the chat model: prefill tokens/s, decode tokens/s, time to first token, peak memory.

    .venv/bin/python bench/generate.py                       # ours only
    .venv/bin/python bench/generate.py --vs-transformers     # + HF transformers fp32 on the same GGUF, ratios
    .venv/bin/python bench/generate.py --llama-bench PATH    # + llama.cpp's llama-bench on the same GGUF, ratios

Each engine runs in its own subprocess (so peak RSS, threads and allocator state do not mix) on the SAME token
ids: a 1,024-token prompt cut from a COVID-QA paper (or repeated filler text when the shared data is missing),
then 128 greedy new tokens with stop ids ignored so that all 128 are decoded. Each measurement is repeated
(`--repeats`) and the best run is kept, because this machine is shared and noisy; compare ratios, not
absolute numbers. Definitions, identical for both sides:
- prefill tok/s = prompt tokens / time to first token (TTFT: the prompt forward + picking the first token);
- decode tok/s  = (new tokens - 1) / (total time - TTFT);
- peak RSS      = the process's peak resident memory after everything (model load included).
HF transformers is run with `--hf-python` (a separate venv, see the default) when it is not importable here.
Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COVIDQA = ROOT.parent / "shared" / "eval" / "covidqa.json"


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's ru_maxrss is not it in a child: a subprocess started with
    vfork + exec (Python's, on Linux) inherits its parent's peak, so the kernel's high-water mark of this
    process's own memory map (VmHWM) is read where there is one."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # KiB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def decode_depth(args) -> int:
    """The positions a decode step attends to on average: the prompt and half the new tokens."""
    return args.prompt_tokens + args.new_tokens // 2


def decode_bytes(model, depth: int, kv_bytes: int) -> int:
    """Bytes one decode step of ours reads at `depth` positions: the weights the decode path multiplies (the 4-bit
    groups of Int4Linear, not its int8 copy for prompts; the int8 head; bf16 and float linears) and the keys and
    values of every layer. The embedding lookup and the norms are left out (one row; a few KB)."""
    import torch.nn as nn

    from lm.quant import BF16Linear, Int4Linear, Int8Linear

    def size(t) -> int:
        return t.numel() * t.element_size()

    total = 0
    for mod in model.modules():
        if isinstance(mod, Int4Linear):
            total += size(mod.q4) + size(mod.q4_scales)
        elif isinstance(mod, Int8Linear):
            total += size(mod.weight) + size(mod.scales)
        elif isinstance(mod, (BF16Linear, nn.Linear)):
            total += size(mod.weight)
    c = model.config
    return total + 2 * c.n_layers * c.n_kv_heads * c.head_dim * depth * kv_bytes


def gguf_decode_bytes(gguf: str, depth: int) -> int:
    """The same for llama.cpp on the GGUF: every tensor but the token embeddings where a separate output matrix
    exists (the lookup reads one row), and an f16 KV cache."""
    sys.path.insert(0, str(ROOT))
    from lm.gguf import GGUFFile, config_from_metadata

    f = GGUFFile(Path(gguf))
    tied = "output.weight" not in f.tensors
    weights = sum(t.n_bytes for t in f.tensors.values() if tied or t.name != "token_embd.weight")
    c = config_from_metadata(f.metadata, set(f.tensors))
    return weights + 2 * c.n_layers * c.n_kv_heads * c.head_dim * depth * 2


def memory_bandwidth_gbs(threads: int, mb: int = 512, repeats: int = 5) -> float:
    """This machine's memory bandwidth as `threads` threads see it: a copy of `mb` MB (read plus write), best of
    `repeats`."""
    import torch

    torch.set_num_threads(threads)
    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * mb * 2**20 / best / 1e9


def prompt_text() -> str:
    if COVIDQA.is_file():
        data = json.loads(COVIDQA.read_text())
        return "\n\n".join(p["context"] for p in data["data"][0]["paragraphs"])
    return " ".join(f"Sentence number {i} of a long filler document about nothing in particular." for i in range(2000))


# ---------------------------------------------------------------------------------------------- workers

def worker_prepare(args) -> dict:
    """Load once (writing the converted-weights cache if missing) and cut the prompt ids."""
    sys.path.insert(0, str(ROOT))
    from bot.config import env_cache_dir
    from lm import hub
    from lm.load import load_chat_model
    from lm.runtime import converted_path

    path = hub.resolve(args.model, env_cache_dir())
    had_cache = converted_path(path, args.weights, args.max_len).is_file()
    t0 = time.perf_counter()
    _model, tok = load_chat_model(args.model, env_cache_dir(), weights=args.weights, threads=args.threads,
                                  max_seq_len=args.max_len)
    load_s = time.perf_counter() - t0
    ids = tok.encode(prompt_text())
    if len(ids) < args.prompt_tokens:
        raise SystemExit(f"prompt text has only {len(ids)} tokens, need {args.prompt_tokens}")
    return {"gguf": str(path), "prompt_ids": ids[:args.prompt_tokens], "first_load_s": load_s,
            "first_load_converted": not had_cache, "first_load_peak_rss_mb": peak_rss_mb()}


def worker_ours(args, prompt: list[int]) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from bot.config import env_cache_dir
    from lm.engine import Engine, GenerationConfig
    from lm.load import load_chat_model

    t0 = time.perf_counter()
    model, tok = load_chat_model(args.model, env_cache_dir(), weights=args.weights, threads=args.threads,
                                 max_seq_len=args.max_len)
    load_s = time.perf_counter() - t0
    engine = Engine(model, tok, max_len=args.max_len)
    engine.generate(prompt[:16], GenerationConfig(max_new_tokens=4, ignore_stop_ids=True))  # warm-up
    runs = []
    for _ in range(args.repeats):
        engine.reset()  # no prefix reuse between repeats: every run prefills the whole prompt
        r = engine.generate(prompt, GenerationConfig(max_new_tokens=args.new_tokens, ignore_stop_ids=True))
        assert r.new_tokens == args.new_tokens, (r.new_tokens, r.finish_reason)
        runs.append({"ttft_s": r.timings["ttft_s"], "total_s": r.timings["total_s"], "ids": r.ids})
    return summarize(runs, len(prompt), args.new_tokens) | {
        "engine": f"docent ({args.weights})", "threads": torch.get_num_threads(), "load_s": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "decode_bytes": float(decode_bytes(model, decode_depth(args), engine.kv_dtype.itemsize))}


def worker_hf(args, prompt: list[int]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    gguf = Path(args.gguf)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    ids = torch.tensor([prompt])
    kw = {"do_sample": False, "use_cache": True, "pad_token_id": 0}
    with torch.inference_mode():
        model.generate(ids[:, :16], max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **kw)
            total = time.perf_counter() - t0
            runs.append({"ttft_s": ttft, "total_s": total, "ids": out[0, len(prompt):].tolist()})
    import transformers

    return summarize(runs, len(prompt), args.new_tokens) | {
        "engine": f"transformers {transformers.__version__} (fp32)", "threads": torch.get_num_threads(),
        "load_s": load_s, "peak_rss_mb": peak_rss_mb()}


def summarize(runs: list[dict], n_prompt: int, n_new: int) -> dict:
    ttft = min(r["ttft_s"] for r in runs)
    decode = min(r["total_s"] - r["ttft_s"] for r in runs)
    return {"prompt_tokens": n_prompt, "new_tokens": n_new, "ttft_s": ttft, "prefill_tok_s": n_prompt / ttft,
            "decode_tok_s": (n_new - 1) / decode, "runs": len(runs), "ids": runs[0]["ids"]}


# ---------------------------------------------------------------------------------------------- driver

def run_worker(python: str, role: str, args, prompt_file: Path | None, extra: list[str] = (),
               env_extra: dict[str, str] | None = None) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", role, "--model", args.model, "--weights", args.weights,
           "--threads", str(args.threads), "--max-len", str(args.max_len), "--prompt-tokens", str(args.prompt_tokens),
           "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats), *extra]
    if prompt_file:
        cmd += ["--prompt-file", str(prompt_file)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{role} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def compare_sides(args, pf_text: str, env_var: str, sides: tuple[tuple[str, str], tuple[str, str]], what: str,
                  rounds: int = 3) -> dict:
    """Our engine twice per round, with `env_var` set to each side's value, in interleaved rounds so that both see
    the machine's slow and fast spells alike. Prints the medians, the ratio second / first side and how many
    greedy tokens the two sides share; returns the summary (also printed as a JSON line)."""
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        pf = Path(tmp) / "prompt.json"
        pf.write_text(pf_text)
        for _ in range(rounds):
            pairs.append({side: run_worker(sys.executable, "ours", args, pf, env_extra={env_var: flag})
                          for side, flag in sides})
    (first, _), (second, _) = sides
    print(f"{args.model} {args.weights}, prompt {args.prompt_tokens} tokens, {args.new_tokens} new, threads "
          f"{args.threads}, {rounds} interleaved rounds; {what}")
    summary = {"model": args.model, "weights": args.weights, "rounds": rounds}
    for key in ("prefill_tok_s", "ttft_s", "decode_tok_s"):
        a = statistics.median(p[first][key] for p in pairs)
        b = statistics.median(p[second][key] for p in pairs)
        ratio = statistics.median(p[second][key] / p[first][key] for p in pairs)
        print(f"{key:14} {first} {a:9.2f}   {second} {b:9.2f}   ratio {ratio:.2f}x")
        summary[key] = {first: round(a, 3), second: round(b, 3), f"{second}_over_{first}": round(ratio, 3)}
    ids_a, ids_b = pairs[0][first]["ids"], pairs[0][second]["ids"]
    same = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y), min(len(ids_a), len(ids_b)))
    print(f"greedy tokens identical for the first {same} of {args.new_tokens}")
    summary["greedy_agree_prefix"] = same
    print(json.dumps(summary))
    return summary


def compare_bf16_kernels(args, pf_text: str) -> None:
    """lm.quant's two kernel choices on this CPU: "native" (bf16 matmuls for a prompt) and "emulated" (float32
    matmuls for a prompt); the ratio is emulated / native."""
    from lm.quant import native_bf16

    compare_sides(args, pf_text, "LM_NATIVE_BF16", (("native-bf16-kernels", "1"), ("emulated-bf16-kernels", "0")),
                  f"this CPU has native bf16: {native_bf16()}")


def compare_decode_kernels(args, pf_text: str) -> None:
    """Decode rows through torch's kernels (LM_KERNELS=0) and through lm.kernels; the ratio is ours / torch's."""
    from lm import kernels

    built = kernels.library_path().is_file()
    compare_sides(args, pf_text, "LM_KERNELS", (("torch-kernels", "0"), ("lm-kernels", "1")),
                  f"lm.kernels built: {built}" + ("" if built else " (run make kernels: both sides are torch's)"))


def compare_vnni_kernels(args, pf_text: str) -> None:
    """lm.kernels' AVX2 kernels (LM_KERNELS_VNNI=0) and its AVX-512 VNNI ones; the ratio is VNNI / AVX2. On a CPU
    without VNNI both sides run the AVX2 ones."""
    from lm.quant import cpu_flags

    vnni = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= cpu_flags()
    compare_sides(args, pf_text, "LM_KERNELS_VNNI", (("avx2-kernels", "0"), ("vnni-kernels", "1")),
                  f"this CPU has AVX-512 VNNI: {vnni}" + ("" if vnni else " (both sides are the AVX2 kernels)"))


def llama_bench(path: str, gguf: str, args) -> dict:
    """llama.cpp's own benchmark on the same file and threads: prefill (-p) tokens/s and decode (-n) at depth 0, and
    decode after the prompt's depth, from its JSON output. A llama-bench with `-d` (2025-05 and later) measures
    each at depths 0 and P; an older one runs -pg P,N (the prompt then N new tokens, timed together), and the
    decode time is that run's time less the prefill's (measured in the same call; noisier, being a difference)."""
    base = [path, "-m", gguf, "-t", str(args.threads), "-r", str(args.repeats), "-o", "json",
            "-p", str(args.prompt_tokens), "-n", str(args.new_tokens)]
    cmd = base + ["-d", f"0,{args.prompt_tokens}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and "-d" in proc.stderr:  # no -d in this llama-bench
        cmd = base + ["-pg", f"{args.prompt_tokens},{args.new_tokens}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"llama-bench failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    rows = json.loads(proc.stdout)

    def rate(prompt: bool, gen: bool, depth: int) -> float | None:
        return next((r["avg_ts"] for r in rows if (r["n_prompt"] > 0) == prompt and (r["n_gen"] > 0) == gen
                     and r.get("n_depth", 0) == depth), None)

    prefill, at_zero = rate(True, False, 0), rate(False, True, 0)
    decode = rate(False, True, args.prompt_tokens)
    if decode is None:  # -pg: prompt and generation timed as one
        run = next(r for r in rows if r["n_prompt"] > 0 and r["n_gen"] > 0)
        decode_s = (run["n_prompt"] + run["n_gen"]) / run["avg_ts"] - run["n_prompt"] / prefill
        decode = run["n_gen"] / decode_s
    return {"decode_tok_s": decode, "decode_tok_s_depth0": at_zero, "prefill_tok_s": prefill,
            "command": " ".join(cmd)}


def hf_python(args) -> str | None:
    for python in (sys.executable, args.hf_python):
        if python and Path(python).exists():
            ok = subprocess.run([python, "-c", "import transformers, gguf, torch"], capture_output=True).returncode == 0
            if ok:
                return python
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--weights", default="int4", choices=["int4", "int8", "bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=0, help="0 = one per physical core")
    ap.add_argument("--max-len", type=int, default=2048, help="context window (KV cache size)")
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--vs-transformers", action="store_true")
    ap.add_argument("--hf-python", default="/tmp/hf/bin/python")
    ap.add_argument("--llama-bench", metavar="PATH", help="llama.cpp's llama-bench binary: run it on the same GGUF")
    ap.add_argument("--llama-rounds", type=int, default=3, help="interleaved rounds of ours and llama-bench")
    ap.add_argument("--bf16-kernels", action="store_true",
                    help="ours with the kernels of a CPU with native bf16 against those of one without "
                         "(lm.quant.NATIVE_BF16, forced by LM_NATIVE_BF16), in interleaved rounds")
    ap.add_argument("--kernels", action="store_true",
                    help="ours with decode rows through lm.kernels against torch's kernels (LM_KERNELS=0), "
                         "in interleaved rounds")
    ap.add_argument("--vnni", action="store_true",
                    help="ours with lm.kernels' AVX-512 VNNI kernels against its AVX2 ones (LM_KERNELS_VNNI=0), "
                         "in interleaved rounds")
    ap.add_argument("--worker", choices=["prepare", "ours", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--prompt-file", help=argparse.SUPPRESS)
    ap.add_argument("--gguf", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        prompt = json.loads(Path(args.prompt_file).read_text()) if args.prompt_file else None
        fn = {"prepare": lambda: worker_prepare(args), "ours": lambda: worker_ours(args, prompt),
              "hf": lambda: worker_hf(args, prompt)}[args.worker]
        print(json.dumps(fn()))
        return

    sys.path.insert(0, str(ROOT))
    from lm.runtime import physical_cores

    args.threads = args.threads or physical_cores()  # the same count for both engines
    hf_py = None
    if args.vs_transformers and not (hf_py := hf_python(args)):
        raise SystemExit(f"transformers is not importable here nor with {args.hf_python}; create it with: python3.11 -m "
                         f"venv /tmp/hf && /tmp/hf/bin/pip install torch==2.13.0 transformers gguf")
    prep = run_worker(sys.executable, "prepare", args, None)
    if args.bf16_kernels:
        return compare_bf16_kernels(args, pf_text=json.dumps(prep["prompt_ids"]))
    if args.kernels:
        return compare_decode_kernels(args, pf_text=json.dumps(prep["prompt_ids"]))
    if args.vnni:
        return compare_vnni_kernels(args, pf_text=json.dumps(prep["prompt_ids"]))
    with tempfile.TemporaryDirectory() as tmp:
        pf = Path(tmp) / "prompt.json"
        pf.write_text(json.dumps(prep["prompt_ids"]))
        results = [run_worker(sys.executable, "ours", args, pf)]
        if hf_py:
            results.append(run_worker(hf_py, "hf", args, pf, ["--gguf", prep["gguf"]]))
        # llama.cpp: rounds of (llama-bench, ours again), interleaved, so that both see the machine's slow and fast
        # spells alike; the ratio is the median of each round's
        llama_rounds = []
        for r in range(args.llama_rounds if args.llama_bench else 0):
            ours = results[0] if r == 0 else run_worker(sys.executable, "ours", args, pf)
            llama_rounds.append((ours, llama_bench(args.llama_bench, prep["gguf"], args)))

    rows = [("load s", "load_s", "{:.2f}"), ("prefill tok/s", "prefill_tok_s", "{:.1f}"), ("TTFT s", "ttft_s", "{:.3f}"),
            ("decode tok/s", "decode_tok_s", "{:.1f}"), ("peak RSS MB", "peak_rss_mb", "{:.0f}")]
    names = [r["engine"] for r in results]
    print(f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens (greedy), threads {args.threads}, "
          f"best of {args.repeats}")
    print(f"{'':16}" + "".join(f"{n:>28}" for n in names) + ("       ratio" if len(results) > 1 else ""))
    for label, key, fmt in rows:
        line = f"{label:16}" + "".join(f"{fmt.format(r[key]):>28}" for r in results)
        if len(results) > 1:
            ours, theirs = results[0][key], results[1][key]
            line += f"{ours / theirs:>11.2f}x" if theirs else ""
        print(line)
    summary = {"model": args.model, "weights": args.weights, "threads": args.threads,
               "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
               "first_load_s": round(prep["first_load_s"], 2), "first_load_converted": prep["first_load_converted"],
               "first_load_peak_rss_mb": round(prep["first_load_peak_rss_mb"]),
               "ours": {k: round(v, 3) for k, v in results[0].items() if isinstance(v, float)}}
    print(f"first load (GGUF -> {args.weights}{', converted' if prep['first_load_converted'] else ', from cache'}): "
          f"{prep['first_load_s']:.2f} s, peak RSS {prep['first_load_peak_rss_mb']:.0f} MB")
    if llama_rounds:
        def median(key: str, side: int) -> float:
            return statistics.median(r[side][key] for r in llama_rounds)

        def ratio(key: str) -> float:
            return statistics.median(ours[key] / llama[key] for ours, llama in llama_rounds)

        llama = llama_rounds[0][1]
        summary["llama_cpp"] = {"command": llama["command"], "rounds": len(llama_rounds),
                                **{k: round(median(k, 1), 1) for k in ("decode_tok_s", "decode_tok_s_depth0",
                                                                       "prefill_tok_s")}}
        decode_ratios = sorted(o["decode_tok_s"] / q["decode_tok_s"] for o, q in llama_rounds)
        summary["vs_llama_cpp_decode"] = round(statistics.median(decode_ratios), 3)
        summary["vs_llama_cpp_prefill"] = round(ratio("prefill_tok_s"), 3)
        bandwidth = memory_bandwidth_gbs(args.threads)
        ours_gbs = median("decode_tok_s", 0) * results[0]["decode_bytes"] / 1e9
        theirs_gbs = median("decode_tok_s", 1) * gguf_decode_bytes(prep["gguf"], decode_depth(args)) / 1e9
        summary["bandwidth_share"] = {"memory_gbs": round(bandwidth, 1), "ours": round(ours_gbs / bandwidth, 3),
                                      "llama_cpp": round(theirs_gbs / bandwidth, 3)}
        print(f"memory bandwidth {bandwidth:.1f} GB/s (a {args.threads}-thread copy); decode reads "
              f"{ours_gbs:.1f} GB/s ours ({ours_gbs / bandwidth:.0%}), {theirs_gbs:.1f} GB/s llama.cpp "
              f"({theirs_gbs / bandwidth:.0%})")
        print(f"llama.cpp ({llama['command']}), {len(llama_rounds)} interleaved rounds, medians: decode "
              f"{median('decode_tok_s', 1):.1f} tok/s at depth {args.prompt_tokens} "
              f"({median('decode_tok_s_depth0', 1):.1f} at depth 0), prefill {median('prefill_tok_s', 1):.1f} tok/s; "
              f"ours {median('decode_tok_s', 0):.1f} and {median('prefill_tok_s', 0):.1f}: decode "
              f"{summary['vs_llama_cpp_decode']:.2f}x ({decode_ratios[0]:.2f}-{decode_ratios[-1]:.2f}), prefill "
              f"{summary['vs_llama_cpp_prefill']:.2f}x")
    if len(results) > 1:
        hf, ours = results[1], results[0]
        agree = next((i for i, (a, b) in enumerate(zip(ours["ids"], hf["ids"], strict=False)) if a != b),
                     min(len(ours["ids"]), len(hf["ids"])))
        print(f"greedy tokens identical to transformers for the first {agree} of {args.new_tokens}")
        summary["transformers"] = {k: round(v, 3) for k, v in hf.items() if isinstance(v, float)}
        summary["ratios"] = {k: round(ours[k] / hf[k], 3) for k in ("prefill_tok_s", "decode_tok_s", "peak_rss_mb")}
        summary["greedy_agree_prefix"] = agree
        summary["done"] = bool(summary["ratios"]["decode_tok_s"] >= 3 and summary["ratios"]["prefill_tok_s"] >= 1
                               and ours["peak_rss_mb"] < 1024)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
