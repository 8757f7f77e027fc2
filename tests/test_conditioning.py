"""Conditional sampling (prompts, suffixes, templates): every sampler holds known positions its own way.

- FLM Euler, flow map, v1 stage 1: the network sees each known position exactly on its path
  ``(1 − t)·x₀ + t·onehot`` (x₀ its own starting noise) at every call, and the output keeps its id;
  the low-rank path follows the same trajectory as the naive one;
- MDLM: known positions start unmasked; AR: a prompt is a prefix of the cache, infilling is refused;
- the text layer (flowlm.prompts) lays prompts, suffixes and templates out as training blocks are.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_lowrank import SEQ as LOWRANK_SEQ
from test_lowrank import VOCAB as LOWRANK_VOCAB
from test_lowrank import tiny_dit

import flowlm
from flowlm.cli import main
from flowlm.data import load_tokenizer
from flowlm.errors import ConfigError
from flowlm.methods.ar import ar_sample
from flowlm.methods.condition import Condition, make_condition
from flowlm.methods.flm import flm_sample, time_grid
from flowlm.methods.fmlm import fmlm_sample, init_stage1, v1_stage1_sample
from flowlm.methods.mdlm import mdlm_sample
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.prompts import DEFAULT_BLANK, layout, template_pieces
from flowlm.schedule import get_schedule

VOCAB, SEQ = 12, 6
pytestmark = pytest.mark.usefixtures("one_thread")


class Spy(torch.nn.Module):
    """Logits = fixed random table + a gain times the state; records every state it sees (naive [n, L, V])."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(SEQ, VOCAB, generator=g)
        self.seen = []

    def forward(self, x, tau, tau_end=None):
        self.seen.append((x.clone(), float(tau[0])))
        return self.table + 2.0 * x


def condition(n: int = 3) -> Condition:
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(n, SEQ, dtype=torch.bool)
    mask[:, 0] = mask[:, 3] = True  # a prefix position and an inner one
    mask[1, 4] = True  # rows may differ
    return Condition(ids, mask)


def assert_on_path(spy: Spy, cond: Condition, x0: torch.Tensor) -> None:
    """Every state the spy saw holds the known positions at (1 − t)·x0 + t·onehot, t = T⁻¹(τ)."""
    taus, ts = time_grid(VOCAB, 64)  # the grid is k/N: recover t from τ through the schedule
    onehot = torch.nn.functional.one_hot(cond.ids, VOCAB).float()
    for x, tau in spy.seen:
        t = float(get_schedule(VOCAB, "cpu").t_from_tau(torch.tensor([tau], dtype=torch.float64)))
        expected = (1 - t) * x0 + t * onehot
        # float32 states built by up to 64 Euler updates of O(1) terms: a few hundred ulps of 1 at most
        torch.testing.assert_close(x[cond.mask], expected[cond.mask], atol=1e-5, rtol=1e-5)
    assert len(spy.seen) > 1 and taus[0] == 0.0 and ts[0] == 0.0


@pytest.mark.parametrize("steps", [1, 5])
def test_flm_holds_known_positions_on_their_path(steps):
    cond = condition()
    x0 = torch.randn(3, SEQ, VOCAB, generator=torch.Generator().manual_seed(2))
    spy = Spy()
    tokens = flm_sample(spy, 3, SEQ, VOCAB, steps, x0=x0, input_noise="naive", condition=cond)
    assert torch.equal(tokens[cond.mask], cond.ids[cond.mask])
    if steps > 1:
        assert_on_path(spy, cond, x0)
    free = flm_sample(Spy(), 3, SEQ, VOCAB, steps, x0=x0, input_noise="naive")
    assert not torch.equal(free[cond.mask], cond.ids[cond.mask])  # the condition changed something


@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_flow_map_holds_known_positions_on_their_path(gamma):
    cond = condition()
    x0 = torch.randn(3, SEQ, VOCAB, generator=torch.Generator().manual_seed(2))
    spy = Spy()
    tokens = fmlm_sample(spy, 3, SEQ, VOCAB, 4, gamma=gamma, generator=torch.Generator().manual_seed(3), x0=x0,
                         input_noise="naive", condition=cond)  # fmt: skip
    assert torch.equal(tokens[cond.mask], cond.ids[cond.mask])
    assert_on_path(spy, cond, x0)


def test_low_rank_conditioning_follows_the_naive_trajectory():
    """Holding the projections x @ W is holding x: same x0, same tokens on both paths (V > d)."""
    seq, vocab = LOWRANK_SEQ, LOWRANK_VOCAB
    ids = torch.randint(0, vocab, (4, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(4, seq, dtype=torch.bool)
    mask[:, :2] = True
    cond = Condition(ids, mask)
    x0 = torch.randn(4, seq, vocab, generator=torch.Generator().manual_seed(1))
    flm, student = tiny_dit().eval(), tiny_dit(seed=1, time_inputs=2).eval()
    for sample in (
        lambda mode: flm_sample(flm, 4, seq, vocab, 6, x0=x0, input_noise=mode, condition=cond),
        lambda mode: fmlm_sample(student, 4, seq, vocab, 3, x0=x0, input_noise=mode, condition=cond),
        lambda mode: v1_stage1_sample(init_stage1(flm), flm, 4, seq, vocab, 3, x0=x0, input_noise=mode,
                                      condition=cond),  # fmt: skip
    ):
        naive, lowrank = sample("naive"), sample("lowrank")
        assert torch.equal(naive, lowrank) and torch.equal(naive[:, :2], ids[:, :2])


def test_mdlm_starts_known_positions_unmasked():
    cond = condition()
    seen = []

    def model(z, tau):
        seen.append(z.clone())
        return torch.zeros(*z.shape, VOCAB)

    tokens = mdlm_sample(model, 3, SEQ, VOCAB, 4, generator=torch.Generator().manual_seed(0), condition=cond)
    assert torch.equal(seen[0][cond.mask], cond.ids[cond.mask]) and (seen[0][~cond.mask] == VOCAB).all()
    assert torch.equal(tokens[cond.mask], cond.ids[cond.mask]) and (tokens < VOCAB).all()


def test_ar_feeds_a_prompt_and_refuses_to_infill():
    cfg = DiTConfig(vocab_size=VOCAB, seq_len=SEQ, hidden_size=8, n_blocks=1, n_heads=2, cond_dim=8, dropout=0.0,
                    causal=True)  # fmt: skip
    torch.manual_seed(0)
    net = DiT(cfg).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.5)
    ids = torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(3, SEQ, dtype=torch.bool)
    mask[:, :3] = True
    mask[2, 3] = True  # a longer prompt in one row
    cond = Condition(ids, mask)
    cached = ar_sample(net, 3, SEQ, 0, generator=torch.Generator().manual_seed(2), condition=cond)
    plain = ar_sample(net, 3, SEQ, 0, generator=torch.Generator().manual_seed(2), condition=cond, use_cache=False)
    assert torch.equal(cached, plain) and torch.equal(cached[mask], ids[mask])
    mask[0, 5] = True
    with pytest.raises(ConfigError, match="only continue a prompt"):
        ar_sample(net, 3, SEQ, 0, condition=Condition(ids, mask))


def test_make_condition_checks_its_input():
    ids, mask = torch.zeros(SEQ, dtype=torch.long), torch.zeros(SEQ, dtype=torch.bool)
    assert make_condition(ids, mask, 4, SEQ, VOCAB).ids.shape == (4, SEQ)  # one row for every sample
    assert make_condition(None, None, 4, SEQ, VOCAB) is None
    bad = [
        ((ids, None), "go together"),
        ((ids.float(), mask), "token ids"),
        ((ids, mask.long()), "bool"),
        ((ids[:3], mask), "equal shapes"),
        ((ids[:3], mask[:3]), r"\[num_samples, seq_len\]"),
        ((ids + VOCAB, ~mask), "outside the vocabulary"),
    ]
    for (k, m), message in bad:
        with pytest.raises(ConfigError, match=message):
            make_condition(k, m, 4, SEQ, VOCAB)


def test_layout_of_prompts_suffixes_and_templates():
    tok = load_tokenizer("char", train_texts=["the cat sat on a mat."])
    enc = tok.encode
    plan = layout(tok, 12, prompt="the")
    assert plan.ids[:4] == [tok.bos_id, *enc("the")] and plan.mask == [True] * 4 + [False] * 8
    plan = layout(tok, 12, prompt="a", suffix="mat")
    assert plan.ids[-4:] == [*enc("mat"), tok.eos_id] and plan.mask[-4:] == [True] * 4 and not plan.mask[3]
    assert template_pieces("The [BLANK:2] sat [BLANK].") == ["The ", 2, " sat ", DEFAULT_BLANK, "."]
    assert template_pieces("a [[BLANK:1] b [BLANK:1]") == ["a [BLANK:1] b ", 1]
    plan = layout(tok, 20, template="the [BLANK:3] sat")
    assert plan.end == 1 + 4 + 3 + 4 and plan.mask[5:8] == [False] * 3 and plan.ids[8:12] == enc(" sat")
    errors = [
        (dict(prompt="the cat sat on"), "leaving nothing to generate"),
        (dict(template="the cat"), "no blank"),
        (dict(template="the [BLANK:30]"), "needs 35 positions"),
        (dict(template="a [BLANK:0]"), "at least 1"),
        (dict(template="a [BLANK]", prompt="x"), "template alone"),
        (dict(prompt="xyz"), "cannot encode"),
    ]
    for kwargs, message in errors:
        with pytest.raises(ConfigError, match=message):
            layout(tok, 12, **kwargs)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 10-step FLM and AR model on the embedded corpus with the char tokenizer (seconds)."""
    root = tmp_path_factory.mktemp("cond")
    args = ["--preset", "tiny", "--tokenizer", "char", "--quiet", "data.seq_len=24", "model.hidden_size=32",
            "model.n_blocks=1", "model.n_heads=2", "model.cond_dim=16", "train.batch_size=4", "train.warmup_steps=1",
            "train.ckpt_every=10", "train.val_every=10", "train.val_batches=1",
            f"data.cache_dir={root / 'cache'}"]  # fmt: skip
    for method in ("flm", "ar"):
        assert main(["train", "--method", method, "--steps", "10", "--out", str(root / method), *args]) == 0
    return root


def test_generate_and_the_cli_condition(models, tmp_path, capsys):
    flm, ar = flowlm.load(models / "flm"), flowlm.load(models / "ar")
    for model, steps in ((flm, 4), (ar, None)):
        texts = model.generate(3, steps=steps, prompt="To be")
        assert all(text.startswith("To be") for text in texts), texts
    assert all(t.endswith("the end.") for t in flm.generate(2, steps=3, suffix="the end."))
    filled = flm.generate(2, steps=3, template="A [BLANK:3] B")
    # 3 generated characters between the pieces (fewer when one is a special token, which decoding drops)
    assert all(t.startswith("A ") and t.endswith(" B") and 4 <= len(t) <= 7 for t in filled), filled
    with pytest.raises(ConfigError, match="only continue a prompt"):
        ar.generate(1, suffix="end")

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("To be\nWhat\n")
    out = tmp_path / "out.jsonl"
    assert main(["sample", str(models / "flm"), "--prompts", str(prompts), "-n", "2", "--steps", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["To be", "To be", "What", "What"]
    assert all(r["text"] == r["prompt"] + r["continuation"] for r in rows), rows
    assert main(["sample", str(models / "ar"), "--template", "a [BLANK:2] b"]) == 2
    assert "only continue a prompt" in capsys.readouterr().err
    assert main(["sample", str(models / "flm"), "--prompt", "x" * 40]) == 2
    assert "leaving nothing to generate" in capsys.readouterr().err
