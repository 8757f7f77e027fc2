"""Checks of a training run made before its folder is created (docs/reliability.md §5): the options a distillation
takes from its teacher, an output folder that would overwrite a frozen model the run reads, and whether one
micro-batch can fit the device's memory at all.

The memory estimate is a lower bound of a training step's peak on one device, from the model's shape alone:

- parameters: ``n_blocks · (4 + 2·mlp_ratio) · d²`` weights (attention and MLP; embeddings, head and adaLN left
  out), 20 bytes each (float32 weights, gradients and Adam's two moments, the EMA); 4 more per frozen network;
- activations kept for the backward pass: ``(mlp_ratio + 4) · d`` values per token per block (the MLP's hidden
  layer, the block input, its normalized copy, the attention output), 2 bytes under bf16/16-mixed, else 4 (8: 64);
- attention scores, where they are materialized (``model.attn_backend=math``, which ``auto`` picks on a CPU when
  there is a soft-cap; flash and flex on a GPU keep none): one float32 [micro, heads, L, L] tensor per block;
- a distillation's logits: the student's and its target, two float32 [micro, L, V] tensors.

Real peaks are several times higher (docs/gpu.md: the 139M-parameter model at a batch of 64 and L = 128 peaked at
11.7 GB, where this bound gives 2.9 GB), so a refused run could not have fitted; a run that passes may still not.
It is compared with the memory of the smallest visible GPU when the run trains on CUDA, else with the memory
available now (``MemAvailable`` of /proc/meminfo, else the physical memory), shared by the processes of a node.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from flowlm.errors import ConfigError

# Given as overrides to a distillation these would be recorded but not used (or break it): the student is a copy of
# the teacher's network (every model.* option) working on the teacher's tokenizer and length.
FROM_TEACHER = ("data.tokenizer", "data.seq_len")
# Set by flowlm distill's own flags (and checked there); train.method is the recipe's.
FLAGS = {"distill.teacher": "--teacher", "distill.recipe": "--recipe", "distill.stage1": "--stage1"}


def fixed_by_teacher(key: str) -> bool:
    """Whether a distillation takes the option ``key`` (e.g. ``model.hidden_size``) from its teacher."""
    return key.startswith("model.") or key in FROM_TEACHER


def check_distill_overrides(overrides: list[str] | tuple[str, ...]) -> None:
    """Refuse the overrides of a distillation that would change what it takes from the teacher or from its flags."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if fixed_by_teacher(key):
            raise ConfigError(
                f"{item}: a distilled student is a copy of the teacher's network and works on its tokenizer and "
                f"length, so {key} cannot be changed: drop it (distill a teacher trained with it instead)"
            )
        if key in FLAGS:
            raise ConfigError(f"{item}: give it as flowlm distill {FLAGS[key]}, which sets up the run from it")
        if key == "train.method":
            raise ConfigError(
                f"{item}: flowlm distill trains a flow map (FMLM) from its teacher: drop train.method and choose "
                "the recipe with --recipe (for another method, flowlm train --method)"
            )


def _guarded_folder(model_dir: str | Path) -> Path:
    """The folder a run must not write into to keep the model folder ``model_dir``: its training run folder (the
    parent of ``<run>/model``, which holds ``config.json``), else the model folder itself."""
    model_dir = Path(model_dir).expanduser().resolve()
    if model_dir.name == "model" and (model_dir.parent / "config.json").is_file():
        return model_dir.parent
    return model_dir


def check_out_apart(out: str | Path, cfg) -> None:
    """The run folder ``out`` and the folder of each frozen model the run reads (a distillation's teacher and
    stage-1 map) must not overlap: a run deletes its folder's checkpoints (``--no-resume``) and exports into
    ``<out>/model``."""
    from flowlm.methods import registry

    run_dir = Path(out).expanduser().resolve()
    for role in registry.for_config(cfg).needs:
        name = "stage-1 model" if role == "stage1" else role
        guarded = _guarded_folder(getattr(cfg.distill, role))
        if run_dir == guarded or guarded in run_dir.parents:
            where = "is" if run_dir == guarded else "lies inside"
            raise ConfigError(
                f"--out {out} {where} the {name}'s folder {guarded}: the run would delete its checkpoints and "
                "overwrite its model; choose an --out outside it"
            )
        if run_dir in guarded.parents:
            raise ConfigError(
                f"--out {out} holds the {name} ({guarded}): the run writes model/, checkpoints/ and logs/ into "
                f"--out; choose an --out that does not contain the {name}"
            )


def training_bytes(cfg, micro: int, on_gpu: bool, vocab_size: int | None = None) -> dict[str, int]:
    """The lower bound of the module docstring, term by term (bytes), for micro-batches of ``micro`` sequences;
    ``vocab_size`` (a distillation's, read from its teacher before the run's tokenizer is built) adds the logits."""
    from flowlm.methods import registry

    m, length = cfg.model, cfg.data.seq_len
    method = registry.for_config(cfg)
    precision = cfg.train.precision if cfg.train.precision != "auto" else ("bf16-mixed" if on_gpu else "32")
    value_bytes = 2 if precision in ("bf16-mixed", "16-mixed") else 8 if precision.startswith("64") else 4
    weights = m.n_blocks * (4 + 2 * m.mlp_ratio) * m.hidden_size**2
    terms = {
        "parameters": weights * (20 + 4 * len(method.needs)),
        "activations": m.n_blocks * micro * length * (m.mlp_ratio + 4) * m.hidden_size * value_bytes,
    }
    softcap = method.dit_options.get("attn_softcap", m.attn_softcap)
    if m.attn_backend == "math" or (m.attn_backend == "auto" and not on_gpu and softcap is not None):
        terms["attention scores"] = m.n_blocks * micro * m.n_heads * length**2 * 4
    if vocab_size:
        terms["logits"] = 2 * micro * length * vocab_size * 4
    return terms


def uses_gpu(cfg) -> bool:
    """Whether the run trains on CUDA (as Lightning resolves ``train.accelerator``)."""
    return torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda")


def memory_bytes(on_gpu: bool) -> int | None:
    """The smallest visible GPU's memory; else the memory available now (see the module docstring); None if unknown."""
    if on_gpu:
        return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    try:
        with open("/proc/meminfo") as f:
            available = [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
        if available:
            return available[0]
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(cfg, micro: int, processes_per_node: int) -> None:
    """Refuse a run whose lower bound (:func:`training_bytes`) exceeds the memory it trains in."""
    from flowlm.methods import registry
    from flowlm.training.checkpoint import read_meta

    on_gpu = uses_gpu(cfg)
    vocab_size = None
    if registry.for_config(cfg).distills:  # the teacher's vocabulary: the run's tokenizer is not built yet
        vocab_size = (read_meta(Path(cfg.distill.teacher)).get("model") or {}).get("vocab_size")
    terms = training_bytes(cfg, micro, on_gpu, vocab_size)
    need = sum(terms.values()) * (1 if on_gpu else processes_per_node)
    have = memory_bytes(on_gpu)
    if have is None or need <= have:
        return
    gib = 2**30
    parts = ", ".join(f"{name} {value / gib:.3g} GiB" for name, value in terms.items())
    if need > sum(terms.values()):
        parts += f"; for each of {processes_per_node} processes on this machine"
    there = f"the GPU has {have / gib:.3g} GiB" if on_gpu else f"{have / gib:.3g} GiB of memory is available"
    raise ConfigError(
        f"a training step on micro-batches of {micro} x data.seq_len={cfg.data.seq_len} tokens needs at least "
        f"{need / gib:.3g} GiB ({parts}) but {there}: lower data.seq_len, train.micro_batch_size (gradient "
        "accumulation keeps train.batch_size) or the model size (the estimate: flowlm.training.preflight)"
    )
