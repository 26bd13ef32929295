"""Embedding speed: our encoder (lm.encoder) against sentence-transformers on the COVID-QA chunks.

    python -m bench.embed --limit 600                                  # ours only: chunks/s
    python -m bench.embed --limit 600 --vs-sentence-transformers \\
        --st-python /tmp/st/bin/python                                # + the peer on the same chunks

Each COVID-QA paper is cut into ~180-word chunks with a 30-word overlap (2,381 chunks in all). The peer
runs in a child process (its own venv, same batch size and thread count) on exactly the same chunks in
the same run; we report the speed ratio and the cosine between the two sets of vectors. Timings exclude
model loading and follow one warm-up batch on both sides; the two take turns on slices of chunks so
that a shared machine's drifting load falls on both alike. Prints a table and a final JSON line.

`--record-reference PATH` instead embeds a fixed set of test sentences with the peer and writes them as
the reference vectors of tests/integration/test_encoder_real.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bot.config import env_cache_dir
from lm import hub
from lm.encoder import Encoder, cosine

COVIDQA = Path(__file__).resolve().parents[2] / "shared" / "eval" / "covidqa.json"  # ../shared beside the checkout

# The peer, run by another interpreter as a small server: after loading it answers one JSON request per
# stdin line ({"texts": [...], "out": path}) with the encode time, so both sides can be timed in turns.
PEER = r"""
import json, sys, time
import numpy as np, torch
cfg = json.loads(sys.stdin.readline())
torch.set_num_threads(cfg["threads"])
import sentence_transformers
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(cfg["model_dir"], device="cpu")
model.max_seq_length = cfg["max_seq_length"]
kw = dict(batch_size=cfg["batch_size"], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
print(json.dumps({"sentence_transformers": sentence_transformers.__version__, "torch": torch.__version__,
                  "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    t0 = time.perf_counter()
    vecs = model.encode(req["texts"], **kw)
    seconds = time.perf_counter() - t0
    np.save(req["out"], np.asarray(vecs, dtype=np.float32))
    print(json.dumps({"seconds": seconds}), flush=True)
"""


class Peer:
    """sentence-transformers in a child process (its own venv), asked to encode one slice at a time."""

    def __init__(self, st_python: str, model_dir: Path, batch_size: int, threads: int, max_seq_length: int):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.tmp = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen([st_python, "-c", PEER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(Path(self.tmp.name) / "stderr", "w"), text=True, env=env)
        self.info = self._ask({"model_dir": str(model_dir), "batch_size": batch_size, "threads": threads,
                               "max_seq_length": max_seq_length})

    def _ask(self, req: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = (Path(self.tmp.name) / "stderr").read_text()[-2000:]
            raise SystemExit(f"sentence-transformers peer failed:\n{err}")
        return json.loads(line)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, float]:
        out = Path(self.tmp.name) / "vecs.npy"
        seconds = self._ask({"texts": texts, "out": str(out)})["seconds"]
        return np.load(out), seconds

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.tmp.cleanup()


def chunk_words(text: str, size: int = 180, overlap: int = 30) -> list[str]:
    """Cut on word boundaries into `size`-word windows that overlap by `overlap` words."""
    words = text.split()
    step = size - overlap
    return [" ".join(words[s:s + size]) for s in range(0, max(len(words) - overlap, 1), step)]


def covidqa_chunks(path: Path = COVIDQA, limit: int | None = None) -> list[str]:
    data = json.loads(path.read_text())["data"]
    chunks = [c for paper in data for c in chunk_words(paper["paragraphs"][0]["context"])]
    return chunks[:limit] if limit else chunks


def st_model_dir(src: Path, into: Path) -> Path:
    """A sentence-transformers directory (modules.json, pooling, normalize) around the hub's 4 files."""
    into.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        os.symlink((src / name).resolve(), into / name)
    (into / "1_Pooling").mkdir()
    shutil.copy(src / "pooling_config.json", into / "1_Pooling" / "config.json")
    (into / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (into / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    (into / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]"}))
    return into


def compare(enc: Encoder, peer: Peer | None, chunks: list[str], batch_size: int,
            slice_size: int) -> tuple[np.ndarray, float, np.ndarray | None, float]:
    """Encode slice by slice, ours and the peer in turns (the order swapping each slice), so that the load
    of a shared machine, which drifts over minutes, falls on both sides alike."""
    enc.encode(chunks[:batch_size], batch_size=batch_size)  # warm-up, both sides
    if peer is not None:
        peer.encode(chunks[:batch_size])
    ours, theirs, t_ours, t_theirs = [], [], 0.0, 0.0
    for n, start in enumerate(range(0, len(chunks), slice_size)):
        part = chunks[start:start + slice_size]
        for side in ((0, 1) if n % 2 == 0 else (1, 0)):
            if side == 0:
                t0 = time.perf_counter()
                ours.append(enc.encode(part, batch_size=batch_size))
                t_ours += time.perf_counter() - t0
            elif peer is not None:
                vecs, sec = peer.encode(part)
                theirs.append(vecs)
                t_theirs += sec
    return np.concatenate(ours), t_ours, (np.concatenate(theirs) if theirs else None), t_theirs


def peer_python(args: argparse.Namespace) -> str | None:
    if args.st_python:
        return args.st_python
    if importlib.util.find_spec("sentence_transformers") is not None:
        return sys.executable
    return None


# ------------------------------------------------------------------------------ reference sentences

def reference_sentences() -> list[str]:
    """~20 varied inputs for the integration test: short, long (> 256 tokens), unicode, code, empty."""
    paper = json.loads(COVIDQA.read_text())["data"][0]["paragraphs"][0]["context"].split()
    return [
        "",
        "a",
        "   \n\t  ",
        "Hello world.",
        "The quick brown fox jumps over the lazy dog.",
        "How do I reset my password?",
        "What are the symptoms of COVID-19?",
        "SARS-CoV-2 binds to the ACE2 receptor through its spike glycoprotein.",
        "The cat sat on the mat.",
        "A feline was resting on the rug.",
        "URGENT: SERVER DOWN IN US-EAST-1!!! Call +1 (555) 010-9999 now.",
        "Café au lait coûte 3,50 € à Paris — naïve façade, déjà vu.",
        "Die Würde des Menschen ist unantastbar.",
        "Москва — столица России.",
        "東京は日本の首都です。",
        "I love this 😍🔥 so much!!!",
        "∑ᵢ xᵢ² ≥ 0 for all real xᵢ; α + β = γ.",
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
        "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days' ORDER BY id;",
        "See https://example.com/docs?id=42#install for details; v1.2.3 was released on 2024-05-01.",
        " ".join(paper[:90]),  # ~ 130 tokens
        " ".join(paper[100:400]),  # > 256 tokens: truncated
        " ".join(paper[400:1200]),  # far over 256 tokens
    ]


def reference_json(ref: dict) -> str:
    """Readable JSON: one sentence and one vector per line."""
    head = {k: v for k, v in ref.items() if k not in ("sentences", "vectors")}
    lines = [json.dumps(head, ensure_ascii=False)[:-1] + ","]
    lines.append('"sentences": [\n' + ",\n".join(json.dumps(t, ensure_ascii=False) for t in ref["sentences"]) + "],")
    lines.append('"vectors": [\n' + ",\n".join(json.dumps(v) for v in ref["vectors"]) + "]}")
    return "\n".join(lines) + "\n"


def record_reference(args: argparse.Namespace, model_dir: Path, st_dir: Path) -> None:
    st_python = peer_python(args)
    if st_python is None:
        raise SystemExit("recording needs sentence-transformers: pass --st-python /tmp/st/bin/python")
    texts = reference_sentences()
    source = (f"the sentence-transformers directory {Path(args.st_model_dir).name!r}" if args.st_model_dir
              else "the hub's minilm-l6 files")
    peer = Peer(st_python, st_dir, 64, args.threads or 2, 256)
    vecs, _ = peer.encode(texts)
    info = peer.info
    peer.close()
    out = {
        "README": (f"Reference embeddings of all-MiniLM-L6-v2 made once with sentence-transformers "
                   f"{info['sentence_transformers']} (torch {info['torch']}, CPU, fp32, max_seq_length 256, "
                   f"normalize_embeddings=True) loaded from {source}, by `python -m bench.embed "
                   f"--record-reference PATH --st-python /tmp/st/bin/python [--st-model-dir DIR]`; "
                   f"rounded to 6 decimals."),
        "model": "minilm-l6",
        "max_seq_length": 256,
        "sentences": texts,
        "vectors": [[round(float(x), 6) for x in row] for row in vecs],
    }
    Path(args.record_reference).write_text(reference_json(out))
    print(f"wrote {len(texts)} reference vectors to {args.record_reference}")


# ------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="use only the first N chunks")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores available)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    ap.add_argument("--slice", type=int, default=256, help="chunks per turn when both sides take turns")
    ap.add_argument("--vs-sentence-transformers", action="store_true", help="also run the peer")
    ap.add_argument("--st-python", default=None,
                    help="interpreter with sentence-transformers (e.g. /tmp/st/bin/python)")
    ap.add_argument("--st-model-dir", default=None,
                    help="a full sentence-transformers model directory (default: built around the hub files)")
    ap.add_argument("--model", default="minilm-l6", help="hub name or model directory")
    ap.add_argument("--record-reference", default=None, help="write peer vectors of the test sentences here")
    args = ap.parse_args(argv)

    model_dir = hub.resolve(args.model, env_cache_dir())
    with tempfile.TemporaryDirectory() as tmp:
        st_dir = Path(args.st_model_dir) if args.st_model_dir else st_model_dir(model_dir, Path(tmp) / "st")
        if args.record_reference:
            record_reference(args, model_dir, st_dir)
            return
        enc = Encoder.load(model_dir, dtype=args.dtype, threads=args.threads)
        chunks = covidqa_chunks(limit=args.limit)
        peer = None
        if args.vs_sentence_transformers:
            st_python = peer_python(args)
            if st_python is None:
                print("sentence-transformers is not importable here; create a separate venv and point at it:\n"
                      "  python3.11 -m venv /tmp/st && /tmp/st/bin/pip install torch==2.13.0 "
                      "sentence-transformers\n  python -m bench.embed --vs-sentence-transformers "
                      "--st-python /tmp/st/bin/python", file=sys.stderr)
            else:
                peer = Peer(st_python, st_dir, args.batch_size, enc.threads, enc.max_tokens)
        try:
            ours, t_ours, theirs, t_st = compare(enc, peer, chunks, args.batch_size, args.slice)
        finally:
            if peer is not None:
                peer.close()

    n_tok = [len(ids) for ids in enc.tokenize(chunks)]
    result = {"bench": "embed", "chunks": len(chunks), "batch_size": args.batch_size, "threads": enc.threads,
              "dtype": enc.dtype, "mean_tokens": round(float(np.mean(n_tok)), 1),
              "truncated": sum(n == enc.max_tokens for n in n_tok), "ours_s": round(t_ours, 3),
              "ours_chunks_per_s": round(len(chunks) / t_ours, 2)}
    rows = [(f"ours (lm.encoder, {enc.dtype})", t_ours, "")]
    if peer is not None and theirs is not None:
        cos = cosine(ours, theirs)
        result.update({"st_s": round(t_st, 3), "st_chunks_per_s": round(len(chunks) / t_st, 2),
                       "speedup_vs_st": round(t_st / t_ours, 2),
                       "cos_mean": round(float(cos.mean()), 6), "cos_min": round(float(cos.min()), 6),
                       "st_version": peer.info["sentence_transformers"], "st_threads": peer.info["threads"]})
        rows[0] = (rows[0][0], t_ours, f"{result['speedup_vs_st']:.2f}x")
        rows.append((f"sentence-transformers {peer.info['sentence_transformers']}", t_st, "1.00x"))

    print(f"{len(chunks)} COVID-QA chunks (mean {result['mean_tokens']} tokens, {result['truncated']} truncated "
          f"to {enc.max_tokens}), batch {args.batch_size}, {enc.threads} threads, turns of {args.slice} chunks")
    print(f"{'encoder':<40} {'seconds':>8} {'chunks/s':>9} {'vs ST':>6}")
    for name, sec, ratio in rows:
        print(f"{name:<40} {sec:>8.2f} {len(chunks) / sec:>9.1f} {ratio:>6}")
    if "cos_mean" in result:
        print(f"cosine ours vs sentence-transformers: mean {result['cos_mean']:.6f}, min {result['cos_min']:.6f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
