"""ebomlc: EBOMLC (efficient bilevel optimisation for meta label correction) and the methods it is
compared with, as an importable PyTorch library. Ray-free: the sweep runner lives in tune/."""
__version__ = "0.1.0"
