"""lm.encoder with the real all-MiniLM-L6-v2 weights against recorded sentence-transformers vectors,
and lm.index with real embeddings (keyword-only and paraphrase matches)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bot.config import env_cache_dir
from lm import hub
from lm.encoder import Encoder, cosine
from lm.index import HybridIndex
from lm.quant import native_bf16

pytestmark = pytest.mark.integration

REFERENCE = Path(__file__).parent.parent / "data" / "minilm_reference.json"
# the dtypes `auto` may pick: fp32 everywhere, bf16 where the CPU multiplies bf16 natively
DEFAULT_DTYPES = ["fp32", "bf16"] if native_bf16() else ["fp32"]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return hub.pull("minilm-l6", env_cache_dir())


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], np.ndarray]:
    ref = json.loads(REFERENCE.read_text())
    return ref["sentences"], np.array(ref["vectors"], dtype=np.float32)


@pytest.mark.parametrize("dtype", [*DEFAULT_DTYPES, "auto"])
def test_matches_sentence_transformers(model_dir: Path, reference, dtype: str):
    sentences, expected = reference
    enc = Encoder.load(model_dir, dtype=dtype)
    assert enc.dim == 384 and enc.max_tokens == 256
    got = enc.encode(sentences, batch_size=8)
    cos = cosine(got, expected)
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.999, f"{dtype}: cosine {cos[worst]:.6f} on {sentences[worst][:60]!r}"


def test_long_inputs_are_truncated_to_256_tokens(model_dir: Path, reference):
    sentences, _ = reference
    enc = Encoder.load(model_dir, dtype="fp32")
    long = max(sentences, key=len)
    assert enc.count_tokens(long) > 256  # the reference set really exercises truncation
    assert len(enc.tokenize([long])[0]) == 256


def test_int8_is_available_but_lossy(model_dir: Path, reference):
    # int8 dynamic quantization is an option, never the default: it misses the 0.999 bound on MiniLM
    sentences, expected = reference
    cos = cosine(Encoder.load(model_dir, dtype="int8").encode(sentences), expected)
    assert cos.mean() > 0.9


CORPUS = {
    1: "Wearing face masks in public reduces the spread of respiratory infections.",
    2: "The museum opens at nine in the morning and closes at six.",
    3: "Our quarterly revenue grew by twelve percent compared with last year.",
    4: "Error code QX-7731 means the sensor firmware must be updated.",
    5: "Regular exercise improves sleep quality and lowers blood pressure.",
    6: "The train to Amsterdam leaves from platform four.",
    7: "Children should drink water instead of sugary sodas.",
    8: "The recipe needs two eggs, flour, butter and a pinch of salt.",
}


def test_hybrid_finds_keyword_and_paraphrase_matches(model_dir: Path, tmp_path: Path):
    enc = Encoder.load(model_dir)
    idx = HybridIndex(tmp_path / "scope", enc.dim)
    ids = list(CORPUS)
    idx.add(ids, enc.encode([CORPUS[i] for i in ids]), [CORPUS[i] for i in ids])
    # a paraphrase sharing no content word with chunk 1, plus a code only chunk 4 contains
    query = "Do coverings over the nose and mouth stop viruses from spreading? Also what is QX-7731?"
    q = enc.encode([query])[0]
    dense = [i for i, _ in idx.search(q, query, k=2, mode="dense")]
    sparse = [i for i, _ in idx.search(q, query, k=2, mode="bm25")]
    hybrid = [i for i, _ in idx.search(q, query, k=2)]
    assert dense[0] == 1  # the paraphrase is found by meaning
    assert sparse[0] == 4  # the code is found by keyword
    assert set(hybrid) == {1, 4}


FAQ = """Backup FAQ

Q: How often are the backups taken?

A: Every night at two. They are kept for thirty days.

Q: Where are the backups stored?

A: On the tape library in building C.
"""


def test_an_faq_question_line_is_joined_to_its_answer_in_the_evidence(model_dir: Path):
    """The user's question matches the FAQ's own question line best; the evidence must hold the answer with it."""
    from bot.text.evidence import Passage, asks, select

    enc = Encoder.load(model_dir)
    passage = Passage(1, "faq.txt", None, None, FAQ, 1.0, dense=0.5)
    best = select("How often are backups taken?", [passage], enc.encode, {}, n=3)
    assert best[0].text == "Q: How often are the backups taken? A: Every night at two."
    assert best[0].before == "Backup FAQ"
    assert all(not asks(e.text) or " A: " in e.text for e in best)  # no bare question line is evidence
    assert asks("Q: My tar doesn't recognize .tar.xz files.") and asks("Is it free?")
    assert not asks("A: Every night at two.") and not asks("Quality: high.")
