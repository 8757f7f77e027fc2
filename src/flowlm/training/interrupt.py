"""Ctrl-C and SIGTERM during training: stop at the next optimizer step, after a complete checkpoint, never inside one.

Python turns SIGINT into a KeyboardInterrupt wherever the interpreter happens to be. Inside ``torch.save`` that
exception crosses torch's C++ zip writer, which reports it as an unrelated ``RuntimeError`` ("unexpected pos"), so
a Ctrl-C that lands during a checkpoint save looked like a crash (exit status 1, a traceback) instead of an
interruption. SIGTERM (``docker stop``, ``timeout``, systemd, SLURM preemption) went to Lightning's handler, which
stopped the loop without saving the step in progress and exited with status 0, so a scheduler saw success.

:class:`GracefulInterrupt` replaces both handlers while the training loop runs. The first SIGINT or SIGTERM only
records a request, and the loop stops after the optimizer step in progress; the checkpointing callback then saves
that step as the end of training does, and :func:`flowlm.train` raises :class:`flowlm.errors.TrainingInterrupted`
(the CLI exits with 128 + the signal number: 130 for SIGINT, 143 for SIGTERM). A second signal interrupts at once
(a KeyboardInterrupt), for a user who does not want to wait for the step, except while a checkpoint is being
written (:meth:`GracefulInterrupt.saving`): then it takes effect as soon as that save is complete.

Under DDP the ranks receive their signals at different moments, or only one of them does; they agree with one
all-reduce per optimizer step, so all of them stop at the same step. A signal that is ignored (SIGINT of a process
started with ``nohup ... &``) or handled by someone else (neither Python's default nor Lightning's) is left alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import torch
from lightning.pytorch.callbacks import Callback

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ours_to_take(signum: int, trainer) -> bool:
    """Whether the current handler of ``signum`` is a default we may replace (Python's or Lightning's own)."""
    handler = signal.getsignal(signum)
    if signum == signal.SIGINT:
        return handler is signal.default_int_handler
    return handler in (signal.SIG_DFL, None) or type(handler).__module__.startswith("lightning.")


class GracefulInterrupt(Callback):
    """Turns the first SIGINT or SIGTERM of a training loop into a stop after the current optimizer step.

    ``requested_at`` is the optimizer step at which training stopped because of it (None if it did not), and
    ``signum`` the signal (the largest number among the ranks' signals under DDP).
    """

    def __init__(self, world: int):
        self.world = world
        self.requested_at: int | None = None
        self.signum: int | None = None
        self._pending = 0
        self._previous: dict[int, object] = {}
        self._seen_step: int | None = None
        self._saving = False
        self._deferred = False

    @property
    def received(self) -> int | None:
        """The first signal this process received while training (None if none)."""
        return self._pending or None

    def _handler(self, signum, frame) -> None:
        if not self._pending:
            self._pending = signum
        elif self._saving:
            self._deferred = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def saving(self):
        """A second signal during the block waits for its end (a checkpoint save must not be cut by an exception)."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
        if self._deferred:
            self._deferred = False
            raise KeyboardInterrupt

    def on_train_start(self, trainer, module) -> None:
        self._seen_step = trainer.global_step
        if getattr(trainer, "received_sigterm", False):  # arrived while Lightning set up, before our handler
            self._pending = signal.SIGTERM
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            if _ours_to_take(signum, trainer):
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handler)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._seen_step:  # inside a gradient accumulation: only stop between optimizer steps
            return
        self._seen_step = step
        signum = self._pending
        if self.world > 1:
            agreed = torch.tensor(float(signum), device=module.device)
            signum = int(trainer.strategy.reduce(agreed, reduce_op="max").item())
        if signum:
            self.requested_at, self.signum = step, signum
            trainer.should_stop = True

    def on_train_end(self, trainer, module) -> None:
        self._restore()

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) is self._handler:
                signal.signal(signum, previous)
        self._previous = {}
