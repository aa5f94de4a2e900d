"""torchvision's ResNet (v1.5 bottleneck, its parameter names) in plain torch: the reference the
converter's and the train step's tests and `benchmarks/vs_torch.py` compare with where torchvision is
not installed (PyPI's torchvision does not import beside the CPU torch build these machines install).
The paper's v1 bottleneck (stride on the first 1x1) is an option. Needs torch."""

from torch import nn

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _conv_bn(inputs: int, outputs: int, kernel: int, stride: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
  return nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(outputs)


class Block(nn.Module):
  """torchvision's BasicBlock (expansion 1) or Bottleneck (expansion 4, stride on the 3x3, or on the
  first 1x1 as in the paper)."""

  def __init__(self, inputs: int, width: int, stride: int, expansion: int, stride_on_3x3: bool = True):
    super().__init__()
    kernels = (3, 3) if expansion == 1 else (1, 3, 1)
    widths = (width, width) if expansion == 1 else (width, width, width * expansion)
    strides = (stride, 1) if expansion == 1 else (1, stride, 1) if stride_on_3x3 else (stride, 1, 1)
    channels = inputs
    for i, (kernel, out, s) in enumerate(zip(kernels, widths, strides), start=1):
      conv, bn = _conv_bn(channels, out, kernel, s)
      setattr(self, f"conv{i}", conv)
      setattr(self, f"bn{i}", bn)
      channels = out
    self.count = len(kernels)
    self.downsample = (nn.Sequential(*_conv_bn(inputs, channels, 1, stride))
                       if stride != 1 or inputs != channels else None)

  def forward(self, x):
    y = x
    for i in range(1, self.count + 1):
      y = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(y))
      if i < self.count:
        y = y.relu()
    return (y + (x if self.downsample is None else self.downsample(x))).relu()


class ResNet(nn.Module):
  """torchvision.models.resnet{depth}(num_classes=...)'s layers and state-dict names; with
  stride_on_3x3=False, the paper's v1 bottleneck."""

  def __init__(self, depth: int, num_classes: int = 1000, stride_on_3x3: bool = True):
    super().__init__()
    expansion = 1 if depth < 50 else 4
    self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    channels = 64
    for index, (width, count) in enumerate(zip((64, 128, 256, 512), BLOCKS[depth])):
      layer = []
      for b in range(count):
        layer.append(Block(channels, width, 2 if index > 0 and b == 0 else 1, expansion, stride_on_3x3))
        channels = width * expansion
      setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
    self.fc = nn.Linear(channels, num_classes)

  def forward(self, x):
    x = self.maxpool(self.bn1(self.conv1(x)).relu())
    for index in range(1, 5):
      x = getattr(self, f"layer{index}")(x)
    return self.fc(x.mean(dim=(2, 3)))


def resnet(depth: int, num_classes: int = 1000) -> nn.Module:
  """torchvision's resnet{depth} when torchvision imports, else this module's equal."""
  try:
    import torchvision
  except ImportError:
    return ResNet(depth, num_classes)
  return getattr(torchvision.models, f"resnet{depth}")(num_classes=num_classes)
