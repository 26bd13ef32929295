"""lm.lora: frozen base, zero-init no-op, merge equivalence, adapter save/load, LoRA training end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lm import checkpoint as ckpt
from lm.config import ModelConfig
from lm.load import load_model_dir
from lm.lora import LoRAConfig, LoRALinear, apply_lora, load_lora_state_dict, lora_state_dict, merge_lora
from lm.model import Transformer
from lm.tokenizer import Tokenizer
from lm.train import TrainConfig, train

TEXT = "lora adapts a frozen model with a low rank update. " * 60


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def tiny(seed: int = 0) -> Transformer:
    cfg = ModelConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, max_seq_len=32)
    return Transformer(cfg).init_weights(seed).eval()


def randomize_b(model: torch.nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0, 0.05, generator=gen)


IDX = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(0))


def test_zero_init_adapter_leaves_outputs_unchanged():
    model = tiny()
    with torch.no_grad():
        before = model(IDX)
    apply_lora(model, LoRAConfig(rank=4, alpha=8), seed=0)
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 2 * 4  # wqkv, wo, w13, w2 in each of the 2 layers
    with torch.no_grad():
        assert torch.equal(model(IDX), before)


def test_only_adapter_parameters_train():
    model = tiny().train()
    apply_lora(model, LoRAConfig(rank=4, alpha=8), seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_a" in n or ".lora_b" in n for n in trainable)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # B starts at zero, so A only gets a gradient from the second step on
        loss = model(IDX[:, :-1], IDX[:, 1:])
        loss.backward()
        for n, p in model.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, n
        opt.step()
        opt.zero_grad()
    loss = model(IDX[:, :-1], IDX[:, 1:])
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in trainable)
    for n, p in model.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), n


def test_merged_weights_equal_adapter_forward():
    model = tiny()
    apply_lora(model, LoRAConfig(rank=4, alpha=8), seed=0)
    randomize_b(model)
    with torch.no_grad():
        adapted = model(IDX)
        assert not torch.allclose(adapted, tiny()(IDX))  # the adapter does something
        merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        torch.testing.assert_close(model(IDX), adapted, rtol=1e-5, atol=1e-5)


def test_adapter_state_dict_round_trip_and_shape_check():
    a = tiny()
    apply_lora(a, LoRAConfig(rank=4, alpha=8), seed=0)
    randomize_b(a)
    sd = lora_state_dict(a)
    assert sd and all(".lora_" in k for k in sd)
    b = tiny()
    apply_lora(b, LoRAConfig(rank=4, alpha=8), seed=5)
    load_lora_state_dict(b, sd)
    with torch.no_grad():
        assert torch.equal(a(IDX), b(IDX))
    c = tiny()
    apply_lora(c, LoRAConfig(rank=2, alpha=8))
    with pytest.raises(ValueError, match="shape"):
        load_lora_state_dict(c, sd)


def test_lora_version_dir_references_its_base(tmp_path):
    tok = Tokenizer.char([TEXT])
    base = tiny()
    base_dir = tmp_path / "base"
    ckpt.save_model_dir(base_dir, base, base.config, tok, {})
    apply_lora(base, LoRAConfig(rank=4, alpha=8), seed=0)
    randomize_b(base)
    ckpt.save_lora_dir(tmp_path / "v1", base, LoRAConfig(rank=4, alpha=8), str(base_dir), tok, {"v": 1})
    assert not (tmp_path / "v1" / "model.safetensors").exists()  # only the adapter is stored
    loaded, _, meta = load_model_dir(tmp_path / "v1", tmp_path)
    assert meta == {"v": 1}
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDX), base(IDX), rtol=1e-5, atol=1e-5)


def test_lora_training_run_keeps_base_and_saves_only_adapter(tmp_path):
    tok = Tokenizer.char([TEXT])
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64,
                      max_seq_len=32)
    base = Transformer(cfg).init_weights(0)
    with torch.no_grad():  # a frozen head of std 0.02 caps every logit near 0; a pretrained one is not like that
        base.tok_embeddings.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    ckpt.save_model_dir(tmp_path / "base", base, cfg, tok, {})
    (tmp_path / "t.txt").write_text(TEXT)
    summary = train(TrainConfig(mode="lora", base=str(tmp_path / "base"), data=str(tmp_path / "t.txt"),
                                out_dir=str(tmp_path / "v1"), block_size=24, batch_size=8, steps=60, lr=1e-2,
                                warmup=2, lora_rank=4, lora_alpha=16, eval_interval=0, eval_batches=2,
                                log_interval=5, progress=False))
    assert summary["status"] == "done" and summary["trainable_params"] < summary["params"] / 5
    recs = [json.loads(x) for x in (tmp_path / "v1" / "metrics.jsonl").read_text().splitlines()]
    assert summary["val_loss"] < 0.7 * recs[0]["loss"]
    adapter = load_file(str(tmp_path / "v1" / "lora.safetensors"))
    assert adapter and all(".lora_" in k for k in adapter)
    assert json.loads((tmp_path / "v1" / "adapter_config.json").read_text())["base"] == str(tmp_path / "base")
    # the base directory is untouched and the version dir loads as base + adapter
    reloaded_base, _, _ = load_model_dir(tmp_path / "base", tmp_path)
    for k, v in base.state_dict().items():
        assert torch.equal(reloaded_base.state_dict()[k], v)
    tuned, _, _ = load_model_dir(Path(tmp_path / "v1"), tmp_path)
    ids = torch.tensor([tok.encode(TEXT[:25])])
    with torch.no_grad():
        assert tuned(ids[:, :-1], ids[:, 1:]) < base.eval()(ids[:, :-1], ids[:, 1:])
