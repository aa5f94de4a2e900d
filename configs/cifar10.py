"""CIFAR-10 ResNets and plain nets of Sec. 4.2 (Table 6, Fig. 6).

  python -m resnet_jax.main --config=configs/cifar10.py:depth=56 --workdir=runs/cifar10_resnet56
  python -m resnet_jax.main --config=configs/cifar10.py:depth=56,plain=True --workdir=runs/cifar10_plain56

Arguments: depth (6n+2, default 20), plain (False), shortcut ('A'), variant ('v1'), batch (128).
Recipe: SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 (scaled by batch / 128), divided by
10 at 32k and 48k iterations, stop at 64k; ResNet-110 and deeper warm up at lr 0.01 for 400
iterations. Pad-4 crop and flip, per-pixel mean subtracted. Trains on the paper's 45k/5k split
(train[:45000]), scored on the 5k validation images (train[45000:], eval/ metrics) and on the test
set (the named evaluation `evals.test`, eval_test/ metrics: Table 6's numbers). To train on all 50k
as for Table 6: --config.data.train_split=train --config.data.eval_split=test.
Should reach (Table 6, test error %): ResNet-20 8.75, -32 7.51, -44 7.17, -56 6.97, -110 6.43
(mean of 5: 6.61), -1202 7.93. The paper trains on two GPUs (64 examples per BN); this config
normalises over the whole batch unless --config.model.bn_group_size=64.
Needs tfds's cifar10 prepared offline: `tfds build cifar10 --data_dir=DIR` on a machine with internet.
"""

from resnet_jax.config import base_config, parse_arguments

DEFAULTS = dict(depth=20, plain=False, shortcut="A", variant="v1", batch=128)


def get_config(argument: str | None = None):
  args = parse_arguments(argument, DEFAULTS)
  c = base_config()
  c.model.update(dict(depth=args["depth"], dataset="cifar", shortcut=args["shortcut"],
                      plain=args["plain"], variant=args["variant"], num_classes=10))
  c.data.update(dict(source="tfds", name="cifar10", train_split="train[:45000]",
                     eval_split="train[45000:]", augmentation="crop_flip", pad=4,
                     normalization="pixel_mean", image_size=32))
  c.evals.test = "test"
  c.batch_size = args["batch"]
  c.num_train_steps = 64_000
  c.base_batch_size = 128  # lr 0.1 at this batch
  c.schedule.boundaries = (32_000, 48_000)
  if args["depth"] >= 110:
    c.schedule.update(dict(warmup=400.0, warmup_kind="constant", warmup_lr=0.01))
  c.eval_every_epochs = 10.0
  c.checkpoint_every_steps = 2_000
  return c
