"""Ctrl-C during training: stop at the next optimizer step, after a complete checkpoint, never inside one.

Python turns SIGINT into a KeyboardInterrupt wherever the interpreter happens to be. Inside ``torch.save`` that
exception crosses torch's C++ zip writer, which reports it as an unrelated ``RuntimeError`` ("unexpected pos"), so
a Ctrl-C that lands during a checkpoint save looked like a crash (exit status 1, a traceback) instead of an
interruption. :class:`GracefulInterrupt` replaces the default SIGINT handler while the training loop runs: the first
Ctrl-C only records a request, and the loop stops after the optimizer step in progress; the checkpointing callback
then saves that step as the end of training does, and :func:`flowlm.train` raises
:class:`flowlm.errors.TrainingInterrupted`. A second Ctrl-C falls back to the previous handler (an immediate
KeyboardInterrupt), for a user who does not want to wait for the step.

Under DDP every rank gets its own SIGINT (a terminal signals the whole process group) at slightly different
moments; the ranks agree on stopping with one all-reduce per optimizer step, so all of them stop at the same step.
A process whose SIGINT is ignored (started with ``nohup ... &``) or not at Python's default handler is left alone.
"""

from __future__ import annotations

import signal
import threading

from lightning.pytorch.callbacks import Callback


class GracefulInterrupt(Callback):
    """Turns the first SIGINT of a training loop into a stop after the current optimizer step.

    ``requested_at`` is the optimizer step at which training stopped because of it (None if it did not).
    """

    def __init__(self, world: int):
        self.world = world
        self.requested_at: int | None = None
        self._pending = False
        self._previous = None
        self._seen_step: int | None = None

    def _handler(self, signum, frame) -> None:
        self._pending = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C interrupts at once

    def on_train_start(self, trainer, module) -> None:
        self._seen_step = trainer.global_step
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.default_int_handler
            signal.signal(signal.SIGINT, self._handler)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._seen_step:  # inside a gradient accumulation: only stop between optimizer steps
            return
        self._seen_step = step
        stop = self._pending
        if self.world > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.requested_at = step
            trainer.should_stop = True

    def on_train_end(self, trainer, module) -> None:
        self._restore()

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGINT) is self._handler:
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None
