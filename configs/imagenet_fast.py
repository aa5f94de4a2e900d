"""FFCV's fast ImageNet schedules (libffcv/ffcv-imagenet, rn18_configs/ and rn50_configs/): ResNet-18
or -50 in 16 to 88 epochs with progressive resizing, BlurPool, label smoothing and a flip at test time.

  python -m resnet_jax.main --config=configs/imagenet_fast.py:depth=50,epochs=16 --workdir=runs/ffcv_rn50_16 \
      --config.data.data_dir=/data/imagenet

Arguments: depth (18 or 50, default 50), epochs (16, 24, 32, 40, 56 or 88; default 16), batch
(FFCV's: 1024 for ResNet-18 on one GPU, 8 x 512 = 4096 for ResNet-50 on eight), dtype ('float32';
FFCV trains in float16 autocast, the nearest here is 'bfloat16'), source ('folder' or 'tfds').
Should reach (FFCV's table, top-1/top-5 %, on 8 A100s for ResNet-50 and one for ResNet-18):
  epochs        16         24         32         40         56         88
  ResNet-50  73.8/90.8  75.6/92.1  76.6/92.7  77.2/93.2  78.0/93.7  78.4/94.1  (14.9 to 77.2 min)
  ResNet-18  66.9/86.8  68.8/88.1  70.0/88.9  70.6/89.4  71.3/89.9  72.4/90.3  (35.0 to 187.3 min)
Not yet measured here on ImageNet.

The recipe, part by part as FFCV's train_imagenet.py and its YAML files set it:
- torchvision's ResNet (v1.5 for ResNet-50), BlurPool before every strided convolution of 16 or
  more input channels (model.blurpool).
- Train views: random-resized crop (scale 0.08-1, ratio 3/4-4/3) and flip, at 160 px until
  start_ramp, 192 px from end_ramp, between them FFCV's linear ramp rounded to a multiple of 32
  (so 160 until half way through the ramp, then 192); the size of a step follows from its epoch.
- Eval: the center 224/256 of the shorter side at 256 px, and its mirror image; the logits of the
  two are summed (data.eval_flip, data.eval_average='logits').
- SGD, momentum 0.9, no Nesterov; weight decay 1e-4 (ResNet-50) or 5e-5 (ResNet-18) on every
  parameter except the stem's and the branches' BN (FFCV's "bn" in the name; the shortcut
  projections' BN and the fc bias are decayed: optimizer.no_decay='stem_and_branch_norms').
- Label smoothing 0.1; learning rate ("cyclic"): from 1e-4 x peak linearly up to the peak at
  epoch 2, then linearly down to 0 at the end, set every step; peak 1.7 at batch 4096 (ResNet-50),
  0.5 at 1024 (ResNet-18), scaled linearly with --config.batch_size (FFCV does not scale it).
Where ours differs, and why:
- FFCV stores the images re-encoded (ResNet-50: longer side at most 500 px, half of them as
  quality-90 JPEG; ResNet-18: 400 px, a tenth as JPEG) and resizes with OpenCV's area filter. We
  read the original JPEGs and resize with TensorFlow's antialiased bilinear filter
  (data.train_antialias=True); the crops' geometry is the same.
- The eval view: FFCV crops 224/256 of the shorter side and resizes that to 256; we resize the
  shorter side to 293 and crop 256 (256/293 = 0.874 of the side instead of 0.875).
- FFCV's random-resized crop falls back to a center crop of clamped aspect after 10 failed
  tries; ours (TensorFlow's sampler) to the whole image.
- Order: FFCV's loader shuffles each epoch with its own generator; ours is the index-based
  permutation of every streamed run (resumable to the step).
- BN is cross-replica over the global batch here; FFCV's DDP normalises each GPU's 512 (ResNet-50)
  separately: --config.model.bn_group_size=512 reproduces that.
"""

from resnet_jax.config import EVAL_SET_ARGUMENTS, base_config, eval_sets_of, imagenet_data, parse_arguments

DEFAULTS = dict(depth=50, epochs=16, batch=0, dtype="float32", source="folder",
                **EVAL_SET_ARGUMENTS)
# FFCV's resolution ramp (start_ramp, end_ramp) in epochs, the same for both depths.
RAMPS = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48), 88: (65, 76)}
# depth: (global batch, peak learning rate at it, weight decay)
RECIPES = {18: (1024, 0.5, 5e-5), 50: (4096, 1.7, 1e-4)}


def get_config(argument: str | None = None):
  args = parse_arguments(argument, DEFAULTS)
  if args["depth"] not in RECIPES or args["epochs"] not in RAMPS:
    raise ValueError(f"FFCV's schedules are depth 18 or 50 and epochs {', '.join(map(str, RAMPS))}; got "
                     f"depth={args['depth']}, epochs={args['epochs']}")
  batch, peak, weight_decay = RECIPES[args["depth"]]
  start_ramp, end_ramp = RAMPS[args["epochs"]]
  c = base_config()
  c.model.update(dict(depth=args["depth"], dataset="imagenet", shortcut="B", variant="v1.5", num_classes=1000,
                      dtype=args["dtype"], blurpool=True))
  c.data.update(imagenet_data(args["source"]))
  c.data.update(dict(augmentation="inception", image_size=192, train_antialias=True, eval_resize=293, eval_crop=256,
                     eval_view="center", eval_flip=True, eval_average="logits"))
  c.data.progressive.update(dict(low=160, start_epoch=start_ramp, end_epoch=end_ramp))
  c.batch_size = args["batch"] or batch
  c.base_batch_size, c.base_learning_rate = batch, peak
  c.eval_batch_size = 512
  c.num_epochs = float(args["epochs"])
  c.label_smoothing = 0.1
  c.optimizer.update(dict(name="sgd", momentum=0.9, nesterov=False, weight_decay=weight_decay,
                          no_decay="stem_and_branch_norms"))
  c.schedule.update(dict(unit="epochs", decay="linear", warmup=2.0, warmup_kind="linear"))
  c.schedule.warmup_lr = c.schedule.get_ref("learning_rate") * 1e-4
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 2_000
  c.evals.update(eval_sets_of(args))
  return c
