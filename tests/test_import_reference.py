"""The reference-checkpoint importer: synthetic Lightning checkpoints in the reference layout
(github.com/david3684/flm v1, menetn/glm v2/v3), built here with plain ``torch.save``, and folders in the Hub
format of the released models (``config.json`` + ``model.safetensors``, as ``PyTorchModelHubMixin`` writes them)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import types
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close_up_to_rounding

import flowlm
from flowlm.data import load_tokenizer
from flowlm.errors import CheckpointError
from flowlm.interop.reference import build_model, read_reference
from flowlm.interop.released import import_reference
from flowlm.nn.dit import DiT, DiTConfig

V, L, D, HEADS, COND, BLOCKS = 14, 8, 32, 4, 16, 2  # V = the char tokenizer below (4 specials + 10 letters)
# Our DiT against the reference forward written out below: the same float32 math, possibly in another operation
# order, so logits agree within rounding_atol(float32, n, max |logit|) with n = BLOCKS·L·D products along a logit's
# chain (tests/tolerances.py). A misread weight (transposed, another block's, a swapped shift/scale) moves them by O(1).
FORWARD_PRODUCTS = BLOCKS * L * D


# --- a fake OmegaConf, pickled the way OmegaConf 2.x pickles (NEWOBJ + BUILD with __getstate__'s dict) ---
class ContainerMetadata:
    def __init__(self):
        self.ref_type, self.object_type, self.key, self.flags = dict, dict, None, {}


class AnyNode:
    def __init__(self, value):
        self._val, self._metadata, self._parent = value, ContainerMetadata(), None

    def __getstate__(self):
        return dict(self.__dict__)


class DictConfig:
    def __init__(self, content):
        self._metadata, self._parent = ContainerMetadata(), None
        self._content = {k: DictConfig(v) if isinstance(v, dict) else AnyNode(v) for k, v in content.items()}

    def __getstate__(self):
        return dict(self.__dict__)


class BertTokenizerFast:  # what the reference's save_hyperparameters() also pickles
    def __init__(self):
        self.vocab = {"[PAD]": 0}


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@contextlib.contextmanager
def foreign_modules():
    """Make the fake classes picklable under the real packages' names while saving only: loading then runs
    without them, as in a process that has no omegaconf or transformers to import."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))  # pickle imports the parent
    for module_name, classes in {
        "omegaconf.dictconfig": [DictConfig],
        "omegaconf.nodes": [AnyNode],
        "omegaconf.base": [ContainerMetadata],
        "transformers.models.bert.tokenization_bert_fast": [BertTokenizerFast],
    }.items():
        module = types.ModuleType(module_name)
        for cls in classes:
            monkeypatch.setattr(cls, "__module__", module_name)
            setattr(module, cls.__name__, cls)
        monkeypatch.setitem(sys.modules, module_name, module)
    try:
        yield
    finally:
        monkeypatch.undo()


@pytest.fixture
def fake_foreign_modules():
    """Checks that no test leaves a fake package importable."""
    yield
    assert "omegaconf.dictconfig" not in sys.modules


def reference_config(algo="flm", double_temb=False, tokenizer="char-folder", v2=True, train="lm1b-wrap"):
    """A run config as the reference trainer saves it; ``v2``: with the ``sampling.gamma`` key of the v2/v3 code
    (which caps logits at 30); without it ``flm`` may be either version and ``flm_distill`` is v1 (no cap)."""
    config = {
        "algo": {"name": algo, "double_temb": double_temb},
        "model": {"hidden_size": D, "n_blocks": BLOCKS, "n_heads": HEADS, "cond_dim": COND,
                  "length": "${data.length}", "dropout": 0.0},
        "data": {"tokenizer_name_or_path": tokenizer, "train": train, "length": L},
    }  # fmt: skip
    if v2:
        config["sampling"] = {"steps": [1024], "gamma": 0.0}
    return config


def random_reference_weights(time_inputs: int, seed: int, llw: bool = True) -> OrderedDict:
    """Reference-named backbone tensors, all random (adaLN and heads non-zero so every path matters), in the
    reference registration order: embed, sigma_map(s), rotary buffer, loss weighting, blocks, output layer."""
    g = torch.Generator().manual_seed(seed)
    cfg = DiTConfig(vocab_size=V, seq_len=L, hidden_size=D, n_blocks=BLOCKS, n_heads=HEADS, cond_dim=COND,
                    time_inputs=time_inputs)  # fmt: skip
    ours = DiT(cfg).state_dict()
    out = OrderedDict()
    for name, value in ours.items():
        if name.startswith("blocks.0.") and llw:
            for n, shape in (("s_embed.mlp.0.weight", (COND, 256)), ("s_embed.mlp.0.bias", (COND,)),
                             ("mlp.0.weight", (128, COND)), ("mlp.2.weight", (1, 128))):  # fmt: skip
                out.setdefault(f"learnable_loss_weighting.{n}", torch.randn(shape, generator=g))
        out[name] = value.clone() if name == "rotary_emb.inv_freq" else 0.3 * torch.randn(value.shape, generator=g)
    return out


def save_reference(path, weights, config, ema=True, compiled=False, extra_hparams=None, shadow=None):
    prefix = "backbone._orig_mod." if compiled else "backbone."
    state = OrderedDict((prefix + k, v) for k, v in weights.items())
    state["noise.dummy"] = torch.zeros(1)  # other trainer tensors are ignored
    ckpt = {"state_dict": state, "global_step": 1234, "hyper_parameters": {"config": DictConfig(config),
            "tokenizer": BertTokenizerFast(), **(extra_hparams or {})}}  # fmt: skip
    if ema:
        params = [v for k, v in weights.items() if k != "rotary_emb.inv_freq"]
        ckpt["ema"] = {"decay": 0.9999, "num_updates": 7,
                       "shadow_params": shadow if shadow is not None else [p + 1.0 for p in params]}  # fmt: skip
    with foreign_modules():
        torch.save(ckpt, path)
    return path


def reference_forward(
    w: dict,
    x: torch.Tensor,
    s: torch.Tensor,
    t: torch.Tensor | None = None,
    cap: float | None = None,
    softcap: float | None = 50.0,
) -> torch.Tensor:
    """The reference DIT forward written out from its layer definitions: x [B, L, V] -> logits [B, L, V].

    qkv is split as (three, heads, head_dim); rotary rotate-half on q, k; attention logits soft-capped at
    ``softcap`` (FLM's 50; None: MDLM's and DUO's plain softmax). ``cap``: the v2/v3
    ``FLMBase._process_model_output``, ``cap·tanh(a/cap)`` on the head output.
    """

    def temb(prefix, tau):
        half = 128
        freqs = torch.exp(-math.log(10_000) * torch.arange(half) / half)
        feats = torch.cat([torch.cos(tau[:, None] * freqs), torch.sin(tau[:, None] * freqs)], -1)
        h = F.silu(feats @ w[f"{prefix}.mlp.0.weight"].T + w[f"{prefix}.mlp.0.bias"])
        return h @ w[f"{prefix}.mlp.2.weight"].T + w[f"{prefix}.mlp.2.bias"]

    def ln(h, weight):
        return F.layer_norm(h, (h.shape[-1],)) * weight

    def lin(h, name, bias=True):
        return h @ w[f"{name}.weight"].T + (w[f"{name}.bias"] if bias else 0)

    b, n, _ = x.shape
    hd = D // HEADS
    emb = temb("sigma_map", s)
    if t is not None:
        emb = emb + temb("sigma_map_prime" if "sigma_map_prime.mlp.0.weight" in w else "sigma_map", t)
    c = F.silu(emb)
    h = x @ w["vocab_embed.embedding"]
    pos = torch.arange(n).float()[:, None] * w["rotary_emb.inv_freq"][None]
    cos, sin = torch.cat([pos, pos], -1).cos()[:, None], torch.cat([pos, pos], -1).sin()[:, None]

    def rope(q):
        return q * cos + torch.cat([-q[..., hd // 2 :], q[..., : hd // 2]], -1) * sin

    for i in range(BLOCKS):
        p = f"blocks.{i}"
        sh1, sc1, g1, sh2, sc2, g2 = lin(c, f"{p}.adaLN_modulation")[:, None].chunk(6, -1)
        qkv = (ln(h, w[f"{p}.norm1.weight"]) * (1 + sc1) + sh1) @ w[f"{p}.attn_qkv.weight"].T
        q, k, v = qkv.view(b, n, 3, HEADS, hd).unbind(2)
        scores = torch.einsum("bihd,bjhd->bhij", rope(q), rope(k)) / math.sqrt(hd)
        scores = scores if softcap is None else softcap * torch.tanh(scores / softcap)
        att = torch.einsum("bhij,bjhd->bihd", torch.softmax(scores, -1), v).reshape(b, n, D)
        h = h + g1 * (att @ w[f"{p}.attn_out.weight"].T)
        m = ln(h, w[f"{p}.norm2.weight"]) * (1 + sc2) + sh2
        h = h + g2 * lin(F.gelu(lin(m, f"{p}.mlp.0"), approximate="tanh"), f"{p}.mlp.2")
    shift, scale = lin(c, "output_layer.adaLN_modulation")[:, None].chunk(2, -1)
    out = lin(ln(h, w["output_layer.norm_final.weight"]) * (1 + scale) + shift, "output_layer.linear")
    return out if cap is None else cap * torch.tanh(out / cap)


@pytest.fixture
def char_tokenizer(tmp_path):
    tok = load_tokenizer("char", train_texts=["abcdefghij"])
    assert tok.vocab_size == V
    return str(tok.save(tmp_path / "tok"))


def state_input(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, L, V, generator=g), torch.rand(3, generator=g), torch.rand(3, generator=g)


def loud_head(weights: OrderedDict, scale: float = 60.0) -> OrderedDict:
    """Scale the output layer so that many logits exceed the cap of 30: a missing cap then shows."""
    weights["output_layer.linear.weight"] = weights["output_layer.linear.weight"] * scale
    return weights


@pytest.mark.float_sensitive
def test_flm_import_matches_the_reference_forward_with_the_cap(tmp_path, fake_foreign_modules, char_tokenizer):
    weights = loud_head(random_reference_weights(1, seed=1))
    path = save_reference(tmp_path / "flm.ckpt", weights, reference_config(tokenizer=char_tokenizer), ema=False)
    out = import_reference(path, tmp_path / "model", weights="raw")
    model = flowlm.load(out)
    assert model.method == "flm" and model.meta["step"] == 1234 and model.meta["weights"] == "raw"
    assert "sampler_defaults" not in model.meta  # churn is a flow-map setting
    cfg = model.net.config
    assert (cfg.attn_softcap, cfg.logit_cap, cfg.pos_embed, cfg.seq_len, cfg.time_inputs) == (50.0, 30.0, False, L, 1)
    x, s, _ = state_input()
    raw = reference_forward(weights, x, s)
    assert raw.abs().max() > 60  # the cap changes these logits by far more than the rounding tolerance below
    assert_close_up_to_rounding(model.net(x, s), reference_forward(weights, x, s, cap=30.0), FORWARD_PRODUCTS)
    assert model.meta["imported_from"]["config"]["model"]["length"] == L  # ${data.length} resolved


@pytest.mark.float_sensitive
def test_logit_cap_is_inferred_from_the_config_or_asked_for(tmp_path, fake_foreign_modules, char_tokenizer):
    weights = loud_head(random_reference_weights(1, seed=11))
    v1_flm = save_reference(tmp_path / "v1.ckpt", weights, reference_config(tokenizer=char_tokenizer, v2=False),
                            ema=False)  # fmt: skip
    with pytest.raises(CheckpointError, match=r"--logit-cap 30 or --logit-cap none"):
        build_model(read_reference(v1_flm), "raw")
    x, s, _ = state_input(3)
    for cap, expected in ((None, None), ("none", None), (30, 30.0), ("12.5", 12.5)):
        net = build_model(read_reference(v1_flm), "raw", logit_cap=cap)
        assert net.config.logit_cap == expected
        assert_close_up_to_rounding(net(x, s), reference_forward(weights, x, s, cap=expected), FORWARD_PRODUCTS)
    with pytest.raises(CheckpointError, match="positive number or 'none'"):
        build_model(read_reference(v1_flm), "raw", logit_cap="-3")
    v2_only = reference_config("fmlm", tokenizer=char_tokenizer, v2=False)
    v2_name = save_reference(tmp_path / "v2.ckpt", weights, v2_only, ema=False)
    assert build_model(read_reference(v2_name), "raw").config.logit_cap == 30.0  # only v2/v3 has 'fmlm'


@pytest.mark.float_sensitive
def test_flow_map_with_double_temb_and_compiled_prefix(tmp_path, fake_foreign_modules, char_tokenizer):
    weights = random_reference_weights(2, seed=2)
    config = reference_config("flm_distill", double_temb=True, tokenizer=char_tokenizer, v2=False)  # v1: raw logits
    path = save_reference(tmp_path / "fmlm.ckpt", weights, config, ema=False, compiled=True)
    model = flowlm.load(import_reference(path, tmp_path / "model", weights="raw"))
    assert model.method == "fmlm" and model.net.config.time_inputs == 2 and model.net.config.logit_cap is None
    assert model.meta["sampler_defaults"] == {"gamma": 0.8}  # an LM1B flow map: the paper's churn
    x, s, t = state_input(1)
    assert_close_up_to_rounding(model.net(x, s, t), reference_forward(weights, x, s, t), FORWARD_PRODUCTS)


@pytest.mark.float_sensitive
def test_flow_map_with_a_shared_time_embedding(tmp_path, fake_foreign_modules, char_tokenizer):
    weights = random_reference_weights(1, seed=3)  # flm_distill without double_temb: sigma_map embeds both times
    config = reference_config("flm_distill", tokenizer=char_tokenizer, v2=False)  # v1: raw logits
    path = save_reference(tmp_path / "fm.ckpt", weights, config, ema=False)
    net = build_model(read_reference(path), "raw")
    x, s, t = state_input(2)
    assert_close_up_to_rounding(net(x, s, t), reference_forward(weights, x, s, t), FORWARD_PRODUCTS)


def test_ema_weights_are_paired_by_parameter_order(tmp_path, fake_foreign_modules, char_tokenizer):
    weights = random_reference_weights(1, seed=4)
    path = save_reference(tmp_path / "e.ckpt", weights, reference_config(tokenizer=char_tokenizer))
    ckpt = read_reference(path)
    ema_net, raw_net = build_model(ckpt, "ema"), build_model(ckpt, "raw")
    for name, value in weights.items():
        if name == "rotary_emb.inv_freq" or name.startswith("learnable_loss_weighting"):
            continue
        torch.testing.assert_close(ema_net.state_dict()[name], value + 1.0)  # the EMA is raw + 1 here
        torch.testing.assert_close(raw_net.state_dict()[name], value)
    meta = flowlm.load(import_reference(path, tmp_path / "m")).meta
    assert meta["weights"] == "ema" and meta["ema_decay"] == 0.9999


def test_ema_with_wrong_count_or_shapes_is_refused(tmp_path, fake_foreign_modules, char_tokenizer):
    weights = random_reference_weights(1, seed=5)
    params = [v for k, v in weights.items() if k != "rotary_emb.inv_freq"]
    short = save_reference(tmp_path / "a.ckpt", weights, reference_config(), shadow=params[:-1])
    with pytest.raises(CheckpointError, match="cannot be paired by position"):
        build_model(read_reference(short), "ema")
    swapped_order = [params[1], params[0], *params[2:]]
    swapped = save_reference(tmp_path / "b.ckpt", weights, reference_config(), shadow=swapped_order)
    with pytest.raises(CheckpointError, match="do not line up.*vocab_embed.embedding"):
        build_model(read_reference(swapped), "ema")


def test_missing_and_mis_shaped_tensors_are_refused(tmp_path, fake_foreign_modules):
    weights = random_reference_weights(1, seed=6)
    del weights["blocks.1.attn_out.weight"]
    with pytest.raises(CheckpointError, match=r"missing \['blocks.1.attn_out.weight'\]"):
        build_model(read_reference(save_reference(tmp_path / "m.ckpt", weights, reference_config(), ema=False)), "raw")
    weights = random_reference_weights(1, seed=6)
    weights["blocks.0.mlp.0.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="shape mismatch.*blocks.0.mlp.0.bias"):
        build_model(read_reference(save_reference(tmp_path / "s.ckpt", weights, reference_config(), ema=False)), "raw")


def test_wrong_tokenizer_is_refused(tmp_path, fake_foreign_modules):
    weights = random_reference_weights(1, seed=7)
    path = save_reference(tmp_path / "t.ckpt", weights, reference_config(tokenizer="bert-base-uncased"), ema=False)
    with pytest.raises(CheckpointError, match="30522 ids but the network has 14"):
        import_reference(path, tmp_path / "out", weights="raw")


def test_a_malicious_pickle_is_refused_without_running(tmp_path, fake_foreign_modules, char_tokenizer):
    marker = tmp_path / "pwned"
    weights = random_reference_weights(1, seed=8)
    path = save_reference(tmp_path / "evil.ckpt", weights, reference_config(tokenizer=char_tokenizer),
                          extra_hparams={"x": Exploit(marker)})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"refusing to unpickle .*system"):
        import_reference(path, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_cli_import_reference(tmp_path, fake_foreign_modules, char_tokenizer, capsys):
    from flowlm.cli import main

    weights = random_reference_weights(1, seed=9)
    path = save_reference(tmp_path / "c.ckpt", weights, reference_config(tokenizer="bert-base-uncased"))
    assert main(["import-reference", str(path), "--out", str(tmp_path / "m"), "--tokenizer", char_tokenizer]) == 0
    assert flowlm.load(tmp_path / "m").meta["tokenizer"]["vocab_size"] == V
    assert main(["import-reference", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- the Hub format of the released models (PyTorchModelHubMixin of the reference DIT) ---
def save_released(folder, weights, config, nested=True, vocab=V):
    """``config.json`` + ``model.safetensors`` as the mixin writes them: init arguments ``config`` and
    ``vocab_size`` (``nested=False``: the run config's keys merged into the top level), backbone names unprefixed."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    body = {"config": config, "vocab_size": vocab} if nested else {**config, "vocab_size": vocab}
    (folder / "config.json").write_text(json.dumps(body))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("nested", [True, False])
def test_released_flow_map_matches_the_reference_forward_with_the_cap(tmp_path, char_tokenizer, nested):
    weights = loud_head(random_reference_weights(2, seed=21, llw=False))
    config = reference_config("fmlm", double_temb=True, tokenizer=char_tokenizer, train="openwebtext-train")
    folder = save_released(tmp_path / "FMLM-B-OWT", weights, config, nested=nested)
    model = flowlm.load(import_reference(folder, tmp_path / "model"))
    cfg = model.net.config
    assert model.method == "fmlm" and (cfg.logit_cap, cfg.time_inputs, cfg.seq_len) == (30.0, 2, L)
    assert model.meta["sampler_defaults"] == {"gamma": 1.0} and model.meta["weights"] == "released"
    assert model.meta["run"]["data"]["corpus"] == "openwebtext" and model.meta["step"] is None
    source = model.meta["imported_from"]
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert source["sha256"]["model.safetensors"] == digest
    x, s, t = state_input(4)
    assert_close_up_to_rounding(model.net(x, s, t), reference_forward(weights, x, s, t, cap=30.0), FORWARD_PRODUCTS)


def test_released_flm_and_the_settings_its_config_leaves_open(tmp_path, char_tokenizer):
    weights = random_reference_weights(1, seed=22, llw=False)
    flm = save_released(tmp_path / "flm", weights, reference_config(tokenizer=char_tokenizer))
    model = flowlm.load(import_reference(flm, tmp_path / "m1", seq_len=2 * L))
    assert model.method == "flm" and model.net.config.seq_len == 2 * L and model.net.config.logit_cap == 30.0
    x, s, _ = state_input(5)
    assert_close_up_to_rounding(model.net(x, s), reference_forward(weights, x, s, cap=30.0), FORWARD_PRODUCTS)

    fm_weights = random_reference_weights(2, seed=23, llw=False)
    wiki = reference_config("fmlm", double_temb=True, tokenizer=char_tokenizer, train="wikitext2")
    folder = save_released(tmp_path / "wiki", fm_weights, wiki)
    with pytest.raises(CheckpointError, match="no sampling churn for corpus 'wikitext'.*pass --gamma"):
        import_reference(folder, tmp_path / "m2")
    assert flowlm.load(import_reference(folder, tmp_path / "m2", gamma=0.5)).meta["sampler_defaults"] == {"gamma": 0.5}

    no_length = reference_config(tokenizer=char_tokenizer)
    del no_length["model"]["length"]
    with pytest.raises(CheckpointError, match="pass --seq-len"):
        import_reference(save_released(tmp_path / "nolen", weights, no_length), tmp_path / "m3")
    with pytest.raises(CheckpointError, match="vocab_size=15 but vocab_embed.embedding has 14 rows"):
        import_reference(save_released(tmp_path / "v", weights, reference_config(), vocab=V + 1), tmp_path / "m4")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"vocab_size": V}))
    save_released(tmp_path / "bad2", weights, reference_config())
    (tmp_path / "bad2" / "config.json").write_text(json.dumps({"vocab_size": V}))
    with pytest.raises(CheckpointError, match="no algo/model settings"):
        import_reference(tmp_path / "bad2", tmp_path / "m5")
    with pytest.raises(CheckpointError, match="holds no config.json"):
        import_reference(tmp_path / "bad", tmp_path / "m6")


def test_cli_import_reference_of_a_released_folder(tmp_path, char_tokenizer):
    from flowlm.cli import main

    weights = random_reference_weights(2, seed=24, llw=False)
    config = reference_config("fmlm", double_temb=True, tokenizer="bert-base-uncased")
    folder = save_released(tmp_path / "FMLM-B-LM1B", weights, config)
    args = ["import-reference", str(folder), "--out", str(tmp_path / "m"), "--tokenizer", char_tokenizer]
    assert main([*args, "--logit-cap", "none", "--gamma", "0.3"]) == 0
    meta = flowlm.load(tmp_path / "m").meta
    assert meta["model"]["logit_cap"] is None and meta["sampler_defaults"] == {"gamma": 0.3}


def test_load_of_a_local_released_folder_converts_it_once(tmp_path, char_tokenizer, monkeypatch):
    """``flowlm.load(FOLDER)`` on the released Hub layout loads it as a Hub id does (before: "no flowlm.json");
    a config that leaves a setting open is one line naming ``flowlm import-reference FOLDER``."""
    import flowlm.interop.released as rel
    from flowlm.checks import recorded_meta

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    weights = loud_head(random_reference_weights(2, seed=25, llw=False))
    config = reference_config("fmlm", double_temb=True, tokenizer=char_tokenizer)
    folder = save_released(tmp_path / "FMLM-B-LM1B", weights, config)
    model = flowlm.load(folder)
    assert model.method == "fmlm" and model.meta["sampler_defaults"] == {"gamma": 0.8}
    assert model.path.parent == tmp_path / "xdg" / "flowlm" / "released" / "local--FMLM-B-LM1B"
    source = model.meta["imported_from"]
    assert source["path"] == str(folder.resolve())
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert source["sha256"]["model.safetensors"] == digest
    x, s, t = state_input(6)
    assert_close_up_to_rounding(model.net(x, s, t), reference_forward(weights, x, s, t, cap=30.0), FORWARD_PRODUCTS)
    with monkeypatch.context() as m:
        m.setattr(rel, "convert", lambda *a, **k: pytest.fail("converted twice"))
        assert flowlm.load(folder).path == model.path
    assert recorded_meta(str(folder)) is None  # flowlm eval's early checks: known once converted, as a Hub id

    body = json.loads((folder / "config.json").read_text())
    body["config"]["algo"]["name"] = "flm"  # a name both code versions use, and no sampling.gamma: cap unsettled
    del body["config"]["sampling"]
    (folder / "config.json").write_text(json.dumps(body))  # a changed file is a new conversion, not the cached one
    with pytest.raises(CheckpointError) as err:
        flowlm.load(folder)
    message = str(err.value)
    assert f"flowlm import-reference {folder} --out DIR" in message and "--logit-cap" in message
    assert "\n" not in message


def test_distill_from_a_released_folder_names_the_import_to_run(tmp_path, capsys):
    """A teacher given in the released Hub layout (before: "not a flowlm checkpoint (no flowlm.json)") gets one line
    that names the conversion command."""
    from flowlm.cli import main

    folder = save_released(tmp_path / "FLM-B-LM1B", random_reference_weights(2, seed=26, llw=False),
                           reference_config("flm", tokenizer="bert-base-uncased"))  # fmt: skip
    assert main(["distill", "--teacher", str(folder), "--out", str(tmp_path / "out"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "released model in its Hub layout" in err and f"flowlm import-reference {str(folder)!r}" in err
    assert not (tmp_path / "out").exists()
