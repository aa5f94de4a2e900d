"""torchvision's "new recipe" for ResNet-50 (its IMAGENET1K_V2 weights; references/classification,
the blog post "How to Train State-Of-The-Art Models Using TorchVision's Latest Primitives").

  python -m resnet_jax.main --config=configs/imagenet_torchvision.py --workdir=runs/tv_rn50 \
      --config.data.data_dir=/data/imagenet

Arguments: depth (default 50), epochs (default 600), batch (default 1024: torchvision's 8 GPUs x
128), dtype ('float32'; torchvision's recipe trains in float32), source ('folder' or 'tfds').
Should reach 80.858% top-1 / 95.434% top-5 (torchvision's published EMA weights, resize 232 and
crop 224, 8 x 128 on GPUs). Not yet measured here on ImageNet.

The recipe, part by part as torchvision's train.py and presets.py set it:
- torchvision's ResNet-50 (v1.5), no zero-init of the last BN.
- Train views: random-resized crop (scale 0.08-1, ratio 3/4-4/3) to 176 px, bilinear with
  antialiasing, a flip, TrivialAugmentWide (bilinear, black fill), then random erasing with
  probability 0.1 (to 0 after normalising); repeated augmentation, 4 repeats (RASampler).
- Batches: mixup (alpha 0.2) or cutmix (alpha 1.0), one of them per batch, then label smoothing 0.1.
- SGD, momentum 0.9, learning rate 0.5 at batch 1024 (scaled linearly with the batch here);
  weight decay 2e-5, none on the norm layers (--norm-weight-decay 0.0).
- Schedule: 5 warmup epochs rising linearly from 0.01 x the peak, then cosine to 0 over the other
  595; both step once an epoch (schedule.change_every='epoch').
- EMA of the weights and the BN statistics, updated every 32 steps of an epoch with decay
  1 - (1 - 0.99998) x batch x 32 / epochs (0.998908 at batch 1024 and 600 epochs), copying the
  weights through the 5 warmup epochs; evaluated beside the live weights.
- Eval: the shorter side resized to 232, the central 224.
Where ours differs, and why:
- BN is cross-replica over the global batch; torchvision's DDP recipe normalises each GPU's 128
  separately: --config.model.bn_group_size=128 reproduces that.
- Resizing is TensorFlow's antialiased bilinear filter, PIL's in torchvision (train crops and
  the eval view: 0.005 std apart on average, the Fidelity table); --config.data.eval_resampler=pil
  scores with PIL's exactly.
- TrivialAugmentWide's ops equal PIL's to the pixel except Rotate (1 grey level on 0.01% of the
  pixels: PIL rounds the rotation matrix in decimal); random erasing and mixup/cutmix equal
  torchvision's given the same draws; the draws come from the example's (seed, step), not torch's
  generator.
- Repeated augmentation: torchvision's sampler sends an example's 4 copies to 4 GPUs; here they
  are neighbours in the same global batch (the index-based order, resumable to the step).
"""

from resnet_jax.config import EVAL_SET_ARGUMENTS, base_config, eval_sets_of, imagenet_data, parse_arguments

DEFAULTS = dict(depth=50, epochs=600, batch=1024, dtype="float32", source="folder",
                **EVAL_SET_ARGUMENTS)
EMA_DECAY, EMA_EVERY = 0.99998, 32  # torchvision's --model-ema-decay and --model-ema-steps


def get_config(argument: str | None = None):
  args = parse_arguments(argument, DEFAULTS)
  c = base_config()
  c.model.update(dict(depth=args["depth"], dataset="imagenet", shortcut="B", variant="v1.5", num_classes=1000,
                      dtype=args["dtype"]))
  c.data.update(imagenet_data(args["source"]))
  c.data.update(dict(augmentation="inception", image_size=176, train_antialias=True, auto_augment="ta_wide",
                     random_erasing=0.1, augment_repeats=4, eval_resize=232, eval_crop=224, eval_view="center"))
  c.batch_size = args["batch"]
  c.base_batch_size, c.base_learning_rate = 1024, 0.5
  c.eval_batch_size = 500
  c.num_epochs = float(args["epochs"])
  c.label_smoothing = 0.1
  c.mix.update(dict(mixup_alpha=0.2, cutmix_alpha=1.0, cutmix_prob=0.5, style="torchvision"))
  c.optimizer.update(dict(name="sgd", momentum=0.9, nesterov=False, weight_decay=2e-5, no_decay="norms"))
  c.schedule.update(dict(unit="epochs", decay="cosine", warmup=5.0, warmup_kind="linear", change_every="epoch"))
  c.schedule.warmup_lr = c.schedule.get_ref("learning_rate") * 0.01
  # torchvision adjusts the per-update decay for the batch and the update interval.
  c.ema_decay = 1.0 - min(1.0, (1.0 - EMA_DECAY) * args["batch"] * EMA_EVERY / args["epochs"])
  c.ema_every_steps, c.ema_buffers, c.ema_copy_epochs = EMA_EVERY, True, 5
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 2_000
  c.evals.update(eval_sets_of(args))
  return c
