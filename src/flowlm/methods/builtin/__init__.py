"""The methods flowlm ships, one object per module, in the order the registry lists them."""

from flowlm.methods.builtin.ar import AR
from flowlm.methods.builtin.duo import DUO
from flowlm.methods.builtin.fixed_point import FIXED_POINT
from flowlm.methods.builtin.flm import FLM
from flowlm.methods.builtin.lsd import LSD
from flowlm.methods.builtin.lsd_reference import LSD_REFERENCE
from flowlm.methods.builtin.mdlm import MDLM
from flowlm.methods.builtin.psd import PSD
from flowlm.methods.builtin.self_distillation import DCD, SDTT
from flowlm.methods.builtin.v1_stage1 import V1_STAGE1
from flowlm.methods.builtin.v1_stage2 import V1_STAGE2

BUILTIN = (FLM, PSD, V1_STAGE1, V1_STAGE2, LSD, LSD_REFERENCE, MDLM, DUO, AR, SDTT, DCD, FIXED_POINT)
