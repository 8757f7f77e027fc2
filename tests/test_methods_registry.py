"""The method registry is the only seam: a method defined and registered here, and nowhere else, trains with
``flowlm train --method toy``, samples with ``flowlm sample`` (its own option on the command line), evaluates
with ``flowlm eval`` and loads with ``flowlm.load``. Plus the registry's lookups and option rules."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import pytest
import torch
from test_judges import judge_dir  # noqa: F401  (a module fixture: the saved tiny GPT-2 judge)

import flowlm
from flowlm.cli import main
from flowlm.errors import CheckpointError, ConfigError
from flowlm.methods import Method, Option, registry

TRAIN = ["--preset", "tiny", "--tokenizer", "char", "--quiet", "data.seq_len=16", "model.hidden_size=32",
         "model.n_blocks=1", "model.n_heads=2", "model.cond_dim=16", "train.batch_size=8", "train.warmup_steps=1",
         "train.log_every=1", "train.ckpt_every=30", "train.val_every=30", "train.val_batches=1",
         "train.lr=1e-2"]  # fmt: skip


def check_temperature(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"temperature={value!r}: use a number > 0")
    return float(value)


class ToyUnigram(Method):
    """Position-wise unigram "diffusion": the DiT sees an all-zero state at τ = 0, so its logits depend on the
    position only; the loss is the exact NLL of that product distribution, the sampler draws each position."""

    name = "toy"
    title = "toy"
    card_text = "a toy position-wise unigram model (a registry test)"
    records = "toy"
    train_method = "toy"
    metric_key, metric_name = "nll", "nll"
    perplexity_name = "ppl"
    sampler_name = "unigram-draw"
    takes_steps = False
    suggested_steps = None
    options = (Option("temperature", 1.0, check_temperature, "divide the logits by this"),)

    @staticmethod
    def logits(net, n: int, seq_len: int, vocab: int, device) -> torch.Tensor:
        return net(torch.zeros(n, seq_len, vocab, device=device), torch.zeros(n, device=device))

    def loss(self, net, tokens, ctx, *, generator=None, sample_offset=0, rows=None):
        logits = self.logits(net, tokens.shape[0], tokens.shape[1], ctx.vocab_size, tokens.device)
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        return {"loss": nll, "nll": nll.detach()}

    def sample(self, request):
        logits = self.logits(request.net, request.num_samples, request.seq_len, request.vocab_size, request.device)
        probs = torch.softmax(logits.double() / request.options["temperature"], dim=-1)
        return torch.multinomial(probs.flatten(0, 1), 1, generator=request.generator).view(request.num_samples, -1)


@pytest.fixture
def toy():
    method = registry.register(ToyUnigram())
    try:
        yield method
    finally:
        registry.unregister("toy")


def test_a_registered_method_trains_samples_evaluates_and_loads(toy, tmp_path, judge_dir, capsys):  # noqa: F811
    run = tmp_path / "toy"
    assert main(["train", "--method", "toy", "--steps", "30", "--out", str(run), *TRAIN,
                 f"data.cache_dir={tmp_path / 'cache'}"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "sample from it with" in printed and "--steps" not in printed  # the toy takes no steps
    meta = json.loads((run / "model" / "flowlm.json").read_text())
    assert meta["method"] == "toy"
    metrics = (run / "logs").rglob("metrics.csv")
    assert any("val/ppl" in path.read_text().splitlines()[0] for path in metrics)  # a likelihood: exp logged

    model = flowlm.load(run)
    assert model.method_def is toy and model.sampler == "unigram-draw"
    texts = model.generate(3, seed=1)
    assert len(texts) == 3 and model.generate(3, seed=1) == texts
    # 30 steps at lr 1e-2 learn the corpus's unigram: the samples' characters are mostly letters and spaces
    chars = "".join(texts)
    assert sum(c.isalpha() or c.isspace() for c in chars) > 0.7 * len(chars), chars

    out = tmp_path / "s.jsonl"
    assert main(["sample", str(run), "-n", "2", "--temperature", "0.5", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["provenance"]["temperature"] == 0.5 and rows[0]["provenance"]["steps"] is None
    assert rows[0]["provenance"]["sampler"] == "unigram-draw"
    cold = model.sample_tokens(2, seed=0, temperature=0.5).tolist()
    assert [r["tokens"] for r in rows] == cold and cold != model.sample_tokens(2, seed=0).tolist()

    assert main(["sample", str(run), "--temperature", "-1"]) == 2
    assert "temperature=-1.0: use a number > 0" in capsys.readouterr().err
    assert main(["sample", str(run), "--gamma", "0.5"]) == 2
    assert "gamma is the churn of the flow-map sampler" in capsys.readouterr().err

    evaluated = tmp_path / "eval"
    assert main(["eval", str(run), "--steps", "1,2", "-n", "4", "--batch-size", "2", "--judge", str(judge_dir),
                 "--temperature", "2", "--out", str(evaluated), "--quiet"]) == 0  # fmt: skip
    results = json.loads((evaluated / "results.json").read_text())
    assert [r["steps"] for r in results["results"]] == [None]  # stepless: evaluated once
    assert results["provenance"]["sampling"]["temperature"] == 2.0
    assert math.isfinite(results["results"][0]["gen_ppl"])


def test_unknown_and_unregistered_methods_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--method", "toy", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'toy': choose one of flm, fmlm, mdlm, duo, ar, sdtt, dcd, fixed-point" in err
    assert "\n" not in err.strip()
    with pytest.raises(CheckpointError, match="holds a 'toy' model, which this flowlm cannot sample"):
        registry.for_recorded("toy")


def test_lookups_of_the_builtin_methods():
    assert registry.train_methods() == ["flm", "fmlm", "mdlm", "duo", "ar", "sdtt", "dcd", "fixed-point"]
    assert registry.distillation_recipes() == ["psd", "v1-stage1", "v1-stage2", "lsd-teacher", "lsd-ref", "sdtt", "dcd",
                                               "fixed-point"]  # fmt: skip
    # a fixed-point denoiser writes an "flm" model that its recorded recipe tells apart; a plain FLM records none
    assert registry.for_recorded("flm").name == "flm" and registry.for_recorded("flm", "fixed-point").name == (
        "flm-fixed-point")  # fmt: skip
    # distilled discrete models keep their teacher's method (and sampler), their recorded recipe picks the recipe
    assert registry.for_recorded("mdlm").name == "mdlm" and registry.for_recorded("mdlm", "sdtt").name == "mdlm-sdtt"
    assert registry.for_recorded("duo", "dcd").name == "duo-dcd" and registry.for_recorded("duo").name == "duo"
    assert registry.for_training("flm", "psd") is registry.get("flm")  # a one-recipe method ignores the recipe
    assert registry.for_training("fmlm", "v1-stage2").name == "fmlm-v1-stage2"
    # PSD and v1 stage 2 both write "fmlm" models; the recorded recipe tells them apart, PSD is the default
    assert registry.for_recorded("fmlm").name == "fmlm"
    assert registry.for_recorded("fmlm", "v1-stage2").name == "fmlm-v1-stage2"
    assert registry.for_recorded("fmlm-v1-stage1").samples_with_teacher
    assert registry.for_recorded("fmlm", "lsd-teacher").name == "fmlm-lsd-teacher"
    # the recipe's name before lsd-ref arrived, in old configs and flowlm.json files, still selects it
    assert registry.for_recorded("fmlm", "lsd").name == "fmlm-lsd-teacher"
    assert registry.for_recipe("lsd") is registry.for_recipe("lsd-teacher") is registry.for_training("fmlm", "lsd")
    assert registry.for_recorded("fmlm", "lsd-ref").name == "fmlm-lsd-ref"
    choices = "psd, v1-stage1, v1-stage2, lsd-teacher, lsd-ref, sdtt, dcd, fixed-point"
    with pytest.raises(ConfigError, match=f"distill.recipe='nope': choose one of {choices}"):
        registry.for_recipe("nope")
    assert registry.get("mdlm").dit_options == {"mask_input": True, "logit_cap": None}
    assert registry.get("ar").dit_options == {"causal": True, "logit_cap": None}
    with pytest.raises(ValueError, match="is registered"):
        registry.register(ToyUnigram()) and registry.register(ToyUnigram())
    registry.unregister("toy")


def test_option_rules():
    known = registry.sampler_options()
    flm, fmlm, ar = registry.get("flm"), registry.get("fmlm"), registry.get("ar")
    off = {"temperature": None, "top_p": None}  # tempering, an option of every built-in sampler but v1 stage 1
    flm_off = {"guidance": None, "sc_guidance": None, **off}
    assert flm.resolve_options({}, known) == flm_off
    assert flm.resolve_options({"sc_guidance": 2}, known) == {**flm_off, "sc_guidance": 2.0}
    with pytest.raises(ConfigError, match="sc_guidance applies to self-conditioned FLM models"):
        ar.resolve_options({"sc_guidance": 2.0}, known)
    # a flow map takes it (a map of a fixed-point denoiser reads w; check_request refuses it for the others)
    map_off = {"gamma": 0.0, "gamma_mode": "paper", "sc_guidance": None, **off}
    assert fmlm.resolve_options({"sc_guidance": 2.0}, known) == {**map_off, "sc_guidance": 2.0}
    assert fmlm.resolve_options({"gamma": 0.5}, known) == {**map_off, "gamma": 0.5}
    assert fmlm.resolve_options({"gamma_mode": "exact"}, known) == {**map_off, "gamma_mode": "exact"}
    assert ar.resolve_options({"temperature": 0.7, "top_p": 0.9}, known) == {"temperature": 0.7, "top_p": 0.9}
    for name, bad in (("temperature", 0.0), ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("top_p", "0.9")):
        with pytest.raises(ConfigError, match=f"{name}="):
            ar.resolve_options({name: bad}, known)
    with pytest.raises(ConfigError, match="temperature is not an option of the v1 stage-1 sampler"):
        registry.get("fmlm-v1-stage1").resolve_options({"temperature": 0.8}, known)
    with pytest.raises(ConfigError, match="gamma_mode='exactly'"):
        fmlm.resolve_options({"gamma_mode": "exactly"}, known)
    assert flm.resolve_options({"gamma_mode": "paper"}, known) == flm_off  # its off value
    assert flm.resolve_options({"gamma": 0.0}, known) == flm_off  # gamma's "off" value is accepted
    with pytest.raises(ConfigError, match="gamma is the churn"):
        flm.resolve_options({"gamma": 0.3}, known)
    with pytest.raises(ConfigError, match="autoguidance applies to FLM models"):
        fmlm.resolve_options({"guidance": 0.0}, known)  # guidance has no "off" value: refused outright
    for bad in (float("nan"), float("inf"), "2", True):
        with pytest.raises(ConfigError, match="guidance="):
            flm.resolve_options({"guidance": bad}, known)
    with pytest.raises(ConfigError, match="unknown sampler option 'temprature' for AR models"):
        ar.resolve_options({"temprature": 1.0}, known)
    with pytest.raises(ConfigError, match="leave steps"):
        ar.resolve_steps(8, 64)
    assert ar.resolve_steps(None, 64) is None and flm.resolve_steps(None, 64) == 64


def test_a_models_own_sampler_defaults_apply_unless_an_option_is_given():
    """An imported released model records its paper churn (meta["sampler_defaults"]); it is used unless given."""
    from flowlm.api import sampler_options

    fmlm = registry.get("fmlm")
    assert sampler_options(fmlm, {"gamma": 0.8})["gamma"] == 0.8
    assert sampler_options(fmlm, {"gamma": 0.8}, gamma=0.0)["gamma"] == 0.0
    assert sampler_options(fmlm, None, gamma=None)["gamma"] == 0.0  # None: not given


def test_no_method_name_comparisons_outside_flowlm_methods():
    """Issue 12's grep: dispatch on method names lives in flowlm.methods only."""
    src = Path(flowlm.__file__).parent
    pattern = re.compile(r"method (==|!=|in) ")
    hits = [
        f"{path.relative_to(src)}:{n}"
        for path in src.rglob("*.py")
        if "methods" not in path.relative_to(src).parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, hits


def flowlm_import_graph() -> dict[str, set[str]]:
    """Module -> the flowlm modules it imports, read from the source (imports inside functions included,
    ``if TYPE_CHECKING:`` blocks excluded: they never run)."""
    src = Path(flowlm.__file__).parent
    paths = {}
    for path in src.rglob("*.py"):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text())
        skipped = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        edges = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flowlm"):
                assert node.level == 0, f"{name}: relative import"
                edges |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module
                          for a in node.names}  # fmt: skip
        graph[name] = {e for e in edges if e in paths and e != name}
    return graph


def test_imports_point_one_way():
    """No import cycle among flowlm's modules (issue 12 broke api <-> demo, data.corpus <-> data.hf and
    eval.ar_judge <-> eval.judges): a depth-first search finds no back edge."""
    graph = flowlm_import_graph()
    assert "flowlm.data.hf" in graph["flowlm.data.sources"] and "flowlm.data.hf" not in graph["flowlm.data.corpus"]
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, cycles
