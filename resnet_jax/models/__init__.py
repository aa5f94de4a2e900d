"""The networks of He et al. 2015; `build_model` builds any of them from a config."""

from resnet_jax.models.flops import count_params, module_macs
from resnet_jax.models.resnet import ModelConfig, ResNet, build_model

__all__ = ["ModelConfig", "ResNet", "build_model", "count_params", "module_macs"]
