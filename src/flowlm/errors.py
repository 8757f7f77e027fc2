"""User-facing errors.

Every problem a user can fix (bad preset, unknown tokenizer, mismatched checkpoint, ...) raises a
:class:`FlowLMError` whose message is one line saying what is wrong and what to do. The CLI prints
that line and exits with status 2 instead of showing a traceback.
"""


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
    """Ctrl-C (SIGINT) stopped training; the newest checkpoint is kept and a rerun resumes from it.

    A KeyboardInterrupt, so code that stops on Ctrl-C keeps doing so; the CLI exits with status 130.
    """

    def __init__(self, step: int, saved_step: int | None):
        self.step, self.saved_step = step, saved_step
        if saved_step is None:
            resume = "no checkpoint was written yet, so a rerun starts afresh"
        else:
            resume = f"rerun the same command to resume from the checkpoint of step {saved_step}"
        super().__init__(f"interrupted at step {step}; {resume}")
