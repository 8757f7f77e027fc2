"""Issue 26, first part, on the Markov language: a self-conditioned FLM against the plain FLM at equal training
compute, two training seeds each.

Language, network and quality measure as in ``experiments/markov_claim.py`` (the statistical tests' chain and 2-block
width-64 DiT; invalid share of adjacent pairs, 0 for the language, with a 95% binomial interval over 30,000 pairs).
The plain FLM trains 1,500 AdamW steps of batch 128 (lr 2e-3, EMA 0.99, the tests' ``markov_flm``); the
self-conditioned one 1,286 steps, the same compute counted in network passes per row (3 against 3.5: half the rows add
a gradient-free forward). Each model samples 2,000 sequences at 64, 256 and 1,024 Euler steps (seed 1); the
self-conditioned one also with ``sc_guidance`` 2 at 64 and 256 steps.

Restartable (models and ``results.json`` under ``--out``). One intra-op thread.

    PYTHONPATH=src:tests OMP_NUM_THREADS=1 python experiments/markov_selfcond.py --out runs/markov-selfcond
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from conftest import MARKOV_BATCH as BATCH
from conftest import MARKOV_K as K
from conftest import MARKOV_LENGTH as LENGTH
from conftest import train_loop
from markov import MarkovChain, single_thread
from markov_claim import measure

from flowlm.methods.flm import flm_loss, flm_sample
from flowlm.nn.dit import DiT, DiTConfig

PLAIN_STEPS = 1500
SC_STEPS = round(PLAIN_STEPS * 3 / 3.5)
SAMPLES, SEEDS, STEPS, GUIDED = 2000, (0, 1), (64, 256, 1024), ((2.0, 64), (2.0, 256))
CFG = DiTConfig(vocab_size=K, seq_len=LENGTH, hidden_size=64, n_blocks=2, n_heads=4, cond_dim=32, dropout=0.0,
                pos_embed=True)  # fmt: skip


def train(chain: MarkovChain, self_condition: bool, seed: int) -> DiT:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = DiT(dataclasses.replace(CFG, self_condition=self_condition))

    def loss(_step):
        return flm_loss(net, chain.sample(BATCH, LENGTH, g), K, generator=g)["loss"]

    ema = train_loop(net, SC_STEPS if self_condition else PLAIN_STEPS, loss, 2e-3)
    net.load_state_dict(ema.weights())
    return net.eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/markov-selfcond"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    chain = MarkovChain(K)
    with single_thread():
        for seed in SEEDS:
            for sc in (False, True):
                name = f"{'flm-sc' if sc else 'flm'}-seed{seed}"
                model_path = args.out / f"{name}.pt"
                if model_path.exists():
                    net = torch.load(model_path, weights_only=False)
                else:
                    start = time.perf_counter()
                    net = train(chain, sc, seed)
                    torch.save(net, model_path)
                    print(f"{name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
                runs = [(None, steps) for steps in STEPS] + (list(GUIDED) if sc else [])
                for guidance, steps in runs:
                    key = f"{name}|{steps}|{guidance}"
                    if key in results:
                        continue
                    tokens = flm_sample(net, SAMPLES, LENGTH, K, steps, generator=torch.Generator().manual_seed(1),
                                        sc_guidance=guidance)  # fmt: skip
                    results[key] = measure(chain, tokens)
                    path.write_text(json.dumps(results, indent=1))
                    print(key, results[key], flush=True)
    print("| model | seed | steps | sc_guidance | invalid share ± 95% | entropy |\n|---|---|---|---|---|---|")
    for key, r in results.items():
        name, steps, guidance = key.split("|")
        model, seed = name.rsplit("-seed", 1)
        print(f"| {model} | {seed} | {steps} | {guidance if guidance != 'None' else '—'} | "
              f"{r['invalid']:.4f} ± {r['ci']:.4f} | {r['entropy']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
