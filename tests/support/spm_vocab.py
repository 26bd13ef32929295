"""SentencePiece vocabularies for tests: a tiny BPE model trained with the `sentencepiece` library (the reference
implementation of Llama 2 / Mistral / Gemma / Phi-3 tokenization), its tables written as a GGUF header holds them
(llama.cpp's convert_hf_to_gguf `_create_vocab_sentencepiece`), and the reverse: a SentencePiece model built from a
GGUF's own tables, to check a real file's tokenizer against SentencePiece itself."""

from __future__ import annotations

import io

from tests.support.tiny_gguf import CORPUS

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPM_CORPUS = CORPUS + [
    "Numbers like 2024, 3.14159 and 1,000,000 appear; tabs\tand  double  spaces too.",
    "Ünïcödé: Grüße aus Köln, ça va? Señor, mañana. Ελληνικά και русский текст.",
    "    indented code\n        more indented\n\n\nthree newlines above",
] * 3


def train_spm(vocab_size: int = 400, add_dummy_prefix: bool = True):
    """A SentencePieceProcessor for a BPE model trained on SPM_CORPUS, with byte fallback, split digits, no
    normalisation (as Llama's and Gemma's), a user-defined piece and two control pieces."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_CORPUS), model_writer=out, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix, character_coverage=0.995, user_defined_symbols=["<tool>"],
        control_symbols=["<start_of_turn>", "<end_of_turn>", "<|fin|>"], unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        allow_whitespace_only_pieces=True, minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=out.getvalue())


def spm_metadata(sp, add_dummy_prefix: bool, chat_template: str | None = None) -> dict:
    """The tokenizer part of a GGUF header for `sp`, as llama.cpp's converter writes it: pieces, scores, token
    types; user-defined pieces spelled with spaces (llama.cpp matches them in the raw text)."""
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        kind = (UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else UNUSED if sp.is_unused(i)
                else BYTE if sp.is_byte(i) else NORMAL)
        if kind == NORMAL and piece in ("<tool>",):
            kind, piece = USER_DEFINED, piece.replace("\u2581", " ")
        tokens.append(piece)
        scores.append(sp.get_score(i))
        types.append(kind)
    meta = {"general.architecture": "llama", "tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": sp.bos_id(), "tokenizer.ggml.eos_token_id": sp.eos_id(),
            "tokenizer.ggml.unknown_token_id": sp.unk_id(), "tokenizer.ggml.add_space_prefix": add_dummy_prefix}
    if chat_template:
        meta["tokenizer.chat_template"] = chat_template
    return meta


def spm_from_gguf(meta: dict):
    """A SentencePiece BPE model made of a GGUF's own pieces, scores and types (user-defined pieces spelled with
    U+2581 again, as the original model spells them): SentencePiece's own tokenization of that vocabulary."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.BPE
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.vocab_size = len(meta["tokenizer.ggml.tokens"])
    model.trainer_spec.unk_id = int(meta.get("tokenizer.ggml.unknown_token_id", 0))
    model.trainer_spec.bos_id = int(meta["tokenizer.ggml.bos_token_id"])
    model.trainer_spec.eos_id = int(meta["tokenizer.ggml.eos_token_id"])
    model.trainer_spec.pad_id = int(meta.get("tokenizer.ggml.padding_token_id", -1))
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    kinds = {NORMAL: pb.ModelProto.SentencePiece.NORMAL, UNKNOWN: pb.ModelProto.SentencePiece.UNKNOWN,
             CONTROL: pb.ModelProto.SentencePiece.CONTROL, USER_DEFINED: pb.ModelProto.SentencePiece.USER_DEFINED,
             UNUSED: pb.ModelProto.SentencePiece.UNUSED, BYTE: pb.ModelProto.SentencePiece.BYTE}
    for token, score, kind in zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"],
                                  meta["tokenizer.ggml.token_type"], strict=True):
        piece = model.pieces.add()
        piece.piece = token.replace(" ", "\u2581") if kind == USER_DEFINED else token
        piece.score, piece.type = score, kinds[kind]
    return spm.SentencePieceProcessor(model_proto=model.SerializeToString())
