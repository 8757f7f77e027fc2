"""Self-conditioned FLM (issue 26): the estimate p @ W reaches the network, the samplers carry it from step to step,
the two-pass training gives it to the documented share of sequences, self-conditioning guidance, and the CLI."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from flowlm.errors import ConfigError
from flowlm.methods.flm import SELF_CONDITION_SHARE, flm_endpoint, flm_loss, flm_sample
from flowlm.nn.dit import DiT, DiTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

V, L = 11, 6
CFG = DiTConfig(vocab_size=V, seq_len=L, hidden_size=16, n_blocks=1, n_heads=2, cond_dim=8, dropout=0.0)


def pair(seed: int = 0, scale: float = 0.0) -> tuple[DiT, DiT]:
    """A plain DiT and a self-conditioned one with the same weights; ``scale``: std of the self-conditioning map's
    weights (0: it ignores the estimate, as at initialization)."""
    g = torch.Generator().manual_seed(seed)
    plain = DiT(CFG).eval()
    with torch.no_grad():  # every path random (a fresh DiT's head and adaLN layers are zero)
        for param in plain.parameters():
            param.copy_(0.2 * torch.randn(param.shape, generator=g))
    sc = DiT(dataclasses.replace(CFG, self_condition=True)).eval()
    state = dict(plain.state_dict())
    state["self_cond.weight"] = scale * torch.randn(CFG.hidden_size, CFG.hidden_size, generator=g)
    sc.load_state_dict(state)
    return plain, sc


def draw(net, steps, seed=3, **kwargs):
    return flm_sample(net, 5, L, V, steps, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("input_noise", ["naive", "lowrank"])
def test_an_estimate_the_network_ignores_changes_nothing_and_one_it_reads_does(input_noise):
    plain, ignoring = pair()
    _, reading = pair(scale=1.0)
    for steps in (1, 4):
        reference = draw(plain, steps, input_noise=input_noise)
        assert torch.equal(draw(ignoring, steps, input_noise=input_noise), reference)
        if steps == 1:  # one step has no previous estimate
            assert torch.equal(draw(reading, steps, input_noise=input_noise), reference)
    outputs = [draw(reading, 4, seed=s, input_noise=input_noise) for s in range(4)]
    assert any(not torch.equal(o, draw(plain, 4, seed=s, input_noise=input_noise)) for s, o in enumerate(outputs))


def test_each_step_reads_the_last_steps_denoiser():
    """The estimate at step k+1 is p_k @ W, p_k = softmax of step k's logits; the first step reads none."""
    _, net = pair(scale=1.0)
    seen, logits = [], []
    net.self_cond.register_forward_hook(lambda _m, args, _out: seen.append(args[0].clone()))
    net.register_forward_hook(lambda _m, _args, out: logits.append(out.clone()))
    draw(net, 3, input_noise="naive")
    assert len(logits) == 3 and len(seen) == 2
    for k, estimate in enumerate(seen):
        expected = net.project_estimate(torch.softmax(logits[k], -1))
        torch.testing.assert_close(estimate, expected, rtol=0, atol=0)
    seen.clear()
    flm_endpoint(net, torch.randn(2, L, V), 0.0, V, 3)
    assert len(seen) == 2  # the fit report's and the boundary teacher's sampler carries it too


def test_the_lowrank_sampler_carries_the_same_estimate_as_the_naive_one():
    """On the low-rank path the state's ``p @ W`` doubles as the next estimate; from one x0 both paths follow the
    same trajectory, so the estimates the network reads agree to float32 rounding of a V-term sum."""
    _, net = pair(scale=1.0)
    x0 = torch.randn(4, L, V, generator=torch.Generator().manual_seed(5))
    seen = {mode: [] for mode in ("naive", "lowrank")}
    for mode, found in seen.items():
        handle = net.self_cond.register_forward_hook(lambda _m, args, _out, found=found: found.append(args[0].clone()))
        with torch.no_grad():
            flm_sample(net, 4, L, V, 4, x0=x0, input_noise=mode)
        handle.remove()
    assert len(seen["naive"]) == len(seen["lowrank"]) == 3
    tol = 64 * V * torch.finfo(torch.float32).eps * float(net.vocab_embed.embedding.detach().abs().max())
    for a, b in zip(seen["naive"], seen["lowrank"], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=tol)


def test_two_pass_training_gives_the_estimate_to_half_the_sequences_without_gradient():
    """Each sequence gets, with probability 1/2, the projected prediction of a gradient-free first pass at its own
    state, the others zeros; the map learns from the second pass."""
    _, net = pair(scale=1.0)
    net.train()
    given, outputs = [], []
    net.self_cond.register_forward_hook(lambda _m, args, _out: given.append(args[0]))
    net.register_forward_hook(lambda _m, _args, out: outputs.append(out))
    batch = 2000
    tokens = torch.randint(0, V, (batch, L), generator=torch.Generator().manual_seed(0))
    out = flm_loss(net, tokens, V, generator=torch.Generator().manual_seed(1), input_noise="naive")
    assert len(given) == 1 and len(outputs) == 2  # the first pass has no estimate, so it never calls the map
    estimate, first_pass = given[0], outputs[0]
    assert not estimate.requires_grad and not first_pass.requires_grad
    rows = estimate.abs().sum((1, 2)) > 0
    share = rows.float().mean().item()
    assert abs(share - SELF_CONDITION_SHARE) < 4 * math.sqrt(SELF_CONDITION_SHARE * (1 - SELF_CONDITION_SHARE) / batch)
    assert first_pass.shape == (int(rows.sum()), L, V)
    torch.testing.assert_close(estimate[rows], net.project_estimate(torch.softmax(first_pass.float(), -1)),
                               rtol=0, atol=0)  # fmt: skip
    out["loss"].backward()
    assert net.self_cond.weight.grad.abs().sum() > 0


def test_guidance_extrapolates_between_the_predictions_with_and_without_the_estimate():
    _, net = pair(scale=1.0)
    _, blind = pair(scale=0.0)
    # w = 0 is the prediction without the estimate at every step: the network that ignores it
    assert torch.equal(draw(net, 4, sc_guidance=0.0), draw(blind, 4))
    assert not torch.equal(draw(net, 4, sc_guidance=4.0, seed=0), draw(net, 4, seed=0)) or not torch.equal(
        draw(net, 4, sc_guidance=4.0, seed=1), draw(net, 4, seed=1))  # fmt: skip
    plain, _ = pair()
    with pytest.raises(ConfigError, match="sc_guidance needs a self-conditioned model"):
        draw(plain, 4, sc_guidance=2.0)
    with pytest.raises(ConfigError, match="trained without it"):
        plain(torch.randint(0, V, (1, L)), torch.zeros(1), self_cond=torch.zeros(1, L, CFG.hidden_size))


def test_cli_trains_samples_guides_and_scores_a_self_conditioned_flm(tmp_path):
    import json

    from test_e2e import TINY, cli

    import flowlm

    cli("train", *TINY, f"data.cache_dir={tmp_path / 'cache'}", "model.self_condition=true", "--steps", "3",
        "--out", str(tmp_path / "run"))  # fmt: skip
    meta = json.loads((tmp_path / "run" / "model" / "flowlm.json").read_text())
    assert meta["model"]["self_condition"] is True and meta["run"]["model"]["self_condition"] is True
    out = tmp_path / "s.jsonl"
    cli("sample", str(tmp_path / "run"), "--steps", "3", "-n", "2", "--seed", "1", "--sc-guidance", "2",
        "--out", str(out))  # fmt: skip
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    model = flowlm.load(tmp_path / "run")
    assert model.sample_tokens(2, 3, seed=1, sc_guidance=2.0).tolist() == [line["tokens"] for line in lines]
    result = flowlm.nll(tmp_path / "run", num_blocks=2, batch_size=2, draws=2, progress=False,
                        cache_dir=tmp_path / "cache")  # fmt: skip
    assert result["bound"] == "elbo" and math.isfinite(result["nats_per_token"])
    known, mask = torch.tensor([5, 6, 7] + [0] * 29), torch.arange(32) < 3
    assert model.sample_tokens(2, 3, seed=2, known=known, known_mask=mask)[:, :3].tolist() == [[5, 6, 7]] * 2
    with pytest.raises(ConfigError, match="trained without self-conditioning"):
        flowlm.load("demo:flm").sample_tokens(1, 2, sc_guidance=2.0)


def test_a_flow_map_distilled_from_a_self_conditioned_teacher_reads_no_estimate():
    from flowlm.methods.fmlm import init_student

    _, teacher = pair(scale=1.0)
    student = init_student(teacher).eval()
    assert not student.config.self_condition and student.self_cond is None
    x, s = torch.randn(2, L, V), torch.rand(2)
    torch.testing.assert_close(student(x, s, torch.rand(2)), teacher(x, s))  # the teacher as distillation calls it
