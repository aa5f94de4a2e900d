"""TensorFlow for the input pipeline, imported through here (`from resnet_jax.data.tf_on_cpu import
tf`) so that it never claims the accelerators JAX uses: tf.data runs on the host's cores."""

import tensorflow as tf

tf.config.set_visible_devices([], "GPU")

__all__ = ["tf"]
