"""One registry of methods: names -> :class:`~flowlm.methods.base.Method` objects.

The built-in methods (FLM, FMLM by PSD, the two v1 stages, MDLM, AR) are registered on import; a user
registers another with :func:`register` and it can then be trained (``flowlm train --method NAME``),
sampled, evaluated and loaded like the built-in ones. Everything outside ``flowlm.methods`` asks this
module about a method instead of comparing names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from flowlm.errors import CheckpointError, ConfigError
from flowlm.methods.base import Method, Option
from flowlm.methods.builtin import BUILTIN

_METHODS: dict[str, Method] = {}
# distill.recipe names that were renamed: the old name (in configs, scripts and the flowlm.json of models written
# before) still selects the method. "lsd" became "lsd-teacher" when the reference code's LSD arrived as "lsd-ref".
RENAMED_RECIPES = {"lsd": "lsd-teacher"}


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` under ``method.name``; a second method of the same name (or selected by the same
    ``train.method`` / ``distill.recipe``) needs ``replace=True``. Returns the method."""
    if not isinstance(method, Method):
        raise TypeError(f"register() takes a flowlm.methods.Method instance, not {type(method).__name__}")
    clash = [
        m
        for m in _METHODS.values()
        if m.name != method.name
        and method.train_method is not None
        and (m.train_method, m.recipe) == (method.train_method, method.recipe)
    ]
    if (method.name in _METHODS or clash) and not replace:
        raise ValueError(f"a method named {method.name!r} (or selected by the same train.method) is registered")
    for old in clash:
        del _METHODS[old.name]
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a registered method (a no-op for unknown names)."""
    _METHODS.pop(name, None)


def methods() -> list[Method]:
    """Every registered method, in registration order."""
    return list(_METHODS.values())


def get(name: str) -> Method:
    """The method registered as ``name``."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}: choose one of {', '.join(_METHODS)}") from None


def train_methods() -> list[str]:
    """The values ``train.method`` accepts."""
    return list(dict.fromkeys(m.train_method for m in _METHODS.values() if m.train_method is not None))


def recipes(train_method: str) -> list[str]:
    """The ``distill.recipe`` values of the methods selected by ``train_method`` (empty for one-recipe methods)."""
    return [m.recipe for m in _METHODS.values() if m.train_method == train_method and m.recipe is not None]


def distillation_recipes() -> list[str]:
    """Every ``distill.recipe`` of a method that distills a teacher."""
    return [m.recipe for m in _METHODS.values() if m.distills and m.recipe is not None]


def for_training(train_method: str, recipe: str | None = None) -> Method:
    """The method that ``train.method`` (and, for methods with several recipes, ``distill.recipe``) select."""
    recipe = RENAMED_RECIPES.get(recipe, recipe)
    candidates = [m for m in _METHODS.values() if m.train_method == train_method]
    if not candidates:
        raise ConfigError(f"unknown method {train_method!r}: choose one of {', '.join(train_methods())}")
    if len(candidates) == 1 and candidates[0].recipe is None:
        return candidates[0]
    for method in candidates:
        if method.recipe == recipe:
            return method
    choices = ", ".join(m.recipe for m in candidates if m.recipe)
    raise ConfigError(f"distill.recipe={recipe!r}: choose one of {choices}")


def for_config(cfg) -> Method:
    """The method a :class:`~flowlm.config.RunConfig` trains."""
    return for_training(cfg.train.method, cfg.distill.recipe)


def for_recipe(recipe: str) -> Method:
    """The distillation method of ``distill.recipe`` (``flowlm distill --recipe``)."""
    recipe = RENAMED_RECIPES.get(recipe, recipe)
    for method in _METHODS.values():
        if method.distills and method.recipe == recipe:
            return method
    raise ConfigError(f"distill.recipe={recipe!r}: choose one of {', '.join(distillation_recipes())}")


def for_recorded(name: str | None, recipe: str | None = None, where: str = "this model") -> Method:
    """The method of a model whose ``flowlm.json`` records ``method`` = ``name`` (and ``recipe``, which picks
    among methods recording the same name; without it the first registered wins)."""
    candidates = [m for m in _METHODS.values() if name in m.recorded_names]
    recipe = RENAMED_RECIPES.get(recipe, recipe)
    if not candidates:
        raise CheckpointError(f"{where} holds a {name!r} model, which this flowlm cannot sample")
    return next((m for m in candidates if recipe is not None and m.recipe == recipe), candidates[0])


# DiT options that decide what a network computes: a network built for one method cannot run as another's
STRUCTURE = ("causal", "mask_input", "time_inputs")


def for_meta(meta: Mapping[str, Any], where: str = "this model") -> Method:
    """:func:`for_recorded` of a ``flowlm.json`` document, whose model config must be that method's network (its
    :data:`STRUCTURE` options as the method sets them), else the document was edited or mixed up with another's."""
    method = for_recorded(meta.get("method"), meta.get("recipe"), where)
    model = meta.get("model")
    if isinstance(model, Mapping):
        from flowlm.nn.dit import DiTConfig

        defaults = {f.name: f.default for f in fields(DiTConfig)}
        wanted = {**defaults, **method.dit_options, "time_inputs": method.time_inputs}
        wrong = [f"{key}={model.get(key, defaults[key])!r}" for key in STRUCTURE
                 if model.get(key, defaults[key]) != wanted[key]]  # fmt: skip
        if wrong:
            raise CheckpointError(
                f"{where}: its flowlm.json does not match its weights: it names method {meta.get('method')!r}, but "
                f"its model ({', '.join(wrong)}) is no {method.title} network; restore the flowlm.json written with "
                "these weights"
            )
    return method


def of_model(model) -> Method:
    """The method of a loaded model (a :class:`flowlm.FlowLM` or an object with ``method`` and ``meta``)."""
    method = getattr(model, "method_def", None)
    if isinstance(method, Method):
        return method
    meta = getattr(model, "meta", None) or {}
    return for_recorded(model.method, meta.get("recipe"), str(getattr(model, "path", "this model")))


def sampler_options() -> dict[str, Option]:
    """Every sampler option of the registered methods by name (the first method declaring a name wins)."""
    known: dict[str, Option] = {}
    for method in _METHODS.values():
        for option in method.options:
            known.setdefault(option.name, option)
    return known


for _method in BUILTIN:
    register(_method)
