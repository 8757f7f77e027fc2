"""The methods: the math (``common``, ``flm``, ``fmlm``, ``mdlm``, ``ar``, ``lowrank``: plain functions, no I/O)
and the method objects that the rest of flowlm asks about a method (:mod:`flowlm.methods.base`, one object
per built-in method in :mod:`flowlm.methods.builtin`, all of them in :mod:`flowlm.methods.registry`).

Add a method by subclassing :class:`Method` and registering an instance::

    from flowlm.methods import Method, registry

    class MyMethod(Method):
        name = records = train_method = "mine"
        ...

    registry.register(MyMethod())   # now: flowlm train --method mine, flowlm sample, flowlm.load, ...
"""

from flowlm.methods.base import LossContext, Method, Option, SampleRequest

__all__ = ["LossContext", "Method", "Option", "SampleRequest"]
