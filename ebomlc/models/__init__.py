from ebomlc.models.meta import MetaLabelCorrector
from ebomlc.models.resnet import CifarResNet, build_resnet

__all__ = ["CifarResNet", "MetaLabelCorrector", "build_resnet"]
