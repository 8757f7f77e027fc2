"""Warnings that tests trigger on purpose or that come from torch itself, filtered in exactly the tests that
trigger them (never globally), so that any other warning still stands out in the suite's output."""

import pytest

# The CPU tests run flex attention eagerly on purpose (its numerics, not its speed); torch warns once per process
# that the unfused path materialises the scores.
UNCOMPILED_FLEX = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning")

# torch.compile's inductor imports torch.utils.mkldnn, which (torch 2.13) still decorates methods with
# torch.jit.script_method and so warns once per process: torch's own code, not flowlm's.
TORCH_INDUCTOR_JIT = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

# The first forward-mode AD of a process (torch.func.jvp, forward_ad.make_dual) loads torch's JVP decompositions,
# which (torch 2.13) still register themselves through torch.jit.script and so warn once per decomposition: torch's
# own code, not flowlm's.
TORCH_FORWARD_AD_JIT = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
