"""CNN/DailyMail news for `docent eval summary`: SummEval's 100 test articles as a folder of one article a line.

    python -m bench.news_set                                # reads ../shared/eval/summeval/data.pkl
    python -m bench.news_set --source data.pkl --out DIR    # writes DIR (default ~/.cache/docent/eval/summeval-cnndm)
    docent eval summary --dataset ~/.cache/docent/eval/summeval-cnndm --limit 40

What it is: the 100 CNN/DailyMail test-set articles (87 Daily Mail, 13 CNN) that SummEval (Fabbri et al.,
2021; Yale-LILY/SummEval, MIT) chose for human evaluation, each with its original CNN/DailyMail highlights
as the reference (`references.txt`; SummEval's ten crowd-written references are left out) and the outputs
of the 16 systems SummEval rated (`summaries/M*.summary`, same order; M0 is SummEval's own LEAD-3). CNN/DM
is lead-heavy: lead-3 is the baseline to reach there, where on XSum (PyrXSum) it is weak. SummEval's
articles are shorter than CNN/DM's on average (100 to 542 words, none cut off).

Where it comes from: no PyPI or Debian package that we could find ships CNN/DailyMail-style articles with
their highlights (the commit that added this file lists what was searched), so the source is the unified copy in
neulab/BARTScore (Apache-2.0), `SUM/SummEval/data.pkl` at commit 248f511c, pinned below by its sha256; it
has to be placed at ../shared/eval/summeval/data.pkl (or passed with --source). The articles belong to CNN
and the Daily Mail and are distributed for research (Hermann et al., 2015); they are not committed here.

The copy is PTB-tokenized ("team 's 0-0 draw , '"); the clitic and punctuation spaces are closed again so
that the product reads ordinary prose, the same way for articles, references and system outputs. The pickle
is read with an unpickler that refuses every class: it holds only dicts, lists, strings and numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import re
from pathlib import Path

from bot.config import env_cache_dir

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "eval" / "summeval" / "data.pkl"
SHA256 = "008f1639a3352f0248cac88b74ff431c27287a027a888902ef425a26005f0acf"  # BARTScore 248f511c

# SummEval's model ids (its README) as file names: summaries/M22-bart.summary, ...
SYSTEMS = {"M0": "lead3", "M1": "neusum", "M2": "banditsum", "M5": "rnes", "M8": "pointer-generator",
           "M9": "fast-abs-rl", "M10": "bottom-up", "M11": "improve-abs", "M12": "unified-ext-abs",
           "M13": "rougesal", "M14": "multi-task", "M15": "closed-book-decoder", "M17": "t5",
           "M20": "gpt2-supervised", "M22": "bart", "M23": "pegasus"}

_DETOK = [(re.compile(r"\s+"), " "), (re.compile(r"`` ?"), '"'), (re.compile(r" ?''"), '"'),
          (re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", re.I), r"\1"),
          (re.compile(r" ([,.;:!?%)\]])"), r"\1"), (re.compile(r"([(\[$£]) "), r"\1")]


def detokenize(text: str) -> str:
    """PTB-tokenized text as prose: `` he did n't pay $ 5 ( really ) . '' becomes "he didn't pay $5 (really)."."""
    for pattern, repl in _DETOK:
        text = pattern.sub(repl, text)
    return text.strip()


class _PlainData(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # data.pkl needs no class; anything else is refused
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load(source: Path) -> dict:
    """BARTScore's SummEval dict, after checking the file is the pinned one."""
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{source}: sha256 {digest}, expected {SHA256} (BARTScore SUM/SummEval/data.pkl)")
    return _PlainData(io.BytesIO(data)).load()


def write_folder(items: dict, out: Path) -> int:
    """documents.txt, references.txt, ids.txt and summaries/*.summary, one article a line, sorted by id."""
    ids = sorted(items)
    (out / "summaries").mkdir(parents=True, exist_ok=True)

    def lines(name: Path, texts: list[str]) -> None:
        name.write_text("".join(detokenize(t) + "\n" for t in texts), encoding="utf-8")

    lines(out / "documents.txt", [items[i]["src"] for i in ids])
    lines(out / "references.txt", [items[i]["ref_summ"] for i in ids])
    (out / "ids.txt").write_text("".join(i + "\n" for i in ids), encoding="utf-8")
    for model, name in SYSTEMS.items():
        lines(out / "summaries" / f"{model}-{name}.summary", [items[i]["sys_summs"][model]["sys_summ"] for i in ids])
    return len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, default=SOURCE, help="BARTScore's SUM/SummEval/data.pkl")
    ap.add_argument("--out", type=Path, default=env_cache_dir() / "eval" / "summeval-cnndm")
    args = ap.parse_args()
    if not args.source.is_file():
        raise SystemExit(f"{args.source}: not found; place neulab/BARTScore's SUM/SummEval/data.pkl there "
                         "or pass --source")
    n = write_folder(load(args.source), args.out)
    print(f"wrote {n} CNN/DailyMail articles with their highlights and {len(SYSTEMS)} systems' summaries "
          f"to {args.out}")


if __name__ == "__main__":
    main()
