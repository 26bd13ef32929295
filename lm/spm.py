"""SentencePiece BPE vocabularies from GGUF (`tokenizer.ggml.model == "llama"`) as an HF `tokenizers` BPE.

A SentencePiece BPE model stores pieces and scores, not merges: it joins the adjacent pair whose joined piece has
the best score, as llama.cpp's SPM tokenizer does. A BPE whose merges are every split of every piece into two
pieces, ranked by the joined piece's score (then by its place in the vocabulary), makes the same choices, as
transformers' GGUF and SentencePiece converters build it. Around it:
- spaces are written as U+2581, with one prepended to each run of text when the file says
  `add_space_prefix` (after every special token too, as llama.cpp does); no other normalisation;
- characters outside the vocabulary fall back to their UTF-8 bytes, the `<0x..>` BYTE pieces;
- CONTROL pieces (<bos>, <start_of_turn>, ...) are special tokens, USER_DEFINED ones (Gemma's runs of spaces and
  newlines, HTML tags) are matched whole in the raw text; neither is ever the result of a merge, nor are BYTE,
  UNKNOWN and UNUSED pieces. As in llama.cpp, the space prefix also goes after a USER_DEFINED piece in the text,
  where SentencePiece itself adds none (only vocabularies with both differ: Gemma's has no space prefix).
"""

from __future__ import annotations

from tokenizers import Regex, decoders, models, normalizers
from tokenizers import Tokenizer as HFTokenizer

# gguf TokenType values (llama.cpp)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every (left, right) split of a NORMAL piece into two pieces of the vocabulary, best joined piece first."""
    index: dict[str, int] = {}
    for i, t in enumerate(tokens):
        index.setdefault(t, i)
    merges = []
    # pieces best first (score, then place), each one's splits longest left part first: already in rank order
    for i in sorted(range(len(tokens)), key=lambda i: (-scores[i], i)):
        piece = tokens[i]
        if types[i] != NORMAL or len(piece) < 2 or index[piece] != i:
            continue
        for cut in range(len(piece) - 1, 0, -1):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                merges.append((left, right))
    return merges


def spm_tokenizer(tokens: list[str], scores: list[float], types: list[int], add_space_prefix: bool) -> HFTokenizer:
    """The HF tokenizer of a GGUF's SentencePiece tables (see the module docstring)."""
    from lm.tokenizer import TokenizerError

    if len(scores) != len(tokens):
        raise TokenizerError(f"GGUF token tables are inconsistent: {len(tokens)} tokens, {len(scores)} scores")
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    unk = next((tokens[i] for i, t in enumerate(types) if t == UNKNOWN), None)
    if unk is None and "<unk>" in vocab:
        unk = "<unk>"
    try:
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=spm_merges(tokens, scores, types), unk_token=unk,
                                     fuse_unk=True, byte_fallback=True))
    except Exception as e:
        raise TokenizerError(f"GGUF SentencePiece tables are invalid: {e}") from e
    space = normalizers.Replace(Regex(" "), SPACE)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), space]) if add_space_prefix else space
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
    return tok  # Tokenizer.from_gguf adds the CONTROL and USER_DEFINED pieces, as for a byte-level BPE
