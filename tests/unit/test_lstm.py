"""lm.lstm: the char-rnn learns a tiny corpus through lm.train and generates it; the sampler's filters."""

from __future__ import annotations

import pytest
import torch

from lm.load import load_model_dir
from lm.lstm import LSTMLM, LSTMConfig, sample_next
from lm.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def test_lstm_learns_and_generates(tmp_path):
    (tmp_path / "abc.txt").write_text("abcdefgh" * 400)
    summary = train(TrainConfig(mode="scratch", arch="lstm", data=str(tmp_path / "abc.txt"), out_dir=str(tmp_path / "m"),
                                char=True, n_layers=1, dim=32, block_size=16, batch_size=8, steps=80, lr=1e-2,
                                warmup=5, eval_interval=0, eval_batches=2, progress=False))
    assert summary["status"] == "done" and summary["val_loss"] < 0.1
    model, tok, _ = load_model_dir(tmp_path / "m", tmp_path)
    assert isinstance(model, LSTMLM)
    prompt = torch.tensor([tok.encode("abc")])
    out = model.generate(prompt, 13, temperature=0.0)
    assert tok.decode(out[0].tolist()) == "abcdefghabcdefgh"
    sampled = model.generate(prompt, 8, temperature=0.8, top_k=3, top_p=0.9,
                             generator=torch.Generator().manual_seed(0))
    assert tok.decode(sampled[0].tolist()) == "abcdefghabc"  # a confident model samples the pattern too


def test_lstm_forward_contract():
    m = LSTMLM(LSTMConfig(vocab_size=11, dim=8, n_layers=2)).init_weights(0)
    idx = torch.randint(0, 11, (3, 5))
    assert m(idx).shape == (3, 5, 11)
    tg = idx.clone()
    tg[:, :2] = -100
    full = torch.nn.functional.cross_entropy(m(idx)[:, 2:].reshape(-1, 11), idx[:, 2:].reshape(-1))
    torch.testing.assert_close(m(idx, tg), full)


def test_sampler_filters():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0, -1.0]])
    assert sample_next(logits, temperature=0.0).item() == 1
    gen = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, top_k=1, generator=gen).item() for _ in range(20)} == {1}
    top2 = {sample_next(logits, 5.0, top_k=2, generator=gen).item() for _ in range(200)}
    assert top2 == {1, 2}
    # top-p 0.5: token 1 alone holds ~0.64 of the mass, so nothing else survives
    assert {sample_next(logits, 1.0, top_p=0.5, generator=gen).item() for _ in range(50)} == {1}
    # top-p 0.9 keeps 1, 2 (0.88 together) and the token that crosses 0.9
    assert {sample_next(logits, 1.0, top_p=0.9, generator=gen).item() for _ in range(400)} == {1, 2, 3}
