"""User-facing errors.

Every problem a user can fix (bad preset, unknown tokenizer, mismatched checkpoint, ...) raises a
:class:`FlowLMError` whose message is one line saying what is wrong and what to do. The CLI prints
that line and exits with status 2 instead of showing a traceback.
"""

import signal


class FlowLMError(Exception):
    """A problem with the user's input or files, with a one-line message naming the fix."""


class CheckpointError(FlowLMError):
    """A checkpoint is missing, corrupt, or does not match what it is loaded into."""


class DataError(FlowLMError):
    """A corpus, dataset or tokenizer cannot be found or used."""


class ConfigError(FlowLMError):
    """A preset, override or option is unknown or out of range."""


class TrainingDivergedError(FlowLMError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped training; the newest checkpoint is kept and a rerun resumes from it.

    A KeyboardInterrupt, so code that stops on Ctrl-C keeps doing so. ``exit_status`` is what the CLI exits with,
    128 + the signal number as shells report a death by signal: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, step: int, saved_step: int | None, signum: int = signal.SIGINT):
        self.step, self.saved_step, self.signum = step, saved_step, int(signum)
        self.exit_status = 128 + self.signum
        if saved_step is None:
            resume = "no checkpoint was written yet, so a rerun starts afresh"
        else:
            resume = f"rerun the same command to resume from the checkpoint of step {saved_step}"
        how = "interrupted" if self.signum == signal.SIGINT else f"stopped by {signal.Signals(self.signum).name}"
        super().__init__(f"{how} at step {step}; {resume}")
