"""Import of the released discrete-diffusion baselines (flowlm.interop.discrete): MDLM (and its SDTT students) and
DUO (and its DCD student), in each layout they are published in — a Lightning ``.ckpt`` of their trainers, a
``PyTorchModelHubMixin`` folder (whole Hydra config) and MDLM's ``transformers`` Hub folder — built here with random
weights. The imported network must compute the reference DIT of ``models/dit.py`` of kuleshov-group/mdlm and
s-sahoo/duo (the FLM reference's DIT without the attention soft cap, written out in test_import_reference), with each
method's own conventions: MDLM's mask id and its −∞ logit, DUO's time input σ = −log α_t."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from test_import_reference import (
    BLOCKS,
    COND,
    FORWARD_PRODUCTS,
    HEADS,
    D,
    L,
    reference_forward,
    save_reference,
)
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers
from tolerances import assert_close_up_to_rounding

import flowlm
from flowlm.data import load_tokenizer
from flowlm.errors import CheckpointError
from flowlm.interop.discrete import SUPPRESSED_LOGIT
from flowlm.interop.released import import_reference
from flowlm.methods.duo import alpha
from flowlm.nn.dit import DiT, DiTConfig

pytestmark = pytest.mark.float_sensitive

LETTERS = "abcdefghij"
MASK = 3  # [MASK] in the BERT-like tokenizer below, as BERT's 103


@pytest.fixture(scope="module")
def mask_tokenizer(tmp_path_factory):
    """Ids [PAD] 0, [BOS] 1, [EOS] 2, [MASK] 3, then one per letter: a tokenizer whose MDLM masks with [MASK]."""
    from flowlm.data.tokenizer import Tokenizer

    vocab = {t: i for i, t in enumerate(["[PAD]", "[BOS]", "[EOS]", "[MASK]", *LETTERS])}
    backend = RustTokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = Tokenizer(backend, spec="mask-letters", bos_id=1, eos_id=2, pad_id=0)
    return str(tok.save(tmp_path_factory.mktemp("tok")))


def reference_weights(vocab: int, seed: int) -> OrderedDict:
    """Random tensors under the reference DIT's names for a vocabulary of ``vocab`` (every path non-zero)."""
    g = torch.Generator().manual_seed(seed)
    cfg = DiTConfig(vocab_size=vocab, seq_len=L, hidden_size=D, n_blocks=BLOCKS, n_heads=HEADS, cond_dim=COND)
    return OrderedDict(
        (name, value.clone() if name == "rotary_emb.inv_freq" else 0.3 * torch.randn(value.shape, generator=g))
        for name, value in DiT(cfg).state_dict().items()
    )


def hydra_config(tokenizer: str, algo: str | None = None, time_conditioning: bool = False) -> dict:
    """The run config of their trainers: MDLM's has ``parameterization`` at the top, DUO's an ``algo`` section."""
    config = {
        "model": {"hidden_size": D, "n_blocks": BLOCKS, "n_heads": HEADS, "cond_dim": COND, "length": L,
                  "dropout": 0.1, "scale_by_sigma": True},
        "data": {"tokenizer_name_or_path": tokenizer, "train": "openwebtext-train"},
    }  # fmt: skip
    if algo is None:
        config |= {"parameterization": "subs", "time_conditioning": time_conditioning, "backbone": "dit"}
    else:
        config["algo"] = {"name": algo, "parameterization": "mean", "time_conditioning": True}
    return config


def save_hub_folder(folder, weights, config: dict, prefix: str = "backbone."):
    """``config.json`` + ``model.safetensors`` with ``backbone.``-prefixed names, as their Hub uploads hold them."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({prefix + k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    return folder


def tokens(vocab: int, seed: int, mask: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, L), generator=g)
    if mask is not None:
        ids[:, ::2] = mask  # half the positions masked, the rest carried
    return ids


def reference_mdlm_probs(weights, ids, mask: int) -> torch.Tensor:
    """The reference MDLM's p(x0 | z): the DIT at σ = 0, the mask's logit at −∞, softmax."""
    vocab = weights["vocab_embed.embedding"].shape[0]
    logits = reference_forward(weights, F.one_hot(ids, vocab).float(), torch.zeros(len(ids)), softcap=None)
    logits[..., mask] = -math.inf
    return logits.softmax(-1)


def assert_mdlm_matches(model, weights, ref_ids, mask: int) -> None:
    vocab = model.net.config.vocab_size
    ours_ids = torch.where(ref_ids == mask, torch.full_like(ref_ids, vocab), ref_ids)  # flowlm's mask is the id V
    logits = model.net(ours_ids, torch.zeros(len(ref_ids)))
    probs = logits.softmax(-1)
    assert (probs[..., mask] == 0).all()  # as the reference's −∞: exactly no probability
    expected = reference_mdlm_probs(weights, ref_ids, mask)
    keep = torch.arange(vocab) != mask
    assert_close_up_to_rounding(logits[..., keep].log_softmax(-1), expected[..., keep].log(), FORWARD_PRODUCTS)


def test_mdlm_checkpoint_with_a_mask_token(tmp_path, mask_tokenizer):
    """A Lightning .ckpt of the MDLM trainer (EMA weights) whose tokenizer has [MASK] (BERT-like)."""
    weights = reference_weights(14, seed=31)
    ema = OrderedDict((k, v if k == "rotary_emb.inv_freq" else v * 0.9) for k, v in weights.items())
    shadow = [v for k, v in ema.items() if k != "rotary_emb.inv_freq"]
    path = save_reference(tmp_path / "mdlm.ckpt", weights, hydra_config(mask_tokenizer), shadow=shadow)
    model = flowlm.load(import_reference(path, tmp_path / "model"))
    cfg = model.net.config
    assert model.method == "mdlm" and model.meta["weights"] == "ema" and model.meta["step"] == 1234
    assert (cfg.vocab_size, cfg.mask_input, cfg.attn_softcap, cfg.logit_cap, cfg.time_transform) == (
        14, True, None, None, None)  # fmt: skip
    assert_mdlm_matches(model, ema, tokens(14, 1, MASK), MASK)
    assert model.net.output_layer.linear.bias[MASK] == SUPPRESSED_LOGIT
    # a [MASK] given as an input token is read as the mask, as the reference reads it
    ids = tokens(14, 2, MASK)
    as_token = model.net(ids, torch.zeros(3))
    as_mask = model.net(torch.where(ids == MASK, 14, ids), torch.zeros(3))
    torch.testing.assert_close(as_token, as_mask, rtol=0, atol=0)
    samples = model.sample_tokens(4, steps=4, seed=0)
    assert samples.shape == (4, L) and not (samples == MASK).any() and not (samples == 14).any()


def test_sdtt_student_folder(tmp_path, mask_tokenizer):
    """jdeschena/sdtt's revisions: the mixin's whole Hydra config (tokenizer under ``tokenizer.name``), and the teacher
    revision's names wrapped twice (``backbone.backbone.*``)."""
    weights = reference_weights(14, seed=36)
    config = hydra_config("unused")
    del config["data"]
    config["tokenizer"] = {"name": mask_tokenizer}
    folder = save_hub_folder(tmp_path / "teacher_1M_sm", weights, config, prefix="backbone.backbone.")
    model = flowlm.load(import_reference(folder, tmp_path / "model"))
    assert model.method == "mdlm" and model.meta["weights"] == "released"
    assert_mdlm_matches(model, weights, tokens(14, 5, MASK), MASK)


def test_mdlm_hub_model_of_gpt2_size_masks_with_the_pad_id(tmp_path, monkeypatch):
    """kuleshov-group/mdlm-owt's layout: a ``transformers`` config, no tokenizer named; V = 50,258, so flowlm's gpt2
    (whose [PAD] is the id 50257 the reference masks with) is the default."""
    vocab = 50258
    weights = reference_weights(vocab, seed=32)
    config = {"architectures": ["MDLM"], "model_type": "mdlm", "hidden_dim": D, "n_blocks": BLOCKS,
              "n_heads": HEADS, "cond_dim": COND, "model_length": L, "vocab_size": vocab, "dropout": 0.1,
              "time_conditioning": False, "return_dict": False}  # fmt: skip
    folder = save_hub_folder(tmp_path / "mdlm-owt", weights, config)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    model = flowlm.load(folder)  # converted once into the cache, as a Hub id is
    assert model.method == "mdlm" and model.tokenizer.spec == "gpt2" and model.tokenizer.pad_id == vocab - 1
    assert model.meta["imported_from"]["config"]["transformers_config"]["model_type"] == "mdlm"
    assert_mdlm_matches(model, weights, tokens(vocab, 3, vocab - 1), vocab - 1)
    config["time_conditioning"] = True
    with pytest.raises(CheckpointError, match="trained with time conditioning"):
        import_reference(save_hub_folder(tmp_path / "timed", weights, config), tmp_path / "m2")


@pytest.mark.parametrize("algo", ["duo_base", "distillation"])
def test_duo_and_its_distilled_model_feed_sigma(tmp_path, mask_tokenizer, algo):
    """DUO (and DCD's student, algo ``distillation``) in the mixin layout: the network reads σ = −log α_t."""
    weights = reference_weights(14, seed=33)
    folder = save_hub_folder(tmp_path / algo, weights, {"config": hydra_config(mask_tokenizer, algo), "vocab_size": 14})
    model = flowlm.load(import_reference(folder, tmp_path / "model"))
    cfg = model.net.config
    assert model.method == "duo" and (cfg.mask_input, cfg.time_inputs, cfg.time_transform) == (False, 1, "neg_log")
    ids, t = tokens(14, 4), torch.tensor([0.0, 0.3, 0.97])
    a = alpha(t)
    expected = reference_forward(weights, F.one_hot(ids, 14).float(), -torch.log(a), softcap=None)
    assert_close_up_to_rounding(model.net(ids, a), expected, FORWARD_PRODUCTS)
    samples = model.sample_tokens(4, steps=4, seed=0)
    assert samples.shape == (4, L) and samples.max() < 14


def test_settings_a_config_leaves_open(tmp_path, mask_tokenizer):
    from flowlm.cli import main

    weights = reference_weights(14, seed=34)
    config = {"hidden_dim": D, "n_blocks": BLOCKS, "n_heads": HEADS, "cond_dim": COND, "model_length": L,
              "vocab_size": 14, "time_conditioning": True, "model_type": "dit"}  # fmt: skip
    folder = save_hub_folder(tmp_path / "unnamed", weights, config)
    with pytest.raises(CheckpointError, match="pass --method mdlm or --method duo"):
        import_reference(folder, tmp_path / "m1", tokenizer=mask_tokenizer)
    args = ["import-reference", str(folder), "--out", str(tmp_path / "m2"), "--tokenizer", mask_tokenizer]
    assert main([*args, "--method", "duo"]) == 0
    assert flowlm.load(tmp_path / "m2").method == "duo"
    with pytest.raises(CheckpointError, match="does not name its tokenizer"):
        import_reference(folder, tmp_path / "m3", method="duo")
    with pytest.raises(CheckpointError, match="--gamma is a flow map's"):
        import_reference(folder, tmp_path / "m4", tokenizer=mask_tokenizer, method="duo", gamma=0.5)
    with pytest.raises(CheckpointError, match="has 14 ids but the network has 50258"):
        big = reference_weights(50258, seed=35)
        import_reference(save_hub_folder(tmp_path / "big", big, {**config, "vocab_size": 50258}), tmp_path / "m5",
                         tokenizer=mask_tokenizer, method="duo")  # fmt: skip
    char = load_tokenizer("char", train_texts=[LETTERS])  # 14 ids, no [MASK], [PAD] at 0
    untimed = save_hub_folder(tmp_path / "untimed", weights, {**config, "time_conditioning": False})
    with pytest.raises(CheckpointError, match="MDLM's mask id is unknown"):
        import_reference(untimed, tmp_path / "m6", tokenizer=str(char.save(tmp_path / "char")), method="mdlm")
