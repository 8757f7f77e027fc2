"""Lightning module that trains any flowlm method on the DiT backbone.

It owns the network, the EMA, the optimizer and the per-step random streams; what to train is the run's
method object (:mod:`flowlm.methods.registry`), whose loss :meth:`FlowLMModule.method_loss` calls.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch

from flowlm.config import RunConfig
from flowlm.errors import ConfigError, TrainingDivergedError
from flowlm.methods import registry
from flowlm.methods.base import LossContext
from flowlm.methods.common import LossWeighting
from flowlm.nn.dit import DiT
from flowlm.training.ema import EMA

# Checkpoints record how the step noise is laid out across ranks (FlowLMModule.global_draws): "global" = drawn
# for the whole global micro-batch and sliced per rank. Older multi-process checkpoints drew per rank.
DRAWS = "global"
DROPOUT_STREAM = 1 << 20  # step_seed stream of rank 0's global RNG in a multi-process run


def step_seed(seed: int, step: int, micro: int, stream: int) -> int:
    """A distinct 63-bit seed for (run seed, optimizer step, micro-batch, stream)."""
    value = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + micro * 0x94D049BB133111EB + stream) & (
        (1 << 63) - 1
    )
    return value


def rank_draws(shared: torch.Generator, rows_per_rank: int, index: int, rank: int, world: int) -> dict:
    """Keyword arguments of the method's loss that make rank ``rank``'s loss the slice of the loss one
    process computes on the whole global micro-batch number ``index`` (``world·rows_per_rank`` rows, rank r
    holding rows [r·B, (r + 1)·B), as :class:`~flowlm.training.batches.StepBatches` lays them out).

    ``shared`` must be seeded the same on every rank: all ranks draw the times and noise of all rows and
    keep their own (``rows``); ``sample_offset`` is the first sample of the global micro-batch.
    """
    return {
        "generator": shared,
        "rows": (rank * rows_per_rank, world * rows_per_rank),
        "sample_offset": index * world * rows_per_rank,
    }


class FlowLMModule(L.LightningModule):
    """``training_step`` computes the method's loss on one micro-batch of tokens [B, L]."""

    def __init__(
        self,
        cfg: RunConfig,
        vocab_size: int,
        accumulate: int = 1,
        teacher: DiT | None = None,
        stage1: DiT | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.accumulate = accumulate
        self.method = registry.for_config(cfg)
        given = {"teacher": teacher, "stage1": stage1}
        missing = [role for role in self.method.needs if given[role] is None]
        if missing:
            raise ValueError(f"method {self.method.name} needs its frozen networks: {', '.join(missing)}")
        frozen = tuple(given[role] for role in self.method.needs)
        self.net = self.method.build_network(cfg, vocab_size, frozen)
        # Frozen networks are kept out of the module's state dict (a plain list): checkpoints never contain them.
        self.frozen = [net.eval().requires_grad_(False) for net in frozen]
        weighted = cfg.train.loss_weighting or self.method.always_weighted
        two_times = self.method.weighting_times == 2
        self.weighting = LossWeighting(cfg.model.cond_dim, two_times=two_times) if weighted else None
        self.ema = EMA(self.net, cfg.train.ema_decay, warmup=cfg.train.ema_warmup)
        # Not registered as a submodule: the compiled wrapper shares self.net's parameters, and registering
        # it would store every weight twice in the training checkpoint.
        object.__setattr__(self, "_compiled", torch.compile(self.net) if cfg.train.compile else None)
        self._logged_step = -1
        self._pending_rng: dict | None = None
        self._nonfinite = None
        self._tokens = 0
        self._clock = time.perf_counter()
        self._ema_context = None
        self._val_sums: dict[str, torch.Tensor] = {}
        self._val_count = 0

    @property
    def train_net(self):
        return self._compiled if self._compiled is not None else self.net

    def method_loss(
        self,
        net,
        tokens: torch.Tensor,
        generator: torch.Generator,
        sample_offset: int = 0,
        rows: tuple[int, int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The method's loss dict for tokens [B, L]. ``rows = (first, total)``: ``tokens`` are rows
        [first, first + B) of a global micro-batch of ``total`` rows that starts at sample ``sample_offset``
        (a method that draws nothing ignores both)."""
        return self.method.loss(
            net, tokens, self.loss_context(), generator=generator, sample_offset=sample_offset, rows=rows
        )

    def loss_context(self) -> LossContext:
        frozen = tuple(self.frozen)
        return LossContext(self.vocab_size, self.cfg, frozen, self.weighting, self.global_step, self.training)

    def on_fit_start(self) -> None:
        for net in self.frozen:
            net.to(self.device)

    def generator(self, step: int, micro: int, stream: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(step_seed(self.cfg.train.seed, step, micro, stream))

    def global_draws(self, batch: torch.Tensor, step: int, micro: int, stream: int, index: int) -> dict:
        """:func:`rank_draws` for this rank, on this module's device."""
        return rank_draws(
            self.generator(step, micro, stream),
            batch.shape[0],
            index,
            self.global_rank,
            self.trainer.world_size,
        )

    def training_step(self, batch: tuple[int, torch.Tensor], batch_idx: int) -> torch.Tensor:
        index, batch = batch
        step, micro = divmod(int(index), self.accumulate)
        if step != self.global_step:  # the data position must follow the optimizer step, whatever Lightning counts
            raise RuntimeError(
                f"flowlm internal error: micro-batch {index} arrived at optimizer step {self.global_step} "
                f"(accumulation {self.accumulate}); please report it"
            )
        # DDP averages the per-rank mean losses: that is the global mean only if every rank holds B rows.
        if batch.shape[0] * self.trainer.world_size * self.accumulate != self.cfg.train.batch_size:
            raise ValueError(
                f"micro-batch of {batch.shape[0]} rows x {self.trainer.world_size} processes x {self.accumulate} "
                f"accumulation != train.batch_size={self.cfg.train.batch_size}"
            )
        out = self.method_loss(self.train_net, batch, **self.global_draws(batch, self.global_step, micro, 1, index))
        loss = out["loss"]
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else (self._nonfinite | bad)
        self._tokens += batch.numel() * self.trainer.world_size
        # Mean over ranks (equal-sized slices): the loss of the whole global micro-batch.
        self.log("train/loss", loss.detach(), prog_bar=True, sync_dist=True)
        self.log(f"train/{self.metric_name}", out[self.metric_key], sync_dist=True)
        for key in self.method.logged:
            self.log(f"train/{key}", out[key], sync_dist=True)
        return loss

    @property
    def metric_key(self) -> str:
        """The method's unweighted loss: denoising cross-entropy, v1 stage-1/2 map MSE, NLL bound or NLL."""
        return self.method.metric_key

    @property
    def metric_name(self) -> str:
        return self.method.metric_name

    def check_finite(self) -> None:
        """Raise if any loss on any rank since the last check was NaN/inf (one host sync, one all-reduce:
        every rank calls this at the same step, so all stop together instead of one waiting forever)."""
        bad = torch.zeros((), device=self.device) if self._nonfinite is None else self._nonfinite.float()
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        if bool(bad > 0):
            raise TrainingDivergedError(
                f"the training loss became NaN or infinite before step {self.global_step}: training stopped and "
                "the last good checkpoint was kept; lower train.lr or raise train.warmup_steps and resume"
            )
        self._nonfinite = None

    def on_train_start(self) -> None:
        # The global RNG drives dropout only. One process keeps the stream of seed_everything(seed); with
        # several, each rank gets its own so their dropout masks are independent (a resume restores them).
        if self.trainer.world_size > 1:
            torch.manual_seed(step_seed(self.cfg.train.seed, 0, 0, DROPOUT_STREAM + self.global_rank))

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        rng = self._pending_rng
        if rng is not None:
            if "cpu_per_rank" in rng:
                torch.set_rng_state(rng["cpu_per_rank"][self.global_rank].clone())
                if torch.cuda.is_available() and rng.get("cuda_per_rank") is not None:
                    torch.cuda.set_rng_state(rng["cuda_per_rank"][self.global_rank].clone())
            else:
                torch.set_rng_state(rng["cpu"])
                if torch.cuda.is_available() and rng.get("cuda"):
                    torch.cuda.set_rng_state_all(rng["cuda"])
            self._pending_rng = None

    def optimizer_step(self, *args, **kwargs) -> None:
        """One optimizer step, then the EMA update (before any callback can checkpoint this step)."""
        super().optimizer_step(*args, **kwargs)
        self.ema.update()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.global_step != self._logged_step:
            self._logged_step = self.global_step
            if self.global_step % self.cfg.train.log_every == 0:
                self.check_finite()
                now = time.perf_counter()
                self.log("train/tokens_per_s", self._tokens / max(now - self._clock, 1e-9), prog_bar=True)
                self._tokens, self._clock = 0, now

    def validation_step(self, batch: tuple[int, torch.Tensor], batch_idx: int) -> None:
        index, batch = batch
        draws = self.global_draws(batch, 0, index, 0, index)
        out = self.method_loss(self.net, batch, **draws)
        self.log(f"val/{self.metric_name}", out[self.metric_key], prog_bar=True, sync_dist=True)
        values = {self.metric_name: out[self.metric_key]}
        extra = self.method.validation_metrics(self.net, batch, self.loss_context(), draws["generator"], draws["rows"])
        for name, value in extra.items():
            self.log(f"val/{name}", value, sync_dist=True)
            values[name] = value
        for name, value in values.items():
            self._val_sums[name] = self._val_sums.get(name, 0.0) + value.detach().double()
        self._val_count += 1

    def on_validation_epoch_start(self) -> None:
        self._ema_context = self.ema.applied()
        self._ema_context.__enter__()
        self._val_sums, self._val_count = {}, 0

    def on_validation_epoch_end(self) -> None:
        # perplexities of the likelihoods: the metric when it is one (perplexity_name set), and any nll_bound
        perplexities = {"nll_bound": "ppl_bound"}
        if self.method.perplexity_name is not None:
            perplexities[self.metric_name] = self.method.perplexity_name
        for metric, name in perplexities.items():
            if metric not in self._val_sums:
                continue
            # exp of the mean NLL over all validation batches (equal sizes) and devices, not a mean of exps.
            total = self.trainer.strategy.reduce(self._val_sums[metric], reduce_op="sum")
            count = self.trainer.strategy.reduce(
                torch.tensor(float(self._val_count), device=total.device), reduce_op="sum"
            )
            self.log(f"val/{name}", math.exp(min(float(total / count), 700.0)))
        if self._ema_context is not None:
            self._ema_context.__exit__(None, None, None)
            self._ema_context = None

    def configure_optimizers(self):
        t = self.cfg.train
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)
        warmup = max(1, t.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Runs on every rank (only rank 0 writes): the per-rank global RNG states are gathered here."""
        checkpoint["ema"] = self.ema.state_dict()
        checkpoint["draws"] = DRAWS
        if self.trainer.world_size == 1:
            checkpoint["rng"] = {
                "cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
            return
        gather = self.trainer.strategy.all_gather
        cuda = gather(torch.cuda.get_rng_state().to(self.device)).cpu() if self.device.type == "cuda" else None
        checkpoint["rng"] = {"cpu_per_rank": gather(torch.get_rng_state().to(self.device)).cpu(), "cuda_per_rank": cuda}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.trainer.world_size > 1 and checkpoint.get("draws") != DRAWS and self.method.draws_noise:
            raise ConfigError(
                "this checkpoint comes from a multi-process run of an older flowlm that drew the training noise per "
                "rank; it cannot be resumed exactly: start a new run (a new --out folder) or resume with that version"
            )
        self.ema.load_state_dict(checkpoint["ema"])
        self._pending_rng = checkpoint.get("rng")
        self._logged_step = checkpoint.get("global_step", -1)
