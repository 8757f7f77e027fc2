"""Hub save/load without network: a local round trip, and ``snapshot_download`` replaced by a fake Hub
that serves a local folder (or fails as it does offline)."""

from __future__ import annotations

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
    patterns = ["model.safetensors", "flowlm.json", "README.md", "tokenizer/*"]
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
