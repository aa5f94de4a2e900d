"""Named sweeps: a config file, a grid of its arguments (each combination is one run) and,
optionally, config settings for every run.

  python -m resnet_jax.tools.sweep --sweep=cifar10_depths --root=runs/cifar10_depths
  python -m resnet_jax.tools.plot runs/cifar10_depths --output=runs/cifar10_depths/figure6.png
  python -m resnet_jax.tools.table runs/cifar10_depths

cifar10_depths: Table 6 and Figure 6 (plain-20/32/44/56 training error grows with depth; ResNets'
  falls), 10 runs of 64k iterations (about 164 epochs) each; needs tfds's cifar10.
imagenet_plain_vs_residual: Table 2 and Figure 4, 18 and 34 layers, ResNets with option A shortcuts
  (10-crop top-1 error: plain 27.94 / 28.54, ResNet 27.88 / 25.03); add
  --set=config.data.eval_view=10crop for the table's protocol.
imagenet_shortcuts: Table 3's options A/B/C at 34 layers (25.03 / 24.52 / 24.19 top-1 error, 10-crop).
imagenet_depths: Table 3's ResNet-50/101/152 (22.85 / 21.75 / 21.43, 10-crop).
mnist_degradation: what runs here, on the 5,000 bundled MNIST digits: plain vs residual at 8-44
  layers, 300 steps each (35 minutes on 2 CPU cores); the README's figure comes from it.
"""

SWEEPS = {
    "cifar10_depths": ("configs/cifar10.py", {"depth": [20, 32, 44, 56, 110], "plain": [False, True]}),
    "imagenet_plain_vs_residual": ("configs/imagenet.py", {"depth": [18, 34], "plain": [False, True],
                                                           "shortcut": ["A"]}),
    "imagenet_shortcuts": ("configs/imagenet.py", {"depth": [34], "shortcut": ["A", "B", "C"]}),
    "imagenet_depths": ("configs/imagenet.py", {"depth": [50, 101, 152]}),
    # Evaluated every half epoch (15 steps), for the curves.
    "mnist_degradation": ("configs/mnist_demo.py", {"depth": [8, 20, 32, 44], "plain": [False, True]},
                          ["config.eval_every_epochs=0.5"]),
}
