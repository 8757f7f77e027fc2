"""Readers of a model folder never see a torn export: while another process exports a new version into the
same folder as fast as it can, every ``flowlm.load`` returns one exported version whole (its ``flowlm.json``,
its weights and its tokenizer), never a mix of two and never an error; a corrupt file in a folder that nobody
replaces is still reported at once."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch

import flowlm
import flowlm.api as api
from flowlm.data import load_tokenizer
from flowlm.errors import CheckpointError
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.training.checkpoint import provenance, read_weights, save_model

ALPHABETS = ("abcdef", "uvwxyz")  # even versions use the first tokenizer, odd ones the second (same size)
READ_SECONDS = 4.0


def version(k: int):
    """The weights and tokenizer of exported version ``k``: every weight drawn from seed ``k``."""
    tok = load_tokenizer("char", train_texts=[ALPHABETS[k % 2]])
    torch.manual_seed(k)
    net = DiT(DiTConfig(vocab_size=tok.vocab_size, seq_len=8, hidden_size=16, n_blocks=1, n_heads=2, cond_dim=8))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return net, tok


def export(folder, k: int, common: dict):
    """Export version ``k`` into ``folder`` (``common``: the provenance fields)."""
    net, tok = version(k)
    meta = {**common, "model": net.config.to_dict(), "step": k, "vocab_size": tok.vocab_size,
            "tokenizer": {"spec": tok.spec, "name": tok.name, "vocab_size": tok.vocab_size}}  # fmt: skip
    return save_model(folder, net.state_dict(), meta, tok)


def export_forever(run_dir, stop, exported) -> None:
    """The writer process: export versions 0, 1, 2, ... into ``run_dir/model`` until ``stop`` is set."""
    torch.set_num_threads(1)
    common = provenance(method="flm", weights="ema", ema_decay=0.999)
    k = 0
    while not stop.is_set():
        export(run_dir / "model", k, common)
        k += 1
        exported.value = k


def test_load_during_back_to_back_exports_sees_whole_versions(tmp_path):
    context = multiprocessing.get_context("spawn")
    stop, exported = context.Event(), context.Value("i", 0)
    writer = context.Process(target=export_forever, args=(tmp_path, stop, exported), daemon=True)
    writer.start()
    try:
        deadline = time.monotonic() + 60
        while exported.value < 1:
            assert writer.is_alive() and time.monotonic() < deadline, "the writer process did not export"
            time.sleep(0.05)
        first = exported.value
        loads, failures, seen = 0, [], set()
        end = time.monotonic() + READ_SECONDS
        while time.monotonic() < end:
            loads += 1
            try:
                model = flowlm.load(tmp_path)
            except Exception as err:  # counted, so that the failure says how often a reader was hurt
                failures.append(f"{type(err).__name__}: {err}")
                continue
            step = model.meta["step"]
            seen.add(step)
            net, tok = version(step)
            state = model.net.state_dict()
            if not all(torch.equal(state[name], value) for name, value in net.state_dict().items()):
                failures.append(f"the weights loaded with the flowlm.json of step {step} are another version's")
            if model.tokenizer.decode(range(tok.vocab_size)) != tok.decode(range(tok.vocab_size)):
                failures.append(f"the tokenizer loaded with the flowlm.json of step {step} is another version's")
        written = exported.value - first
    finally:
        stop.set()
        writer.join(timeout=30)
    assert not failures, f"{len(failures)} of {loads} loads failed, e.g. {sorted(set(failures))[:3]}"
    assert writer.exitcode == 0
    assert written >= 20 and len(seen) >= 5, (written, len(seen))  # the reads really raced the exports


def test_a_corrupt_weights_file_is_reported_at_once(tmp_path, monkeypatch):
    folder = export(tmp_path / "model", 0, provenance(method="flm", weights="ema", ema_decay=0.999))
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    reads = []
    monkeypatch.setattr(api, "read_weights", lambda *args: reads.append(args) or read_weights(*args))
    with pytest.raises(CheckpointError, match="does not match its recorded SHA-256") as err:
        flowlm.load(tmp_path)
    assert len(reads) == 1 and "\n" not in str(err.value)  # nothing changed meanwhile: no second read
