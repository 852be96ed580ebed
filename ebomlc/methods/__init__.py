"""The method registry: name -> Method class. Every method is imported here explicitly, so none
silently vanishes; `METHODS` is what the config, the CLI and the sweeps validate against."""
from __future__ import annotations

from ebomlc.methods.base import Batch, EvalOutput, Method, MethodContext
from ebomlc.methods.ebomlc import EBOMLC
from ebomlc.methods.erm import ERM
from ebomlc.methods.mlc import MLC
from ebomlc.methods.mlc_d import MLCD

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (ERM, EBOMLC, MLCD, MLC)}


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


__all__ = ["Batch", "EvalOutput", "Method", "MethodContext", "METHODS", "get_method"]
