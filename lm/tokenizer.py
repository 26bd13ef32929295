"""Tokenizers and chat templates: text <-> token ids, conversations -> (ids, loss mask).

One `Tokenizer` class over HF `tokenizers`, built four ways:
- `from_gguf`: the tokenizer a GGUF file describes, and its Jinja `tokenizer.chat_template`: a byte-level BPE
  (`tokenizer.ggml.model` "gpt2": tokens, merges, the `tokenizer.ggml.pre` pre-tokenizer name) or a
  SentencePiece BPE ("llama": Llama 2, Mistral, Gemma, Phi-3: tokens, scores, token types with `<0x..>` byte
  tokens), rebuilt as an HF BPE with byte fallback whose merges come from the scores (lm/spm.py);
- `from_file`: a `tokenizer.json` (+ optional HF-style `tokenizer_config.json`) written by `save`;
- `train_bpe`: a byte-level BPE trained on a corpus (models trained from scratch);
- `char`: one id per character of a corpus, plus special tokens (the smallest possible tokenizer).

Chat templates are rendered with jinja2 in a sandbox, with HF's conventions (`messages`,
`add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`), so the prompt text is exactly what the
model was trained on. Special tokens are added as single ids, so encoding the rendered string is correct; the
loss mask is found by rendering prefixes of the conversation and marking where each assistant turn's content
(and its closing end-of-turn token) lands, which works for any template, not just ChatML.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

# gguf TokenType values (llama.cpp): NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, UNUSED=5, BYTE=6
CONTROL, USER_DEFINED = 3, 4

DEFAULT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# end-of-turn / end-of-text tokens that stop generation when the vocabulary has them
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>")

# Used when a model ships no template (models trained from scratch): plain ChatML.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# GPT-4-style split used by Qwen2 and Llama 3 (Llama 3 groups digits by up to three, Qwen2 splits each digit)
_SPLIT_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_LLAMA3 = _SPLIT_QWEN2.replace(r"\p{N}|", r"\p{N}{1,3}|", 1)
LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3")


class TokenizerError(ValueError):
    pass


def _pre_tokenizer(name: str):
    """The HF pre-tokenizer matching llama.cpp's `tokenizer.ggml.pre` name."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name in ("default", "gpt2", "gpt-2"):
        return byte_level
    if name == "smollm":  # SmolLM/SmolLM2: every digit is its own token, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if name == "qwen2" or name in LLAMA3_PRE:
        pattern = _SPLIT_QWEN2 if name == "qwen2" else _SPLIT_LLAMA3
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    raise TokenizerError(f"unsupported pre-tokenizer {name!r}; docent knows smollm, qwen2, llama-bpe, gpt2/default")


def _token_text(value: Any) -> str | None:
    """A special token in tokenizer_config.json is a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
    raise TokenizerError(f"chat template refused the conversation: {message}")


@lru_cache(maxsize=16)
def compile_template(source: str):
    """A sandboxed jinja2 template with HF's chat-template environment (trim_blocks, lstrip_blocks, helpers)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise TokenizerError(f"chat template does not compile: {e}") from e


def _check_messages(messages: Sequence[dict]) -> None:
    if not isinstance(messages, (list, tuple)):
        raise TokenizerError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TokenizerError(f"message {i} must be a dict with string 'role' and 'content', got {m!r:.80}")


def _bpe_tokenizer(tokens: list[str], merges: list[str], pre: str, llama3: bool) -> HFTokenizer:
    """The byte-level BPE of a GGUF's tables; Llama 3's ignores the merges for a pre-token in the vocabulary, as
    its tokenizer.json and llama.cpp do."""
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a duplicate keeps its first id, as llama.cpp does
    try:
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False,
                                     ignore_merges=llama3))
    except Exception as e:
        raise TokenizerError(f"GGUF BPE tables are invalid: {e}") from e
    tok.pre_tokenizer = _pre_tokenizer(pre)
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    return tok


class Tokenizer:
    def __init__(self, tok: HFTokenizer, *, bos_token: str | None = None, eos_token: str | None = None,
                 chat_template: str | None = None, add_bos: bool = False, add_eos: bool = False,
                 id_to_token: list[str] | None = None, extra_stop: Sequence[int] = ()):
        self._tok = tok
        self.bos_token, self.eos_token = bos_token, eos_token
        self.add_bos, self.add_eos = add_bos, add_eos
        self.own_template = chat_template  # None when the model shipped none
        self.chat_template: str = chat_template or CHATML_TEMPLATE
        self._id_to_token = id_to_token  # GGUF tables may hold duplicates the tokenizers vocab cannot
        self.vocab_size: int = len(id_to_token) if id_to_token else tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = self._require(bos_token) if bos_token else None
        self.eos_id = self._require(eos_token) if eos_token else None
        stops = [self.eos_id] + [tok.token_to_id(t) for t in STOP_TOKENS] + list(extra_stop)
        stops.append(self._template_end_of_turn())
        self.stop_ids: list[int] = sorted({i for i in stops if i is not None})
        # the fallback template's end of turn, where the vocabulary has no such token (a base model): a stop string
        self.stop_strings: tuple[str, ...] = () if chat_template or tok.token_to_id("<|im_end|>") is not None \
            else ("<|im_end|>",)

    def _template_end_of_turn(self) -> int | None:
        """The special token the chat template closes an assistant turn with (Gemma's <end_of_turn>, Llama 3's
        <|eot_id|>, Phi-3's <|end|>, ...), found by rendering one: generation stops there."""
        if not self.own_template:
            return None
        answer = "Zq7 answer"
        try:
            text = self._render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}], False)
        except Exception:  # a template that wants other roles or arguments: no stop token from it
            return None
        at = text.find(answer)
        if at < 0:
            return None
        ids = self._tok.encode(text[at + len(answer):].lstrip(), add_special_tokens=False).ids
        if ids and self._tok.id_to_token(ids[0]) in {t.content for t in self._specials()}:
            return ids[0]
        return None

    def _specials(self) -> list[AddedToken]:
        return [t for t in self._tok.get_added_tokens_decoder().values() if t.special]

    def _require(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise TokenizerError(f"special token {token!r} is not in the vocabulary")
        return i

    # ---------------------------------------------------------------- constructors

    @classmethod
    def from_gguf(cls, path_or_metadata: str | Path | dict[str, Any], prebuilt: str | None = None) -> Tokenizer:
        """Rebuild the tokenizer a GGUF file describes. `prebuilt`: what `serialized()` returned for the same file
        (lm.runtime keeps it with the converted weights: Gemma 3's 262,144 pieces take seconds to rebuild)."""
        if isinstance(path_or_metadata, dict):
            meta = path_or_metadata
        else:
            from lm.gguf import read_metadata

            meta = read_metadata(Path(path_or_metadata))
        kind = meta.get("tokenizer.ggml.model")
        if kind not in ("gpt2", "llama"):
            raise TokenizerError(f"tokenizer model {kind!r} is not supported; docent reads byte-level BPE ('gpt2') "
                                 "and SentencePiece BPE ('llama')")
        tokens: list[str] = list(meta.get("tokenizer.ggml.tokens") or [])
        types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
        if not tokens or len(types) != len(tokens):
            raise TokenizerError(f"GGUF token tables are inconsistent: {len(tokens)} tokens, {len(types)} token types")
        pre = meta.get("tokenizer.ggml.pre", "default")
        llama3 = pre in LLAMA3_PRE
        if prebuilt is not None:
            tok = HFTokenizer.from_str(prebuilt)
        elif kind == "llama":
            from lm.spm import spm_tokenizer

            tok = spm_tokenizer(tokens, list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)), types,
                                bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
        else:
            tok = _bpe_tokenizer(tokens, list(meta.get("tokenizer.ggml.merges") or []), pre, llama3)

        def special_id(key: str) -> int | None:
            v = meta.get(f"tokenizer.ggml.{key}_token_id")
            return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

        bos, eos, eot, eom = special_id("bos"), special_id("eos"), special_id("eot"), special_id("eom")
        control = {i for i, t in enumerate(types) if t == CONTROL} | {i for i in (bos, eos, eot, eom) if i is not None}
        # CONTROL tokens are special (skipped by decode(skip_special=True)); USER_DEFINED ones are plain text
        # that must still never be split.
        if prebuilt is None:
            tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in sorted(control)])
            tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                            for i, t in enumerate(types) if t == USER_DEFINED and i not in control])
        # llama.cpp's defaults where the file says nothing: BOS for SentencePiece and Llama 3 vocabularies
        return cls(tok, bos_token=tokens[bos] if bos is not None else None,
                   eos_token=tokens[eos] if eos is not None else None,
                   chat_template=meta.get("tokenizer.chat_template"),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama" or llama3)),
                   add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
                   id_to_token=tokens, extra_stop=[i for i in (eot, eom) if i is not None])

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """A `tokenizer.json` (or a directory holding one), with `tokenizer_config.json` beside it if present."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{path}: no such tokenizer file")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:
            raise TokenizerError(f"{path}: not a valid tokenizer.json: {e}") from e
        cfg_path = path.with_name("tokenizer_config.json")
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        return cls(tok, bos_token=_token_text(cfg.get("bos_token")), eos_token=_token_text(cfg.get("eos_token")),
                   chat_template=cfg.get("chat_template"), add_bos=bool(cfg.get("add_bos_token", False)),
                   add_eos=bool(cfg.get("add_eos_token", False)))

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] | None = None,
                  pre: str = "smollm") -> Tokenizer:
        """Train a byte-level BPE on `texts`; special tokens get the first ids, in the order given."""
        specials = list(special_tokens if special_tokens is not None else DEFAULT_SPECIALS)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(specials):
            raise TokenizerError(f"vocab_size {vocab_size} is below the {len(alphabet)} byte tokens + "
                                 f"{len(specials)} special tokens a byte-level BPE needs")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = _pre_tokenizer(pre)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer)
        return cls(tok, eos_token=_default_eos(specials))

    @classmethod
    def char(cls, texts: Iterable[str], special_tokens: Sequence[str] | None = None,
             unk_token: str = "<unk>") -> Tokenizer:
        """One id per character seen in `texts` (specials first, then `unk_token`, then sorted characters)."""
        specials = list(special_tokens if special_tokens is not None else DEFAULT_SPECIALS)
        chars = sorted(set().union(*(set(t) for t in texts)))
        vocab: dict[str, int] = {}
        for t in [*specials, unk_token, *chars]:
            vocab.setdefault(t, len(vocab))
        tok = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
        tok.decoder = decoders.Fuse()  # join pieces without the spaces WordLevel would put between them
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in [*specials, unk_token]])
        return cls(tok, eos_token=_default_eos(specials))

    def serialized(self) -> str:
        """The HF tokenizer as JSON, for from_gguf(meta, prebuilt=...)."""
        return self._tok.to_str()

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json and an HF-style tokenizer_config.json (specials, flags, chat template)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / "tokenizer.json"))
        cfg = {"bos_token": self.bos_token, "eos_token": self.eos_token, "add_bos_token": self.add_bos,
               "add_eos_token": self.add_eos, "chat_template": self.own_template}
        (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
        return directory / "tokenizer.json"

    # ---------------------------------------------------------------- text <-> ids

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in it become their single ids. `add_special` adds the
        BOS/EOS the model's metadata asks for (SmolLM2 asks for neither)."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects a str, got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_special and self.add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if add_special and self.add_eos and self.eos_id is not None:
            ids = ids + [self.eos_id]
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_batch_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, (start, end) character offsets of each token) of each text; the tokens of one multi-byte
        character share its offsets."""
        return [(e.ids, list(e.offsets)) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        if self._id_to_token is not None:
            return self._id_to_token[i] if 0 <= i < len(self._id_to_token) else None
        return self._tok.id_to_token(i)

    def __len__(self) -> int:
        return self.vocab_size

    # ---------------------------------------------------------------- chat

    def _render(self, messages: Sequence[dict], add_generation_prompt: bool, **extra: Any) -> str:
        """The template's text; a template that refuses a system message (Mistral's, Gemma 2's) gets it folded into
        the first user message instead, as llama.cpp's chat templates do for such models."""
        try:
            return self._render_template(messages, add_generation_prompt, **extra)
        except TokenizerError:
            if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
                raise
            folded = {"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
            return self._render_template([folded, *messages[2:]], add_generation_prompt, **extra)

    def _render_template(self, messages: Sequence[dict], add_generation_prompt: bool, **extra: Any) -> str:
        import jinja2

        try:
            return compile_template(self.chat_template).render(
                messages=list(messages), add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "", **extra)
        except jinja2.TemplateError as e:
            raise TokenizerError(f"chat template failed: {e}") from e

    def render_prompt_text(self, messages: Sequence[dict], add_generation_prompt: bool = True, **extra: Any) -> str:
        """The conversation as the model's chat template writes it."""
        _check_messages(messages)
        return self._render(messages, add_generation_prompt, **extra)

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True,
                    **extra: Any) -> tuple[list[int], list[int]]:
        """(ids, mask): ids encode `render_prompt_text(messages)`; mask[i] is 1 on the tokens of assistant
        content and their closing end-of-turn token (what fine-tuning computes the loss on), 0 elsewhere."""
        _check_messages(messages)
        text = self._render(messages, add_generation_prompt, **extra)
        enc = self._tok.encode(text, add_special_tokens=False)
        spans = self._assistant_spans(messages, text, extra)
        # a token is trained on when its characters overlap an assistant span; both are sorted, so one sweep
        mask, j = [], 0
        for s, e in enc.offsets:  # character offsets into `text`
            while j < len(spans) and spans[j][1] <= s:
                j += 1
            mask.append(int(j < len(spans) and spans[j][0] < e))
        ids = enc.ids
        if self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            # a model that wants BOS gets it when the template wrote none (as llama.cpp adds it to a prompt)
            ids, mask = [self.bos_id, *ids], [0, *mask]
        return ids, mask

    def _assistant_spans(self, messages: Sequence[dict], text: str, extra: dict) -> list[tuple[int, int]]:
        """Character spans of `text` holding assistant content + end-of-turn token, found by rendering
        prefixes: the turn starts where `messages[:i]` + generation prompt and `messages[:i+1]` diverge."""
        stop_strings = [self._tok.id_to_token(i) for i in self.stop_ids]
        spans: list[tuple[int, int]] = []
        cursor = 0  # spans are searched left to right in `text`
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self._render(messages[:i], True, **extra)
            upto = self._render(messages[: i + 1], False, **extra)
            turn_start = _common_prefix_len(before, upto)
            if text.startswith(upto[:turn_start]):  # the usual case: rendering a longer conversation appends
                cursor = max(cursor, turn_start)
            content = m["content"]
            start = text.find(content, cursor)
            if start < 0:  # templates may strip surrounding whitespace
                content = content.strip()
                start = text.find(content, cursor)
            if start < 0:
                continue  # the template rewrote the content (e.g. dropped reasoning): nothing to train on
            end = start + len(content)
            # the closing end-of-turn token: a stop token right after the content (whitespace between is
            # allowed); an assistant turn without one is trained on its content alone
            after = end
            while after < len(text) and text[after].isspace():
                after += 1
            closing = next((t for t in stop_strings if t and text.startswith(t, after)), None)
            if closing:
                end = after + len(closing)
            if end > start:
                spans.append((start, end))
            cursor = end
        return spans


def _common_prefix_len(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # binary search on the longest shared prefix: slices compare in C, not char by char
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _default_eos(specials: list[str]) -> str | None:
    for t in ("<|endoftext|>", "<|im_end|>"):
        if t in specials:
            return t
    return specials[0] if specials else None
