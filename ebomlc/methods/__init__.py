"""The method registry: name -> Method class. Every method is imported here explicitly, so none
silently vanishes; `METHODS` is what the config, the CLI and the sweeps validate against."""
from __future__ import annotations

from ebomlc.methods.base import Batch, EvalOutput, Method, MethodContext
from ebomlc.methods.coteaching_plus import CoteachingPlus
from ebomlc.methods.dividemix import DivideMix
from ebomlc.methods.ebomlc import EBOMLC
from ebomlc.methods.erm import ERM
from ebomlc.methods.glc import GLC
from ebomlc.methods.l2rw import L2RW
from ebomlc.methods.mlc import MLC
from ebomlc.methods.mlc_d import MLCD
from ebomlc.methods.mwnet import MWNet
from ebomlc.methods.pmwnet import PMWNet

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (ERM, EBOMLC, MLCD, MLC, GLC, L2RW, MWNet, PMWNet,
                                                                  CoteachingPlus, DivideMix)}


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


__all__ = ["Batch", "EvalOutput", "Method", "MethodContext", "METHODS", "get_method"]
