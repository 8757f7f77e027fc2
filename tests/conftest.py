"""Shared fixtures. ``markov_flm`` trains the FLM of the statistical tests once per session; the
FLM test samples it, ``markov_fmlm`` distills it once (PSD), and the FMLM and conditioning tests sample both.
``markov_discrete`` trains the MDLM and DUO baselines on the same language once (their likelihood and sampling tests
and the SDTT / DCD distillation tests use them)."""

from __future__ import annotations

import os
import time

import pytest
import torch
from markov import THREADS_VARIABLE, MarkovChain, pinned_threads, single_thread

from flowlm.methods.duo import Curriculum, duo_loss
from flowlm.methods.flm import flm_loss
from flowlm.methods.fmlm import init_student, psd_loss
from flowlm.methods.mdlm import mdlm_loss
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.training.ema import EMA

MARKOV_K, MARKOV_LENGTH, MARKOV_BATCH, MARKOV_TEACHER_STEPS, MARKOV_PSD_STEPS = 8, 16, 128, 1500, 1000


def train_loop(net, steps: int, loss_fn, lr: float, betas=(0.9, 0.999)) -> EMA:
    """AdamW with gradient clipping 1.0 and an EMA of decay 0.99; ``loss_fn(step)`` gives the loss."""
    ema = EMA(net, 0.99)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=betas)
    for step in range(steps):
        loss = loss_fn(step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update()
    return ema


# Test modules whose tests share a trained session fixture: each group runs in one pytest-xdist worker (pyproject.toml
# runs the suite on two), so each fixture is trained once per run; every other module is its own group, so a module
# fixture is also built once. (xdist's own "loadgroup" markers do not work with pytest 9.2, whose node ids are
# computed: xdist 3.8 rewrites a private attribute that pytest no longer reads.)
TRAINED_FIXTURES = {"markov_flm": "markov-flow", "markov_fmlm": "markov-flow", "markov_discrete": "markov-discrete"}
MODULE_GROUPS = {
    "test_statistical": "markov-flow",
    "test_fmlm_statistical": "markov-flow",
    "test_conditioning_statistical": "markov-flow",
    "test_likelihood_markov": "markov-flow",
    "test_duo_statistical": "markov-discrete",
    "test_self_distillation_statistical": "markov-discrete",
}


def pytest_xdist_make_scheduler(config, log):
    """Distribute whole groups of :data:`MODULE_GROUPS` (else whole modules) to the workers (``--dist loadscope``,
    pyproject.toml's; another mode asked for on the command line is left to pytest-xdist)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return MODULE_GROUPS.get(os.path.splitext(os.path.basename(module))[0], module)

    return ModuleGroups(config, log)


def pytest_collection_modifyitems(items):
    """Refuse a test module that uses a trained fixture without its group in :data:`MODULE_GROUPS`: under xdist it
    would train that fixture a second time."""
    missing = sorted(
        {
            f"{item.module.__name__} (uses {name}: add it to MODULE_GROUPS as {group!r})"
            for item in items
            for name, group in TRAINED_FIXTURES.items()
            if name in item.fixturenames and MODULE_GROUPS.get(item.module.__name__) != group
        }
    )
    if missing:
        raise pytest.UsageError("tests/conftest.py: " + "; ".join(missing))


@pytest.fixture(autouse=True, scope="session")
def torch_threads():
    """FLOWLM_TEST_THREADS=N runs every test with N intra-op threads, also those that pin one (CI's
    float-sensitive step: a thread count changes how reductions are split). Unset: torch's default, divided among
    the pytest-xdist workers (two workers with two threads each on two cores ran 10-30x slower)."""
    n = torch.get_num_threads()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if THREADS_VARIABLE in os.environ:
        torch.set_num_threads(pinned_threads())
    elif workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to stalls on a shared CPU (use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    with single_thread():
        yield


@pytest.fixture(scope="session")
def markov_flm():
    """(chain, FLM with its EMA weights in eval mode, training seconds): a 2-block, width-64 DiT trained
    1,500 AdamW steps (lr 2e-3, batch 128) on the Markov language of tests/markov.py."""
    start = time.perf_counter()
    with single_thread():
        torch.manual_seed(0)
        chain = MarkovChain(MARKOV_K)
        g = torch.Generator().manual_seed(0)
        cfg = DiTConfig(vocab_size=MARKOV_K, seq_len=MARKOV_LENGTH, hidden_size=64, n_blocks=2, n_heads=4,
                        cond_dim=32, dropout=0.0, pos_embed=True)  # fmt: skip
        net = DiT(cfg)

        def loss(_step):
            return flm_loss(net, chain.sample(MARKOV_BATCH, MARKOV_LENGTH, g), MARKOV_K, generator=g)["loss"]

        ema = train_loop(net, MARKOV_TEACHER_STEPS, loss, 2e-3)
        teacher = DiT(cfg)
        teacher.load_state_dict(ema.weights())
    return chain, teacher.eval().requires_grad_(False), time.perf_counter() - start


@pytest.fixture(scope="session")
def markov_fmlm(markov_flm):
    """(flow-map student with its EMA weights in eval mode, distillation seconds): :func:`init_student` of the
    ``markov_flm`` teacher, then 1,000 PSD steps of batch 128 (default pair split, AdamW lr 1e-3, betas (0.9, 0.95),
    grad clip 1, EMA 0.99), without conditional training."""
    chain, teacher, _ = markov_flm
    start = time.perf_counter()
    with single_thread():
        g = torch.Generator().manual_seed(0)
        student = init_student(teacher).train()

        def psd(step):
            tokens = chain.sample(MARKOV_BATCH, MARKOV_LENGTH, g)
            return psd_loss(student, teacher, tokens, MARKOV_K, generator=g, sample_offset=step * MARKOV_BATCH)["loss"]

        ema = train_loop(student, MARKOV_PSD_STEPS, psd, 1e-3, betas=(0.9, 0.95))
        student.load_state_dict(ema.weights())
    return student.eval(), time.perf_counter() - start


MARKOV_MDLM_STEPS, MARKOV_DUO_STEPS = 400, 1000


@pytest.fixture(scope="session")
def markov_discrete():
    """``{"mdlm": DiT, "duo": DiT}`` trained on the Markov language (EMA weights, eval mode) with the FLM's 2 × 64
    network: MDLM 400 steps (mask input), DUO 1,000 steps (the first half on its Gaussian-relaxation curriculum);
    AdamW lr 2e-3, batch 128."""
    chain = MarkovChain(MARKOV_K)
    nets = {}
    with single_thread():
        for kind, steps in (("mdlm", MARKOV_MDLM_STEPS), ("duo", MARKOV_DUO_STEPS)):
            torch.manual_seed(0)
            g = torch.Generator().manual_seed(0)
            options = {"mask_input": True} if kind == "mdlm" else {}
            cfg = DiTConfig(vocab_size=MARKOV_K, seq_len=MARKOV_LENGTH, hidden_size=64, n_blocks=2, n_heads=4,
                            cond_dim=32, dropout=0.0, pos_embed=True, logit_cap=None, **options)  # fmt: skip
            net = DiT(cfg)

            def loss(step, net=net, kind=kind, steps=steps, g=g):
                tokens = chain.sample(MARKOV_BATCH, MARKOV_LENGTH, g)
                if kind == "mdlm":
                    return mdlm_loss(net, tokens, MARKOV_K, generator=g)["loss"]
                relax = Curriculum() if step < steps // 2 else None
                return duo_loss(net, tokens, MARKOV_K, generator=g, curriculum=relax)["loss"]

            ema = train_loop(net, steps, loss, 2e-3)
            nets[kind] = DiT(cfg)
            nets[kind].load_state_dict(ema.weights())
            nets[kind].eval().requires_grad_(False)
    return chain, nets
