"""Two details of the reference: the v1 stage-1 loss weighting sees τ_s only, and the MDLM / AR heads have no
logit cap (models saved with one keep it)."""

from __future__ import annotations

import torch

import flowlm
from flowlm.config import RunConfig
from flowlm.data import load_tokenizer
from flowlm.methods import registry
from flowlm.methods.common import LossWeighting
from flowlm.methods.fmlm import init_stage1, v1_stage1_loss
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.training.checkpoint import provenance, save_model


def test_v1_stage1_weighting_sees_the_start_time_only():
    vocab, seq = 11, 6
    torch.manual_seed(0)
    teacher = DiT(DiTConfig(vocab_size=vocab, seq_len=seq, hidden_size=16, n_blocks=1, n_heads=2, cond_dim=8))
    g_net = init_stage1(teacher)
    weighting = LossWeighting(8)  # one time input, as the training module now builds it for this recipe
    with torch.no_grad():
        weighting.mlp[-1].weight.normal_()  # non-zero w, so the weighting changes the loss
    seen = []
    weighting.register_forward_hook(lambda m, args, out: seen.append(args))
    tokens = torch.randint(0, vocab, (8, seq), generator=torch.Generator().manual_seed(1))
    out = v1_stage1_loss(g_net, teacher, tokens, vocab, generator=torch.Generator().manual_seed(2), weighting=weighting)
    tau, tau_end = seen[0]
    assert tau_end is None and torch.equal(tau, out["tau_s"])
    w = weighting(out["tau_s"])
    torch.testing.assert_close(out["loss"], (torch.exp(-w) * out["per_sequence"] + w).mean())
    out["loss"].backward()
    assert weighting.mlp[0].weight.grad.abs().sum() > 0


def test_mdlm_and_ar_heads_have_no_cap_by_default():
    cfg = RunConfig()
    assert cfg.model.logit_cap == 30.0
    options = {name: registry.get(name).dit_options for name in ("flm", "fmlm", "mdlm", "ar")}
    assert cfg.model.dit(50, 16, options["flm"]).logit_cap == 30.0
    assert cfg.model.dit(50, 16, options["fmlm"]).logit_cap == 30.0
    mdlm, ar = cfg.model.dit(50, 16, options["mdlm"]), cfg.model.dit(50, 16, options["ar"])
    assert mdlm.logit_cap is None and mdlm.mask_input and ar.logit_cap is None and ar.causal


def test_an_mdlm_saved_with_a_cap_keeps_it(tmp_path):
    tok = load_tokenizer("char", train_texts=["abcdef"])
    config = DiTConfig(vocab_size=tok.vocab_size, seq_len=8, hidden_size=16, n_blocks=1, n_heads=2, cond_dim=8,
                       mask_input=True, logit_cap=30.0)  # fmt: skip
    torch.manual_seed(0)
    net = DiT(config)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(std=3.0)  # large logits, so the cap shows
    meta = provenance(method="mdlm", model=config.to_dict(), run={"data": {"corpus": "x"}},
                      tokenizer={"spec": tok.spec, "name": tok.name, "vocab_size": tok.vocab_size},
                      vocab_size=tok.vocab_size, step=1, weights="ema", ema_decay=0.9)  # fmt: skip
    model = flowlm.load(save_model(tmp_path / "m", net.state_dict(), meta, tok))
    assert model.net.config.logit_cap == 30.0
    z = torch.full((2, 8), tok.vocab_size)  # all masked
    logits = model.net(z, torch.zeros(2))
    assert logits.abs().max() <= 30.0
    uncapped = DiT(DiTConfig(**{**config.to_dict(), "logit_cap": None}))
    uncapped.load_state_dict(net.state_dict())
    assert uncapped(z, torch.zeros(2)).abs().max() > 30.0  # the cap is what bounds them
