"""One short GPU check of the GPU code paths (run on a lent GPU machine; see docs/gpu.md).

1. fused attention (flex; flash-attn when installed) against the math backend, with the soft-cap;
2. a float32 vs bf16-autocast parity check of the DiT on real tokens;
3. a few hundred steps of the paper's `small` DiT (12 x 768) on LM1B-shaped data (bert-base-uncased,
   V = 30,522, L = 128; the embedded corpus stands in for LM1B) with bf16 and torch.compile,
   reporting the loss curve and tokens/s;
4. the FLM sampler and a training step under ``torch.cuda.set_sync_debug_mode`` (host syncs);
5. a short PSD distillation of that model (bf16, compile) and one-step FMLM sampling.

Usage: ``PYTHONPATH=src python benchmarks/gpu_check.py --out DIR [--steps 300]``; writes DIR/gpu_check.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import warnings
from pathlib import Path

import torch

import flowlm
from flowlm.methods.flm import flm_loss, flm_sample
from flowlm.nn.dit import attention


def attention_parity() -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(4, 128, 12, 64, generator=g, device="cuda", dtype=torch.bfloat16) * 4 for _ in range(3))
    ref = attention(q.float(), k.float(), v.float(), 50.0, "math")
    out = {}
    for backend in ("flex", "flash", "math"):
        try:
            got = attention(q, k, v, 50.0, backend).float()
        except Exception as err:  # noqa: BLE001 - report which backends exist
            out[backend] = f"unavailable: {str(err).splitlines()[0][:120]}"
            continue
        out[backend] = {"max_abs_err_vs_fp32_math": (got - ref).abs().max().item()}
    return out


def precision_parity(model_dir: Path, tokens: torch.Tensor) -> dict:
    model = flowlm.load(model_dir, device="cuda").net
    g = torch.Generator(device="cuda").manual_seed(0)
    tau = torch.rand(tokens.shape[0], device="cuda", generator=g)
    out = {}
    for name in ("math", "flex"):
        for blk in model.blocks:
            blk.backend = name
        with torch.no_grad():
            lf = flm_loss(model, tokens, model.config.vocab_size, generator=torch.Generator("cuda").manual_seed(1))
            with torch.autocast("cuda", dtype=torch.bfloat16):
                lb = flm_loss(model, tokens, model.config.vocab_size, generator=torch.Generator("cuda").manual_seed(1))
            pf = torch.softmax(model(tokens, tau), -1)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                pb = torch.softmax(model(tokens, tau), -1)
        out[name] = {
            "loss_fp32": lf["loss"].item(),
            "loss_bf16": lb["loss"].item(),
            "max_abs_prob_diff": (pf - pb).abs().max().item(),
        }
    return out


def sync_check(model_dir: Path, tokens: torch.Tensor) -> dict:
    model = flowlm.load(model_dir, device="cuda")
    net = model.net
    vocab = net.config.vocab_size
    result = {}
    for name, fn in (
        ("sampler_8_steps", lambda: flm_sample(net, 4, 128, vocab, 8, device="cuda")),
        (
            "train_step",
            lambda: flm_loss(net.train(), tokens[:8], vocab, generator=torch.Generator("cuda").manual_seed(0))[
                "loss"
            ].backward(),
        ),
    ):
        fn()  # warm up (schedule tables, compile caches)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            fn()
            torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        result[name] = {"host_syncs": len(syncs), "examples": syncs[:3]}
    net.eval()
    return result


def seconds_per_sample(model, steps: int, n: int = 64) -> float:
    """Time ``n`` samples after a warm-up call of the same shape (compile caches, schedule tables)."""
    model.sample_tokens(n, steps, seed=0)
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.sample_tokens(n, steps, seed=1)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def read_metrics(run_dir: Path) -> tuple[list, list, list]:
    """(train losses, validation cross-entropies as (step, value), tokens/s) from the first launch's CSV."""
    rows = list(csv.DictReader(open(run_dir / "logs" / "session-0" / "metrics.csv")))
    losses = [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]
    vals = [(int(r["step"]), float(r["val/denoising_ce"])) for r in rows if r.get("val/denoising_ce")]
    rates = [float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s")]
    return losses, vals, rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--distill-steps", type=int, default=100)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["attention_parity"] = attention_parity()
    print(json.dumps(report, indent=1), flush=True)

    run = out / "run"
    overrides = [
        "data.corpus=shakespeare",
        "data.tokenizer=bert-base-uncased",
        f"data.cache_dir={out / 'cache'}",
        f"train.max_steps={args.steps}",
        "train.batch_size=64",
        "train.warmup_steps=100",
        "train.compile=true",
        "train.log_every=25",
        f"train.ckpt_every={args.steps}",
        "train.val_every=100",
        "train.ema_decay=0.99",
    ]
    start = time.perf_counter()
    model_dir = flowlm.train("small", overrides, out=run, progress=False)
    report["train_seconds_total"] = time.perf_counter() - start
    report["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    losses, vals, rates = read_metrics(run)
    report["train_loss_first_last"] = [losses[0], losses[-1]] if losses else None
    report["val_denoising_ce"] = vals
    report["tokens_per_s_last"] = rates[-3:]

    from flowlm.data import prepare_blocks

    blocks = prepare_blocks("shakespeare", "bert-base-uncased", 128, "validation", cache_dir=out / "cache")
    tokens = torch.stack([blocks[i] for i in range(16)]).cuda()
    report["precision_parity"] = precision_parity(model_dir, tokens)
    report["host_syncs"] = sync_check(model_dir, tokens)

    model = flowlm.load(model_dir, device="cuda")
    for steps in (1, 64):
        report[f"sample_seconds_per_sample_{steps}_steps"] = seconds_per_sample(model, steps)
    report["samples_64_steps"] = model.generate(2, steps=64, seed=0)

    from flowlm.training.run import distill_config

    start = time.perf_counter()
    fmlm_dir = flowlm.train(
        config=distill_config(str(model_dir)),
        overrides=[o for o in overrides if not o.startswith(("train.max_steps", "train.ckpt_every"))]
        + [f"train.max_steps={args.distill_steps}", f"train.ckpt_every={args.distill_steps}"],
        out=out / "distill",
        progress=False,
    )
    report["distill_seconds_total"] = time.perf_counter() - start
    losses, _, rates = read_metrics(out / "distill")
    report["distill_loss_first_last"] = [losses[0], losses[-1]] if losses else None
    report["distill_tokens_per_s_last"] = rates[-2:]
    fmlm = flowlm.load(fmlm_dir, device="cuda")
    for steps in (1, 4):
        report[f"fmlm_seconds_per_sample_{steps}_steps"] = seconds_per_sample(fmlm, steps)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
