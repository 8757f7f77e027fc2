"""Checks of user-given values that are not run-config fields: device names and sampling counts; a model's
``flowlm.json`` read before the model is loaded, to check options against it."""

from __future__ import annotations

import math
import numbers

import torch

from flowlm.config import MAX_WHOLE, device_count
from flowlm.errors import ConfigError

DEVICES = "cpu, cuda, cuda:N or mps"


def check_device(device: str | torch.device, option: str = "--device") -> torch.device:
    """``device`` as a torch.device that exists on this machine; a one-line ConfigError otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{option} {str(device)!r} is not a device: use {DEVICES}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"{option} {str(device)!r}: {build}; use cpu (or install a CUDA build of torch)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{option} {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0 ... cuda:{torch.cuda.device_count() - 1})"
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{option} {str(device)!r}: MPS (Apple GPU) is not available here; use cpu")
    elif parsed.type != "cpu":
        raise ConfigError(f"{option} {str(device)!r}: flowlm runs on {DEVICES}")
    return parsed


def check_accelerator(accelerator: str, devices) -> None:
    """``train.accelerator`` names hardware that exists (``auto`` always does)."""
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.accelerator={accelerator}: no CUDA GPU is available to this torch; use train.accelerator=cpu "
                "(or auto)"
            )
        wanted = device_count(devices)
        if wanted is not None and wanted > torch.cuda.device_count():
            raise ConfigError(
                f"train.devices={devices!r} asks for {wanted} GPUs but {torch.cuda.device_count()} are visible"
            )
    elif accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.accelerator=mps: MPS (Apple GPU) is not available here; use cpu or auto")


def check_whole(name: str, value, minimum: int = 1, *, optional: bool = False) -> None:
    """``value`` is a whole number from ``minimum`` to :data:`MAX_WHOLE` (or None when ``optional``)."""
    if optional and value is None:
        return
    real = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    given = f"{name} {value!r}" if name.startswith("--") else f"{name}={value!r}"  # CLI option or argument
    if not real or int(value) != value or value < minimum:
        raise ConfigError(f"{given}: use a whole number >= {minimum}")
    if value > MAX_WHOLE:
        raise ConfigError(f"{given}: use a whole number of at most {MAX_WHOLE} (2**31 - 1)")


def recorded_meta(checkpoint: str) -> dict | None:
    """The ``flowlm.json`` of a local model folder, run folder or demo model, read without loading the weights, so
    that options can be checked against it before any work; None for a Hub id (known only once downloaded) or a
    local folder of a released reference model (known only once converted, :func:`flowlm.load`)."""
    from flowlm.demo_models import PREFIX, demo_path
    from flowlm.hub import is_hub_id
    from flowlm.interop.released import is_released_folder
    from flowlm.training.checkpoint import read_meta, resolve_model_dir

    name = str(checkpoint)
    if name.startswith(PREFIX):
        return read_meta(demo_path(name))
    return None if is_hub_id(name) or is_released_folder(name) else read_meta(resolve_model_dir(name))
