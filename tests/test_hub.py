"""Hub save/load without network: a local round trip, and ``snapshot_download`` replaced by a fake Hub
that serves a local folder (or fails as it does offline)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub.errors import LocalEntryNotFoundError

import flowlm
import flowlm.hub as hub
from flowlm.data import load_tokenizer
from flowlm.errors import CheckpointError
from flowlm.nn.dit import DiT, DiTConfig
from flowlm.training.checkpoint import provenance, save_model


@pytest.fixture
def model_dir(tmp_path) -> Path:
    tok = load_tokenizer("char", train_texts=["abcdef"])
    torch.manual_seed(0)
    net = DiT(DiTConfig(vocab_size=tok.vocab_size, seq_len=8, hidden_size=16, n_blocks=1, n_heads=2, cond_dim=8))
    for p in net.parameters():  # non-zero head so that samples depend on every weight
        torch.nn.init.normal_(p, std=0.5)
    meta = provenance(method="flm", model=net.config.to_dict(), run={"data": {"corpus": "shakespeare"}},
                      tokenizer={"spec": tok.spec, "name": tok.name, "vocab_size": tok.vocab_size},
                      vocab_size=tok.vocab_size, step=42, weights="ema", ema_decay=0.999)  # fmt: skip
    return save_model(tmp_path / "model", net.state_dict(), meta, tok)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_folder_has_a_card_with_metadata_and_provenance(model_dir):
    card = (model_dir / "README.md").read_text()
    meta = json.loads((model_dir / "flowlm.json").read_text())
    head = front_matter(card)
    assert head["library_name"] == "flowlm" and "license" in head and "flm" in head["tags"]
    for needle in (meta["weights_sha256"], meta["code_version"], "shakespeare", "| training steps | 42 |",
                   "EMA (decay 0.999)", "flowlm sample", "steps=1024"):  # fmt: skip
        assert needle in card, needle


def test_save_pretrained_round_trip(model_dir, tmp_path):
    model = flowlm.load(model_dir)
    out = model.save_pretrained(tmp_path / "copy", license="apache-2.0")
    again = flowlm.from_pretrained(out)
    assert again.meta["weights_sha256"] == model.meta["weights_sha256"]
    assert front_matter((out / "README.md").read_text())["license"] == "apache-2.0"
    assert torch.equal(again.sample_tokens(2, 3, seed=1), model.sample_tokens(2, 3, seed=1))


class FakeHub:
    """``snapshot_download`` serving local folders: copies the allowed files into a cache folder."""

    def __init__(self, repos: dict[str, Path], cache: Path):
        self.repos, self.cache, self.calls = repos, cache, []

    def __call__(self, repo_id, *, revision=None, token=None, allow_patterns=None, library_name=None):
        self.calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns})
        target = self.cache / repo_id.replace("/", "--")
        shutil.copytree(self.repos[repo_id], target, dirs_exist_ok=True)
        (target / "unrelated.bin").write_bytes(b"x")  # a file the patterns would not fetch
        return str(target)


def test_load_by_hub_id_downloads_our_files(model_dir, tmp_path, monkeypatch):
    fake = FakeHub({"someone/tiny-flm": model_dir}, tmp_path / "cache")
    monkeypatch.setattr(hub, "snapshot_download", fake)
    model = flowlm.load("someone/tiny-flm", revision="v1")
    patterns = ["model.safetensors", "flowlm.json", "README.md", "tokenizer/*", "config.json"]
    assert fake.calls == [{"repo_id": "someone/tiny-flm", "revision": "v1", "allow_patterns": patterns}]
    assert model.meta["step"] == 42 and model.path == tmp_path / "cache" / "someone--tiny-flm"


def test_a_local_folder_wins_over_a_hub_id(model_dir, monkeypatch):
    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **k: pytest.fail("must not download"))
    monkeypatch.chdir(model_dir.parent.parent)
    assert flowlm.load(f"{model_dir.parent.name}/model").meta["step"] == 42


def test_offline_error_is_one_clear_line(monkeypatch):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError) as err:
        flowlm.load("someone/not-cached")
    message = str(err.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message and "network" in message
    assert "local model folder" in message


def test_cli_reports_the_offline_error(monkeypatch, capsys):
    from flowlm.cli import main

    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **k: (_ for _ in ()).throw(LocalEntryNotFoundError("x")))
    assert main(["sample", "someone/not-cached"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_push_to_hub_uploads_the_model_folder(model_dir, monkeypatch):
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploaded["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            folder = Path(folder_path)
            uploaded["files"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            uploaded["card"] = (folder / "README.md").read_text()
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    url = flowlm.load(model_dir).push_to_hub("someone/tiny-flm", private=True, token="t", license="mit")
    assert url == "https://hub/someone/tiny-flm/commit/1"
    assert uploaded["repo"] == ("someone/tiny-flm", True, True) and uploaded["token"] == "t"
    assert {"model.safetensors", "flowlm.json", "README.md"} <= set(uploaded["files"])
    assert any(f.startswith("tokenizer/") for f in uploaded["files"])
    assert 'flowlm.load("someone/tiny-flm")' in uploaded["card"] and front_matter(uploaded["card"])["license"] == "mit"


# --- the released reference models (Hub format of the reference DIT), converted once and cached ---
class FakeReleasedHub:
    """``snapshot_download`` of the Hub cache layout: ``<cache>/models--owner--name/snapshots/<commit>/``, holding
    only the files that exist in the repository and match the patterns."""

    def __init__(self, repos: dict[str, Path], cache: Path, commit: str = "0123abcd"):
        self.repos, self.cache, self.commit, self.calls = repos, cache, commit, []

    def __call__(self, repo_id, *, revision=None, token=None, allow_patterns=None, library_name=None):
        self.calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns})
        if repo_id not in self.repos:
            raise LocalEntryNotFoundError("not cached")
        target = self.cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / self.commit
        target.mkdir(parents=True, exist_ok=True)
        for f in self.repos[repo_id].iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, target / f.name)
        return str(target)


@pytest.fixture
def released(tmp_path, monkeypatch):
    """A released-format FMLM repository on a fake Hub; the flowlm cache under tmp_path."""
    from test_import_reference import random_reference_weights, reference_config, save_released

    tok = load_tokenizer("char", train_texts=["abcdefghij"])
    config = reference_config("fmlm", double_temb=True, tokenizer=str(tok.save(tmp_path / "tok")))
    repo = save_released(tmp_path / "repo", random_reference_weights(2, seed=31, llw=False), config)
    (repo / "README.md").write_text("the authors' card")
    fake = FakeReleasedHub({"david3684/FMLM-B-LM1B": repo}, tmp_path / "hf")
    monkeypatch.setattr(hub, "snapshot_download", fake)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return fake, repo


def test_load_a_released_model_by_hub_id_converts_it_once(released, tmp_path, monkeypatch):
    import flowlm.interop.released as rel

    fake, repo = released
    model = flowlm.load("david3684/FMLM-B-LM1B")
    assert model.method == "fmlm" and model.net.config.logit_cap == 30.0
    assert model.meta["sampler_defaults"] == {"gamma": 0.8}
    assert model.path == tmp_path / "xdg" / "flowlm" / "released" / "david3684--FMLM-B-LM1B" / "0123abcd"
    source = model.meta["imported_from"]
    assert (source["hub_repo"], source["revision"], source["commit"]) == ("david3684/FMLM-B-LM1B", "main", "0123abcd")
    digest = hashlib.sha256((repo / "model.safetensors").read_bytes()).hexdigest()
    assert source["sha256"] == {"config.json": hashlib.sha256((repo / "config.json").read_bytes()).hexdigest(),
                                "model.safetensors": digest}  # fmt: skip
    monkeypatch.setattr(rel, "convert", lambda *a, **k: pytest.fail("converted twice"))
    again = flowlm.load("david3684/FMLM-B-LM1B")
    assert again.path == model.path and again.meta["weights_sha256"] == model.meta["weights_sha256"]
    assert len(fake.calls) == 2  # the Hub cache answers the second call; the conversion is reused


def test_cli_import_reference_by_hub_id(released, tmp_path):
    from flowlm.cli import main

    fake, _ = released
    out = tmp_path / "imported"
    assert main(["import-reference", "david3684/FMLM-B-LM1B", "--out", str(out), "--revision", "v1.0"]) == 0
    assert fake.calls == [{"repo_id": "david3684/FMLM-B-LM1B", "revision": "v1.0",
                           "allow_patterns": ["config.json", "model.safetensors"]}]  # fmt: skip
    meta = flowlm.load(out).meta
    assert meta["imported_from"]["revision"] == "v1.0" and meta["imported_from"]["commit"] == "0123abcd"


def test_a_released_model_the_config_does_not_settle_names_the_import_option(released, tmp_path):
    _, repo = released
    body = json.loads((repo / "config.json").read_text())
    body["config"]["algo"]["name"] = "flm"  # a name both code versions use, and no sampling.gamma
    del body["config"]["sampling"]
    (repo / "config.json").write_text(json.dumps(body))
    with pytest.raises(CheckpointError) as err:
        flowlm.load("david3684/FMLM-B-LM1B")
    message = str(err.value)
    assert "--logit-cap" in message and "flowlm import-reference david3684/FMLM-B-LM1B --out DIR" in message
    assert "\n" not in message
