"""``flowlm.train(...)``: prepare data, build the Lightning trainer, fit, export the EMA model.

A run folder holds ``config.json`` (the resolved run config), ``checkpoints/last.ckpt`` and
``prev.ckpt`` (the full training state: weights, EMA, optimizer, loop position, RNG; for exact resumption;
see :mod:`flowlm.training.state`), ``.lock`` (held by the one process that writes the run), ``model/``
(the latest exported EMA model, see :mod:`flowlm.training.checkpoint`) and ``logs/session-<k>/``
(CSV and TensorBoard, one folder per launch, so a resumed run keeps the earlier metrics).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import warnings
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from flowlm.checks import check_accelerator
from flowlm.config import RunConfig, apply_overrides, device_count, load_preset
from flowlm.data import prepare_blocks, prepare_tokenizer
from flowlm.data.cache import default_cache_dir
from flowlm.errors import CheckpointError, ConfigError, TrainingInterrupted
from flowlm.methods import registry
from flowlm.paths import require_writable_dir
from flowlm.training.batches import RangeSampler, StepBatches, StepDataLoader, StepSampler
from flowlm.training.checkpoint import provenance, recover_dir, save_model
from flowlm.training.interrupt import GracefulInterrupt
from flowlm.training.lock import RunLock
from flowlm.training.module import FlowLMModule
from flowlm.training.preflight import check_distill_overrides, check_memory, check_out_apart
from flowlm.training.state import LAST, PREV, SafeCheckpointIO, newest_readable, os_error, recover_partials
from flowlm.training.warm_start import source_provenance, warm_start


class _NoAdverts(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger" line, printed on every run we start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_NO_ADVERTS = _NoAdverts()


class Checkpointing(Callback):
    """Every ``ckpt_every`` optimizer steps and at the end: save the training state and export the model."""

    def __init__(
        self,
        run_dir: Path,
        tokenizer,
        every: int,
        extra_meta: dict,
        interrupt: GracefulInterrupt,
        resumed_step: int | None = None,
    ):
        self.run_dir = run_dir
        self.interrupt = interrupt
        self.tokenizer = tokenizer
        self.every = every
        self.extra_meta = extra_meta
        self._saved_step = -1
        self.last_saved = resumed_step  # step of the newest training state on disk
        self.interrupted_at: int | None = None

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupted_at = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 and step != self._saved_step:
            self.save(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        if trainer.global_step != self._saved_step:
            self.save(trainer, module)

    def save(self, trainer, module: FlowLMModule) -> None:
        """Export the model, then the training state. In that order a training state is never newer than the
        exported model: a run stopped between the two writes retrains up to that step (exactly) and exports again,
        where the other order would leave a run that reached ``max_steps`` with an older model folder."""
        module.check_finite()
        self._saved_step = trainer.global_step
        with self.interrupt.saving():
            if trainer.is_global_zero:
                model_dir = self.run_dir / "model"
                try:
                    export_model(model_dir, module, self.tokenizer, trainer.global_step, self.extra_meta)
                except Exception as err:
                    if os_error(err) is None:
                        raise
                    raise CheckpointError(
                        f"could not export the model to {model_dir} ({os_error(err).strerror or os_error(err)}): "
                        "the checkpoints are intact; free space (or fix the folder) and rerun the same command to "
                        "resume"
                    ) from None
            trainer.save_checkpoint(self.run_dir / "checkpoints" / LAST, weights_only=False)
            self.last_saved = trainer.global_step


def export_model(directory: Path, module: FlowLMModule, tokenizer, step: int, extra_meta: dict) -> Path:
    """Write the EMA weights of ``module.net`` with provenance to ``directory``."""
    cfg = module.cfg
    meta = provenance(
        method=module.method.records,
        model=module.net.config.to_dict(),
        run=cfg.to_dict(),
        tokenizer={"spec": tokenizer.spec, "name": tokenizer.name, "vocab_size": tokenizer.vocab_size},
        vocab_size=module.vocab_size,
        step=step,
        weights="ema",
        ema_decay=cfg.train.ema_decay,
        **extra_meta,
    )
    return save_model(directory, module.ema.weights(), meta, tokenizer)


def world_size(cfg: RunConfig) -> int:
    """Processes in the run: devices per node × ``train.num_nodes`` (``auto``/-1: every visible GPU, or 1)."""
    devices = device_count(cfg.train.devices)
    if devices is None:
        gpu = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
        devices = max(1, torch.cuda.device_count()) if gpu else 1
    return devices * cfg.train.num_nodes


def batch_split(cfg: RunConfig, world: int) -> tuple[int, int]:
    """(per-device micro-batch, accumulation) with micro × world × accumulation = batch_size exactly.

    ``world`` = devices × nodes. Without ``train.micro_batch_size`` each device takes batch_size / world
    in one pass; with it, the remaining factor becomes gradient accumulation.
    """
    t = cfg.train
    micro = t.micro_batch_size or t.batch_size // world
    if micro < 1 or t.batch_size % (micro * world):
        raise ConfigError(
            f"train.batch_size={t.batch_size} cannot be split into micro_batch_size={micro} x {world} processes "
            f"({cfg.train.devices} devices x {cfg.train.num_nodes} nodes) x accumulation: choose sizes with "
            "batch_size = micro_batch_size x devices x num_nodes x accumulation"
        )
    return micro, t.batch_size // (micro * world)


def rank_and_world(trainer: L.Trainer, world: int) -> tuple[int, int]:
    """(this process's rank, processes) once launched; the batch split assumed ``world`` processes."""
    if trainer.world_size != world:
        raise ConfigError(
            f"the run was split for {world} processes (train.devices x train.num_nodes) but {trainer.world_size} "
            "were launched: make train.devices and train.num_nodes match the launcher (torchrun / SLURM)"
        )
    return trainer.global_rank, trainer.world_size


def resolve_precision(cfg: RunConfig) -> str:
    if cfg.train.precision != "auto":
        return cfg.train.precision
    use_gpu = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if use_gpu else "32-true"


def check_resumable(run_dir: Path, cfg: RunConfig) -> None:
    saved = run_dir / "config.json"
    if not saved.is_file():
        return
    before = json.loads(saved.read_text())["run"]
    now = json.loads(json.dumps(cfg.to_dict()))
    defaults = json.loads(json.dumps(RunConfig().to_dict()))
    for section in now:  # options added after the run started: absent there, so they must be at their default
        for key in now[section]:
            before.setdefault(section, {}).setdefault(key, defaults.get(section, {}).get(key))
    ignore = {
        *("max_steps", "max_minutes", "log_every", "ckpt_every", "val_every", "val_batches", "num_workers"),
        *("cache_dir", "compile"),
    }
    diffs = sorted(
        f"{section}.{key}"
        for section in now
        for key in now[section]
        if key not in ignore and before.get(section, {}).get(key) != now[section][key]
    )
    if diffs:
        raise ConfigError(
            f"{run_dir} holds a run with a different config ({', '.join(diffs)}): "
            "resume with the same options or pass a new --out folder"
        )


def resolve_teacher(teacher: str | os.PathLike) -> Path:
    """The model folder of a distillation's teacher (:func:`~flowlm.training.checkpoint.resolve_model_dir`); a released
    model in its Hub layout is one line naming the conversion to run first."""
    from flowlm.interop.released import is_released_folder
    from flowlm.training.checkpoint import resolve_model_dir

    if is_released_folder(Path(teacher)):
        raise CheckpointError(
            f"{str(teacher)!r} is a released model in its Hub layout (config.json + model.safetensors), not a flowlm "
            f"model folder: convert it once with flowlm import-reference {str(teacher)!r} --out DIR and pass DIR"
        )
    return resolve_model_dir(teacher)


def check_teacher_method(path: str, meta: dict, student=None) -> None:
    """The teacher must be a model the recipe distills (``student.teachers``: FLM for the flow maps, MDLM for SDTT,
    DUO for DCD); with no ``student`` given, any method some recipe distills."""
    method = registry.for_meta(meta, where=path)
    allowed = student.teachers if student is not None else tuple(
        {name for m in registry.methods() if m.distills for name in m.teachers}
    )
    if method.records not in allowed:
        recipe = "" if student is None else f" by the {student.recipe} recipe"
        raise ConfigError(
            f"the teacher {path} is a {method.records} model, which is not distilled{recipe}: distill a "
            f"{' or '.join(allowed)} model (trained by flowlm train --method {allowed[0]})"
        )
    if student is not None:
        student.check_teacher(meta.get("model") or {}, path)


def load_frozen(cfg: RunConfig):
    """(teacher DiT, stage-1 DiT or None, provenance dict) for distillation; (None, None, {}) otherwise.

    Both networks come with their EMA weights; the provenance names each by path and weight hash.
    """
    method = registry.for_config(cfg)
    if not method.distills:
        return None, None, {}
    from flowlm.api import load

    teacher = load(cfg.distill.teacher)
    check_teacher_method(cfg.distill.teacher, teacher.meta, method)
    meta = {
        "recipe": cfg.distill.recipe,
        "teacher": {"path": str(teacher.path), "weights_sha256": teacher.meta.get("weights_sha256")},
    }
    stage1 = None
    if "stage1" in method.needs:
        first = load(cfg.distill.stage1)
        if not first.method_def.stage1_provider:
            raise ConfigError(f"distill.stage1={cfg.distill.stage1} is a {first.method} model: pass a v1-stage1 run")
        if first.meta["teacher"]["weights_sha256"] != meta["teacher"]["weights_sha256"]:
            raise ConfigError("the stage-1 checkpoint was distilled from another teacher: use the same --teacher")
        stage1 = first.net
        meta["stage1"] = {"path": str(first.path), "weights_sha256": first.meta.get("weights_sha256")}
    return teacher.net, stage1, meta


def distill_config(
    teacher: str, preset_overrides: list[str] | tuple[str, ...] = (), recipe: str = "psd", stage1: str | None = None
) -> RunConfig:
    """The run config for distilling ``teacher``: its data and model, its conditional training (``train.condition_frac``
    and ``train.condition``: a teacher trained with clean context gets a student trained with the same), PSD defaults
    (SPEC §3: AdamW β₂ 0.95), the teacher's own learning rate (3e-4 for the paper's presets, as SPEC §3; 1e-3 for the
    tiny one, where the distillation study of docs/results.md measured it better than 3e-4), then the user's
    overrides, which may not change what the student takes from the teacher (its network: every ``model.*`` option;
    its tokenizer and length) or from the arguments (:func:`~flowlm.training.preflight.check_distill_overrides`)."""
    from flowlm.training.checkpoint import TOKENIZER, read_meta, resolve_model_dir

    check_distill_overrides(preset_overrides)
    directory = resolve_teacher(teacher)
    meta = read_meta(directory)
    check_teacher_method(str(directory), meta, registry.for_recipe(recipe))
    # the teacher's own run, read as a plain training of its recorded method (a distilled teacher's run names its
    # recipe, which the student's replaces)
    run = {k: v for k, v in meta["run"].items() if k != "distill"}
    run["train"] = {**run.get("train", {}), "method": registry.for_recorded(meta.get("method")).train_method}
    cfg = RunConfig.from_dict(run)
    cfg.data.tokenizer = str(directory / TOKENIZER)
    cfg.train.method = registry.for_recipe(recipe).train_method
    cfg.train.init_from = None  # the teacher's own warm start; the student starts from the teacher
    cfg.train.betas = (0.9, 0.95)
    cfg.distill.teacher = str(directory)
    cfg.distill.recipe = recipe
    cfg.distill.stage1 = str(resolve_model_dir(stage1)) if stage1 else None
    cfg = apply_overrides(cfg, list(preset_overrides))
    # recorded as a number (the recipe's default unless overridden), as runs written before per-recipe defaults did
    cfg.distill.diag_frac = cfg.distill.resolved_diag_frac()
    return cfg


def train(
    preset: str = "tiny",
    overrides: list[str] | tuple[str, ...] = (),
    out: str | Path | None = None,
    *,
    method: str | None = None,
    data: str | None = None,
    tokenizer: str | None = None,
    steps: int | None = None,
    config: RunConfig | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Train a model and return the exported model folder (``<out>/model``).

    The same options as ``flowlm train``: ``preset`` names a YAML preset (``tiny``, ``small``,
    ``lm1b-small``, ``owt-small``), ``method``/``data``/``tokenizer``/``steps`` are the shortcuts
    for ``train.method``/``data.corpus``/``data.tokenizer``/``train.max_steps``, and ``overrides``
    are ``section.key=value`` strings. With ``resume`` (default) the newest readable of
    ``<out>/checkpoints/last.ckpt`` / ``prev.ckpt`` is continued exactly; a run already at ``max_steps``
    raises ConfigError and changes nothing. One process at a time may train into ``out`` (a second one
    gets a ConfigError naming the holder's pid); Ctrl-C raises :class:`flowlm.errors.TrainingInterrupted`.

    Before the run folder is created (:mod:`flowlm.training.preflight`): a distillation (``config`` from
    :func:`distill_config`) refuses overrides of what it takes from its teacher, ``out`` must not overlap the
    teacher's (or stage-1 model's) folder, and a micro-batch must fit the memory it trains in.
    """
    shortcuts = {"train.method": method, "data.corpus": data, "data.tokenizer": tokenizer, "train.max_steps": steps}
    overrides = list(overrides) + [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    base = config if config is not None else load_preset(preset)
    distilling = registry.for_config(base).distills
    if distilling:  # a config of distill_config: what it took from the teacher stays
        check_distill_overrides(overrides)
    cfg = apply_overrides(base, overrides)
    if registry.for_config(cfg).distills and not distilling:
        raise ConfigError(
            f"train.method={cfg.train.method} distills a teacher, from which the run takes its network, tokenizer and "
            "length: use flowlm distill --teacher CKPT (in Python: train(config=distill_config(CKPT)))"
        )
    check_accelerator(cfg.train.accelerator, cfg.train.devices)
    out = out or f"runs/{preset}-{cfg.train.method}"
    check_out_apart(out, cfg)
    world = world_size(cfg)
    check_memory(cfg, batch_split(cfg, world)[0], world // cfg.train.num_nodes)
    run_dir = require_writable_dir(out, "--out")
    require_writable_dir(cfg.data.cache_dir or default_cache_dir(), "data.cache_dir")
    with RunLock(run_dir) if launching_process() else contextlib.nullcontext():
        return _train(cfg, run_dir, resume, progress)


def launching_process() -> bool:
    """True in the process a user started (global rank 0), which holds the run lock; False in the other
    ranks of a multi-process launch (Lightning's own, torchrun or SLURM), which read the lock holder's state."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def resume_point(run_dir: Path, cfg: RunConfig, resume: bool) -> tuple[Path, dict] | None:
    """(path, state) of the training state to continue from, or None to start afresh.

    Raises when the state is already at or past ``train.max_steps``, before anything in the run folder changes.
    """
    if not resume:
        return None
    found = newest_readable(run_dir / "checkpoints")
    if found is None:
        return None
    check_resumable(run_dir, cfg)
    step = found[1]["global_step"]
    if step >= cfg.train.max_steps:
        raise ConfigError(
            f"{run_dir} is already at step {step}, not before train.max_steps={cfg.train.max_steps}: nothing was "
            f"trained or changed; its model is in {run_dir / 'model'}. Pass --steps above {step} to train on"
        )
    return found


def check_state_fits(module: FlowLMModule, path: Path, state: dict) -> None:
    """CheckpointError unless the training state in ``path`` holds exactly the tensors (names and shapes) of
    ``module``, before Lightning would fail deep inside ``load_state_dict``."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.get("state_dict", {}).items() if isinstance(v, torch.Tensor)}
    if found == expected:
        return
    key = sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected[k])
    shown = f"{key[0]}: {list(found[key[0]]) if key[0] in found else 'absent'} in the file, " + (
        f"{list(expected[key[0]])} in this run's config" if key[0] in expected else "absent in this run's config"
    )
    raise CheckpointError(
        f"{path} holds a model of another shape ({shown}), so it is not a checkpoint of this run: start afresh with "
        "--no-resume or train into a new --out folder"
    )


def _train(cfg: RunConfig, run_dir: Path, resume: bool, progress: bool) -> Path:
    if launching_process():
        recover_dir(run_dir / "model")
        recover_partials(run_dir / "checkpoints")
    resumed = resume_point(run_dir, cfg, resume)
    teacher, stage1, teacher_meta = load_frozen(cfg)
    tokenizer = prepare_tokenizer(cfg.data.tokenizer, cfg.data.corpus, cache_dir=cfg.data.cache_dir)
    if teacher is not None and tokenizer.vocab_size != teacher.config.vocab_size:
        raise ConfigError(
            f"data.tokenizer gives {tokenizer.vocab_size} tokens but the teacher has {teacher.config.vocab_size}: "
            "distill with the teacher's tokenizer (flowlm distill sets it)"
        )
    train_blocks = prepare_blocks(cfg.data.corpus, tokenizer, cfg.data.seq_len, "train", cache_dir=cfg.data.cache_dir)
    val_blocks = prepare_blocks(
        cfg.data.corpus, tokenizer, cfg.data.seq_len, "validation", cache_dir=cfg.data.cache_dir
    )

    world = world_size(cfg)
    micro, accumulate = batch_split(cfg, world)
    L.seed_everything(cfg.train.seed, verbose=False)
    module = FlowLMModule(cfg, tokenizer.vocab_size, accumulate, teacher=teacher, stage1=stage1)
    if resumed is not None:
        check_state_fits(module, *resumed)
    if resumed is None and launching_process():
        # Starting afresh (--no-resume): an earlier run's state must not become this run's prev.ckpt, which a
        # crash during this run's first save would then resume from.
        for name in (LAST, PREV):
            (run_dir / "checkpoints" / name).unlink(missing_ok=True)
    extra_meta = dict(teacher_meta)
    if cfg.train.init_from and resumed is not None:  # the checkpoint holds the warm-started (since trained) weights
        extra_meta["init_from"] = source_provenance(cfg.train.init_from)
    elif cfg.train.init_from:
        extra_meta["init_from"] = warm_start(module.net, module.ema, cfg.train.init_from)
    # Every process of a multi-process launch writes the same file: atomically, so that no process can read
    # another's half-written copy in check_resumable.
    partial = run_dir / f"config.json.{os.getpid()}"
    partial.write_text(
        json.dumps(provenance(run=cfg.to_dict(), vocab_size=tokenizer.vocab_size, tokenizer=tokenizer.spec), indent=2)
    )
    os.replace(partial, run_dir / "config.json")

    # One log folder per launch (logs/session-0, session-1, ... after resumptions): Lightning's CSV
    # logger would otherwise overwrite the metrics of the interrupted launch.
    log_version = f"session-{len(list((run_dir / 'logs').glob('session-*')))}"
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NO_ADVERTS)  # a set: added once
    interrupt = GracefulInterrupt(world)
    checkpointing = Checkpointing(
        run_dir, tokenizer, cfg.train.ckpt_every, extra_meta, interrupt, resumed[1]["global_step"] if resumed else None
    )
    trainer = L.Trainer(
        max_steps=cfg.train.max_steps,
        max_time=timedelta(minutes=cfg.train.max_minutes) if cfg.train.max_minutes else None,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=cfg.train.grad_clip,
        precision=resolve_precision(cfg),
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        logger=[
            CSVLogger(run_dir, name="logs", version=log_version),
            TensorBoardLogger(run_dir, name="logs", version=log_version, default_hp_metric=False),
        ],
        callbacks=[checkpointing, interrupt]
        + ([TQDMProgressBar(refresh_rate=max(1, cfg.train.log_every // 5))] if progress else []),
        enable_progress_bar=progress,
        enable_checkpointing=False,
        enable_model_summary=progress,
        num_sanity_val_steps=0,
        val_check_interval=cfg.train.val_every * accumulate,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.train.val_batches,
        log_every_n_steps=cfg.train.log_every,
        use_distributed_sampler=False,
        default_root_dir=run_dir,
        plugins=[SafeCheckpointIO(resumed)],
    )

    class Data(L.LightningDataModule):
        # Built after the processes are launched, when each knows its rank.
        def train_dataloader(self):
            dataset = StepBatches(train_blocks, micro, cfg.train.seed, *rank_and_world(trainer, world))
            sampler = StepSampler(lambda: trainer.global_step * accumulate)
            return StepDataLoader(dataset, batch_size=None, sampler=sampler, num_workers=cfg.train.num_workers)

        def val_dataloader(self):
            rank = rank_and_world(trainer, world)
            dataset = StepBatches(val_blocks, micro, cfg.train.seed + 1, *rank, length=cfg.train.val_batches)
            return StepDataLoader(dataset, batch_size=None, sampler=RangeSampler(0, cfg.train.val_batches))

    with warnings.catch_warnings():
        # Lightning 2.6's pytree helper builds torch's LeafSpec, which torch >= 2.10 deprecates: a warning about
        # Lightning's internals that users cannot act on, printed on every run
        warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
        try:
            trainer.fit(module, datamodule=Data(), ckpt_path=str(resumed[0]) if resumed else None)
        except SystemExit:  # a second Ctrl-C: Lightning turns it into sys.exit(1) after its teardown
            if checkpointing.interrupted_at is None:
                raise
            signum = interrupt.received or signal.SIGINT
            raise TrainingInterrupted(checkpointing.interrupted_at, checkpointing.last_saved, signum) from None
    if interrupt.requested_at is not None:  # the first Ctrl-C or SIGTERM: stopped after a step, which was saved
        raise TrainingInterrupted(interrupt.requested_at, checkpointing.last_saved, interrupt.signum)
    return run_dir / "model"
