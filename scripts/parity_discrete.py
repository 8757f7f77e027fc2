"""Parity of flowlm's MDLM / DUO import with the authors' own network code, on CPU.

Runs ``models/dit.py`` of kuleshov-group/mdlm and of s-sahoo/duo (branch ch-1) — their files, unchanged — on random
weights at the OpenWebText vocabulary (50,258), writes the weights in the Hub layout, imports them with
``flowlm import-reference`` and compares the outputs. Their files import ``flash_attn`` (CUDA only); this script gives
them a CPU stand-in of the three functions they call, written from flash-attn's documented semantics: rotary
rotate-half on q and k (``apply_rotary_emb_qkv_``, ``apply_rotary_emb_torch``) and unmasked softmax attention with
scale 1/sqrt(head_dim) over packed sequences (``flash_attn_varlen_qkvpacked_func``).

Usage (the two files fetched from GitHub, e.g. ``git show HEAD:models/dit.py > mdlm_dit.py``):
    python scripts/parity_discrete.py --mdlm mdlm_dit.py --duo duo_dit.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

import flowlm
from flowlm.interop.released import import_reference
from flowlm.methods.duo import alpha

VOCAB, LENGTH, WIDTH, HEADS, BLOCKS, COND = 50258, 32, 64, 4, 2, 32


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_rotary_emb_torch(x, cos, sin, interleaved=False):
    """x [B, L, H, d]; cos, sin [L, d/2]: non-interleaved rotary on the whole head."""
    assert not interleaved
    cos, sin = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]
    return x * cos + rotate_half(x) * sin


def apply_rotary_emb_qkv_(qkv, cos, sin):
    """qkv [B, L, 3, H, d], rotary on q and k in place."""
    qkv[:, :, 0] = apply_rotary_emb_torch(qkv[:, :, 0], cos, sin)
    qkv[:, :, 1] = apply_rotary_emb_torch(qkv[:, :, 1], cos, sin)
    return qkv


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p, causal=False):
    """qkv [total, 3, H, d] of packed sequences -> [total, H, d]; bidirectional softmax attention."""
    assert not causal and dropout_p == 0.0
    outs = []
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True):
        q, k, v = qkv[start:end].unbind(1)  # [n, H, d]
        scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(q.shape[-1])
        outs.append(torch.einsum("hij,jhd->ihd", scores.softmax(-1), v))
    return torch.cat(outs)


def install_flash_stand_in() -> None:
    flash = types.ModuleType("flash_attn")
    layers, rotary, interface = (types.ModuleType(n) for n in
                                 ("flash_attn.layers", "flash_attn.layers.rotary", "flash_attn.flash_attn_interface"))
    rotary.apply_rotary_emb_torch, rotary.apply_rotary_emb_qkv_ = apply_rotary_emb_torch, apply_rotary_emb_qkv_
    interface.flash_attn_varlen_qkvpacked_func = flash_attn_varlen_qkvpacked_func
    flash.layers, layers.rotary, flash.flash_attn_interface = layers, rotary, interface
    for module in (flash, layers, rotary, interface):
        sys.modules[module.__name__] = module
    if importlib.util.find_spec("omegaconf") is None:  # only used for dict configs, which this script does not pass
        sys.modules["omegaconf"] = types.ModuleType("omegaconf")


def load_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_network(module, seed: int):
    config = SimpleNamespace(
        model=SimpleNamespace(hidden_size=WIDTH, cond_dim=COND, n_heads=HEADS, n_blocks=BLOCKS, dropout=0.1,
                              scale_by_sigma=False),
        algo=SimpleNamespace(causal_attention=False),
    )  # fmt: skip
    net = module.DIT(config, vocab_size=VOCAB).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():  # their init zeroes the adaLN and head layers: make every path count
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net


def write_hub(folder: Path, net, config: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    state = {"backbone." + k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def mdlm_parity(path: Path, work: Path) -> tuple[float, float]:
    ref = reference_network(load_file(path, "mdlm_dit"), seed=1)
    config = {"model_type": "mdlm", "hidden_dim": WIDTH, "n_blocks": BLOCKS, "n_heads": HEADS, "cond_dim": COND,
              "model_length": LENGTH, "vocab_size": VOCAB, "time_conditioning": False}  # fmt: skip
    model = flowlm.load(import_reference(write_hub(work / "mdlm", ref, config), work / "mdlm-flowlm"))
    mask = VOCAB - 1
    ids = torch.randint(0, VOCAB, (4, LENGTH), generator=torch.Generator().manual_seed(2))
    ids[:, ::3] = mask
    with torch.no_grad():
        theirs = ref(ids, torch.zeros(4))
        theirs[..., mask] = -1e6  # MDLM's SUBS: the mask id gets no probability (diffusion.py)
        ours = model.net(torch.where(ids == mask, VOCAB, ids), torch.zeros(4))
    keep = torch.arange(VOCAB) != mask
    assert (ours.softmax(-1)[..., mask] == 0).all()
    expected = theirs[..., keep].log_softmax(-1)
    return (ours[..., keep].log_softmax(-1) - expected).abs().max().item(), expected.abs().max().item()


def duo_parity(path: Path, work: Path) -> tuple[float, float]:
    ref = reference_network(load_file(path, "duo_dit"), seed=3)
    config = {"config": {"algo": {"name": "duo_base", "time_conditioning": True},
                         "model": {"hidden_size": WIDTH, "n_blocks": BLOCKS, "n_heads": HEADS, "cond_dim": COND,
                                   "length": LENGTH},
                         "data": {"tokenizer_name_or_path": "gpt2"}}, "vocab_size": VOCAB}  # fmt: skip
    model = flowlm.load(import_reference(write_hub(work / "duo", ref, config), work / "duo-flowlm"))
    ids = torch.randint(0, VOCAB, (4, LENGTH), generator=torch.Generator().manual_seed(4))
    a = alpha(torch.tensor([0.0, 0.2, 0.6, 0.999]))
    with torch.no_grad():
        theirs = ref(ids, -torch.log(a))  # DUO: sigma = -log alpha_t (algo.py, _sigma_from_alphat)
        ours = model.net(ids, a)
    return (ours - theirs).abs().max().item(), theirs.abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mdlm", type=Path, required=True, help="models/dit.py of kuleshov-group/mdlm")
    parser.add_argument("--duo", type=Path, required=True, help="models/dit.py of s-sahoo/duo, branch ch-1")
    args = parser.parse_args()
    install_flash_stand_in()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        diff, scale = mdlm_parity(args.mdlm, work)
        print(f"MDLM: max |log p ours - log p theirs| = {diff:.2e} (max |log p| {scale:.1f})")
        diff, scale = duo_parity(args.duo, work)
        print(f"DUO:  max |logit ours - logit theirs| = {diff:.2e} (max |logit| {scale:.1f})")


if __name__ == "__main__":
    main()
