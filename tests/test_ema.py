"""The EMA: the reference's warm-up ``min(decay, (1 + n)/(10 + n))`` at update n (counted from 1), and exact
resumption (the count is part of the state)."""

from __future__ import annotations

import torch
from torch import nn

from flowlm.training.ema import EMA, warmup_decay


def test_warmup_decay_values():
    assert warmup_decay(0.9999, 1) == 2 / 11  # the first update: 2/11, not 0.9999 (an off-by-one gives 1/10)
    assert warmup_decay(0.9999, 2) == 3 / 12
    assert warmup_decay(0.9, 80) == 0.9 and warmup_decay(0.9, 79) == 80 / 89  # the warm-up ends where (1+n)/(10+n) > d
    assert warmup_decay(0.9999, None) == 0.9999


def scalar_module(value: float) -> nn.Module:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def test_update_follows_the_warmup_sequence_in_float64_arithmetic():
    """One scalar parameter takes the values p_n; the shadow must be the recursion written out in float64."""
    module = scalar_module(0.0)
    ema = EMA(module, decay=0.95)
    expected = 0.0  # the shadow starts at the initial value
    for n in range(1, 301):
        p = float(n % 7) - 3.0
        with torch.no_grad():
            module.weight.fill_(p)
        ema.update()
        d = min(0.95, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * p
        # float32 shadow, |values| <= 3: each update adds an error of a few ulps of 3 (3·2^-23 ≈ 3.6e-7) and the
        # errors shrink geometrically by d <= 0.95, so the total stays under 20 such ulps (7e-6).
        assert abs(ema.shadow["weight"].item() - expected) < 7e-6, n
    assert ema.num_updates == 300


def test_the_initial_weights_are_forgotten():
    module = scalar_module(100.0)  # the "random initialization"
    ema = EMA(module, decay=0.9999)
    with torch.no_grad():
        module.weight.fill_(0.0)
    for _ in range(1000):
        ema.update()
    # Weight left on the initial value after 1,000 updates: 10!·1001!/1010! ≈ 3.6e-21 (without the warm-up
    # 0.9999^1000 ≈ 0.905, i.e. a shadow of 90.5).
    assert abs(ema.shadow["weight"].item()) < 1e-12


def test_resumption_is_exact_and_old_states_keep_the_constant_decay():
    def run(ema, module, steps, start):
        for k in range(start, start + steps):
            with torch.no_grad():
                module.weight.fill_(float(k % 5))
            ema.update()

    a_mod = scalar_module(1.0)
    a = EMA(a_mod, 0.99)
    run(a, a_mod, 40, 0)
    state = a.state_dict()
    assert state["num_updates"] == 40
    run(a, a_mod, 25, 40)

    b_mod = scalar_module(1.0)
    b = EMA(b_mod, 0.99)
    b.load_state_dict(state)
    run(b, b_mod, 25, 40)
    assert b.num_updates == 65 and torch.equal(a.shadow["weight"], b.shadow["weight"])

    c = EMA(scalar_module(1.0), 0.99)
    c.load_state_dict({"weight": torch.full((1, 1), 2.0)})  # a state written before the warm-up existed
    c.module.weight.data.fill_(0.0)
    c.update()
    assert c.num_updates is None and abs(c.shadow["weight"].item() - 0.99 * 2.0) < 1e-6  # constant decay
