"""ImageNet ResNet-18/34/50/101/152 and plain-18/34 of Sec. 3.4 (Tables 2-4).

  python -m resnet_jax.main --config=configs/imagenet.py:depth=50 --workdir=runs/imagenet_resnet50 \
      --config.data.data_dir=/data/imagenet
  python -m resnet_jax.main --config=configs/imagenet.py:depth=34,shortcut=A --workdir=runs/r34a ...
  python -m resnet_jax.main --config=configs/imagenet.py:depth=34,plain=True --workdir=runs/plain34 ...
  python -m resnet_jax.evaluate --config=configs/imagenet.py:depth=50 --workdir=runs/imagenet_resnet50 \
      --config.data.data_dir=/data/imagenet --config.data.eval_view=10crop

Arguments: depth (18/34/50/101/152, default 50), shortcut ('B'), plain (False), variant ('v1';
'v1.5' as torchvision), batch (256), epochs (90), dtype ('float32' or 'bfloat16'), source
('folder' or 'tfds').
Recipe: SGD momentum 0.9, weight decay 1e-4, batch 256, lr 0.1 x batch / 256, divided by 10 at
epochs 30 and 60 of 90 (the paper divides on plateaus; --config.schedule.boundaries=...), label
smoothing 0. Beyond the paper: --config.schedule.warmup=5 (Goyal et al.'s gradual warmup, epochs),
--config.schedule.decay=cosine, --config.optimizer.name=lars, --config.label_smoothing=0.1,
--config.ema_decay=0.9999.
Should reach (10-crop top-1/top-5 error %, Table 3): plain-34 28.54/10.02, ResNet-34 A 25.03/7.76,
B 24.52/7.46, C 24.19/7.40, ResNet-50 22.85/6.71, -101 21.75/6.05, -152 21.43/5.71; Table 2 (A):
plain-18 27.94, ResNet-18 27.88. Multi-scale (Table 4): ResNet-34 B 21.84/5.71, C 21.53/5.60,
ResNet-50 20.74/5.25, -101 19.87/4.60, -152 19.38/4.49. Center-crop top-1 of torchvision's 90-epoch
v1.5 recipe: ResNet-50 76.13.
Data: ILSVRC2012 as an image folder, data_dir/train/<synset>/*.JPEG and data_dir/val/<synset>/*.JPEG
(or a flat val/ with --config.data.eval_label_file); class k is the k-th synset in sorted order.
Records name the data by the folder's name; --config.data.name=imagenet2012 states that it is
ILSVRC2012, and the results table then shows the paper's numbers beside it.
Or source=tfds: the tfds imagenet2012 build in data_dir, made once from the two ILSVRC2012 tars by
`python -m resnet_jax.data.prepare imagenet2012 --manual_dir=TARS --data_dir=DIR` (same labels).
Train views: Sec. 3.4's scale augmentation [256, 480], 224 crop, flip, PCA lighting
(--config.data.augmentation=inception for the random-resized crop). Eval during training: one center
crop after resizing to 256; the paper's Table 3 protocol is --config.data.eval_view=10crop, Table
4's is --config.data.eval_view=multiscale (the whole image and its mirror at shorter sides
224/256/384/480/640; use a small --config.eval_batch_size, e.g. 64).
Evaluation sets beside the validation set (arguments of every ImageNet config; each adds a named
evaluation, scored by the trainer and by evaluate, recorded per set): imagenet_v2=FOLDER (ImageNet-V2
as shipped, class folders 0..999) or imagenet_v2=tfds:DATA_DIR (its tfds build); real=REAL_JSON (the
validation images against the ReaL labels, top-1, images without labels left out); imagenet_a=FOLDER,
imagenet_r=FOLDER (synset folders, scored among their own 200 classes). E.g.
  python -m resnet_jax.evaluate --config=configs/imagenet.py:depth=50,real=/data/real.json,imagenet_v2=/data/v2 \
      --workdir=runs/imagenet_resnet50 --config.data.data_dir=/data/imagenet
"""

from resnet_jax.config import EVAL_SET_ARGUMENTS, base_config, eval_sets_of, imagenet_data, parse_arguments

DEFAULTS = dict(depth=50, shortcut="B", plain=False, variant="v1", batch=256, epochs=90, dtype="float32",
                source="folder",
                **EVAL_SET_ARGUMENTS)


def get_config(argument: str | None = None):
  args = parse_arguments(argument, DEFAULTS)
  c = base_config()
  c.model.update(dict(depth=args["depth"], dataset="imagenet", shortcut=args["shortcut"],
                      plain=args["plain"], variant=args["variant"], num_classes=1000,
                      dtype=args["dtype"]))
  c.data.update(imagenet_data(args["source"]))
  c.data.update(dict(augmentation="paper", image_size=224, eval_resize=256, eval_view="center"))
  c.batch_size = args["batch"]
  c.eval_batch_size = 1000
  c.num_epochs = float(args["epochs"])
  c.schedule.update(dict(unit="epochs", boundaries=(30.0, 60.0)))
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 5_000
  c.evals.update(eval_sets_of(args))
  return c
