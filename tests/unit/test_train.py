"""lm.train / lm.data / lm.checkpoint: learning, exact resume, atomic checkpoints, SFT targets, model dirs."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lm import checkpoint as ckpt
from lm.config import ModelConfig
from lm.data import TextBatches, chat_examples, pad_batch, split_tokens
from lm.load import load_model_dir
from lm.model import Transformer
from lm.tokenizer import Tokenizer
from lm.train import TrainConfig, lr_at, main, train

CORPUS = "the quick brown fox jumps over the lazy dog. " * 120


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def tiny_cfg(tmp_path: Path, **kw) -> TrainConfig:
    data = tmp_path / "corpus.txt"
    if not data.exists():
        data.write_text(CORPUS)
    base = dict(mode="scratch", data=str(data), out_dir=str(tmp_path / "run"), char=True, n_layers=2, n_heads=2,
                dim=32, block_size=16, batch_size=8, steps=40, lr=3e-3, warmup=4, eval_interval=20,
                eval_batches=2, log_interval=5, ckpt_interval=0, progress=False, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_and_writes_loadable_model_dir(tmp_path):
    cfg = tiny_cfg(tmp_path, steps=60)
    summary = train(cfg)
    assert summary["status"] == "done" and summary["step"] == 60
    recs = read_metrics(Path(cfg.out_dir))
    steps = [r for r in recs if "step" in r and not r.get("summary")]
    assert {"step", "loss", "lr", "tokens_per_s", "eta_s"} <= set(steps[0])
    assert any("eval_loss" in r for r in steps)
    assert recs[-1]["summary"] is True
    first = steps[0]["loss"]
    assert first > 2.0  # about ln(vocab) at the start
    assert summary["val_loss"] < 0.5 * first
    # the output is a model directory that generates what it learned
    model, tok, meta = load_model_dir(cfg.out_dir, tmp_path)
    assert meta["status"] == "done" and meta["mode"] == "scratch"
    assert not (Path(cfg.out_dir) / ckpt.CHECKPOINT).exists()  # removed after a finished run
    ids = torch.tensor([tok.encode("e quick brown fo")])  # 16 tokens: the trained context
    with torch.no_grad():
        assert model(ids[:, :-1], ids[:, 1:]).item() < 0.5 * first


def _final_weights(out: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(out) / "model.safetensors"))


def test_resume_after_sigterm_equals_uninterrupted_run(tmp_path):
    full = tiny_cfg(tmp_path, out_dir=str(tmp_path / "a"), steps=24, dropout=0.1)
    train(full)

    # the same run, interrupted by a real SIGTERM after step 10
    def on_step(step: int) -> None:
        if step == 10:
            os.kill(os.getpid(), signal.SIGTERM)

    cut = tiny_cfg(tmp_path, out_dir=str(tmp_path / "b"), steps=24, dropout=0.1)
    s1 = train(cut, on_step=on_step)
    assert s1["status"] == "cancelled" and s1["step"] == 10
    state = ckpt.load_checkpoint(tmp_path / "b" / ckpt.CHECKPOINT)
    assert state["step"] == 10 and "optimizer" in state and state["rng"]
    assert not (tmp_path / "b" / "model.safetensors").exists()  # no model dir for an unfinished run

    s2 = train(tiny_cfg(tmp_path, out_dir=str(tmp_path / "b"), steps=24, dropout=0.1, resume=True))
    assert s2["status"] == "done" and s2["step"] == 24
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = lambda out: [(r["step"], r["loss"]) for r in read_metrics(out) if not r.get("summary")]  # noqa: E731
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_checkpoint_writes_are_atomic(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def crash_midway(tmp: Path) -> None:
        tmp.write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ckpt.atomic_write(path, crash_midway)
    assert ckpt.load_checkpoint(path)["step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # and the temp file is gone
    # a temp file left by a killed process does not confuse loading or the next save
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"garbage")
    assert torch.equal(ckpt.load_checkpoint(path)["w"], torch.ones(3))
    ckpt.save_checkpoint(path, {"step": 2})
    assert ckpt.load_checkpoint(path)["step"] == 2
    with pytest.raises(ckpt.CheckpointError, match="unreadable"):
        ckpt.load_checkpoint(tmp_path / ".checkpoint.pt.abc123.tmp")


def test_lr_schedule_warmup_cosine_constant():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-3 / 11)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(5.5e-4)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))
    const = TrainConfig(steps=100, warmup=10, lr=1e-3, schedule="constant")
    assert lr_at(99, const) == 1e-3


def test_text_batches_split_and_determinism():
    ids = np.arange(1000, dtype=np.uint16)
    tr, va = split_tokens(ids)
    assert len(tr) == 900 and tr[-1] == 899 and va[0] == 900
    b0 = TextBatches(tr, 8, 4, seed=1, rank=0)
    x, y = b0.get(3)
    assert x.shape == (4, 8) and torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y, x + 1)
    assert torch.equal(b0.get(3)[0], x)  # a function of the step: resumable
    assert not torch.equal(b0.get(4)[0], x)
    assert not torch.equal(TextBatches(tr, 8, 4, seed=1, rank=1).get(3)[0], x)  # ranks read different windows


def test_chat_examples_targets_follow_the_assistant_mask():
    tok = Tokenizer.char(["abcdefghijklmnopqrstuvwxyz ?.!\nABCDEFGHIJKLMNOPQRSTUVWXYZ"])
    convs = [
        [{"role": "system", "content": "be brief."}, {"role": "user", "content": "hi?"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "bye?"},
         {"role": "assistant", "content": "Bye."}],
        [{"role": "user", "content": "only a question?"}],  # nothing to learn: dropped
    ]
    examples = chat_examples(convs, tok, max_len=512)
    assert len(examples) == 1
    ids_full, mask = tok.render_chat(convs[0], add_generation_prompt=False)
    ids, targets = examples[0]
    assert ids == ids_full[:-1] and len(targets) == len(ids)
    for t, tg in enumerate(targets):
        if mask[t + 1]:
            assert tg == ids_full[t + 1]
        else:
            assert tg == -100
    learned = tok.decode([t for t in targets if t != -100])
    assert "Hello!" in learned and "Bye." in learned and "hi?" not in learned
    # truncation keeps lengths <= max_len
    short = chat_examples(convs[:1], tok, max_len=40)
    assert all(len(i) <= 40 and len(t) == len(i) for i, t in short)
    x, y = pad_batch([examples[0], (ids[:5], targets[:5])], pad_id=0)
    assert x.shape == y.shape == (2, len(ids))
    assert (y[1, 5:] == -100).all() and (x[1, 5:] == 0).all()


def test_train_on_chat_jsonl(tmp_path):
    data = tmp_path / "chats.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"what is {i}?"},
                           {"role": "assistant", "content": f"it is {i}."}]} for i in range(12)]
    data.write_text("\n".join(json.dumps(x) for x in lines))
    summary = train(tiny_cfg(tmp_path, data=str(data), block_size=64, steps=6, batch_size=4, eval_interval=0))
    assert summary["status"] == "done" and summary["val_loss"] is not None


def test_model_dir_round_trip_same_logits(tmp_path):
    tok = Tokenizer.char([CORPUS])
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64,
                      max_seq_len=32)
    model = Transformer(cfg).init_weights(3).eval()
    ckpt.save_model_dir(tmp_path / "m", model, cfg, tok, {"note": "x"})
    loaded, tok2, meta = load_model_dir(tmp_path / "m", tmp_path)
    idx = torch.tensor([tok.encode("the lazy dog")])
    assert tok2.encode("the lazy dog") == idx[0].tolist()
    with torch.no_grad():
        assert torch.equal(model(idx), loaded(idx))
    assert meta == {"note": "x"}
    assert loaded.output.weight is loaded.tok_embeddings.weight  # still tied after loading
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.endswith(".tmp")]


def test_bad_inputs_get_clear_messages(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), "--char",
                 "--no-progress"]) == 2
    assert "no such data file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--mode", "lora", "--data", "x.txt"])  # LoRA without a base
    assert "needs --base" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user"}]}\n')
    assert main(["--data", str(bad), "--out", str(tmp_path / "o2"), "--char", "--no-progress"]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    with pytest.raises(ckpt.CheckpointError, match="not a model directory"):
        load_model_dir(tmp_path, tmp_path)
