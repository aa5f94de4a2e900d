"""The input pipeline. `inputs` turns a config's `data` into what the trainer and the evaluator
consume, from one of two kinds of input: `in_memory` (decoded splits, from `sources`) or `streamed`
(tf.data over encoded images on disk, augmented by `augment`). `prepare` and `scan` are commands."""

from resnet_jax.data.inputs import Inputs, make_inputs

__all__ = ["Inputs", "make_inputs"]
