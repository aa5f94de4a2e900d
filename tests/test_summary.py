"""The summary command: per-stage shapes, parameters and multiply-adds, and its errors."""

import re

import pytest

from resnet_jax.errors import ConfigError
from resnet_jax.models import summary


def run_summary(capsys, *argv: str) -> str:
  summary.main(list(argv))
  return capsys.readouterr().out


def numbers(line: str) -> list[int]:
  return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", line.split(maxsplit=1)[1])]


def test_resnet50_rows_add_up_to_the_totals(capsys):
  out = run_summary(capsys, "--depth=50")
  lines = out.splitlines()
  stage_lines = [l for l in lines if l.startswith(("conv", "pool"))]
  assert [l.split()[0] for l in stage_lines] == ["conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "pool"]
  assert [l.split()[-3] for l in stage_lines[1:5]] == ["56x56x256", "28x28x512", "14x14x1024", "7x7x2048"]
  total = next(l for l in lines if l.startswith("total"))
  assert numbers(total) == [25_557_032, 3_857_973_248]
  assert [sum(numbers(l)[-2] for l in stage_lines), sum(numbers(l)[-1] for l in stage_lines)] == numbers(total)
  assert "paper Table 1: 3.8 x 10^9" in out


def test_plain_cifar_net_at_another_input_size(capsys):
  out = run_summary(capsys, "--dataset=cifar", "--depth=56", "--plain", "--image_size=64")
  assert out.startswith("CIFAR plain-56")
  assert "16x16x64" in out  # 64 -> 64, 32, 16 maps
  assert "paper" not in out  # the paper gives no plain-56 figures


def test_parameter_overview_lists_every_parameter(capsys):
  out = run_summary(capsys, "--dataset=cifar", "--depth=8", "--parameters")
  assert "stem/conv/kernel" in out and "(3, 3, 3, 16)" in out
  # conv1 + BN, three stages of one basic block (16, 16->32, 32->64, option A), fc.
  expected = (432 + 32) + (2 * 2304 + 64) + (4608 + 9216 + 128) + (18432 + 36864 + 256) + 650
  assert numbers(next(l for l in out.splitlines() if l.startswith("total")))[0] == expected
  assert f"Total: {expected:,}" in out  # clu's own count agrees


@pytest.mark.parametrize("argv, message", [
    (["--depth=42"], "valid depths: 18, 34, 50, 101, 152"),
    (["--dataset=cifar", "--depth=51"], "6n+2"),
])
def test_bad_depth_is_a_config_error_naming_the_valid_depths(capsys, argv, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    run_summary(capsys, *argv)
  assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_model_table_covers_every_network_of_tables_1_and_6():
  rows = summary.model_table().splitlines()[2:]
  assert len(rows) == 11
  assert rows[2].startswith("| ImageNet ResNet-50 (B) | bottleneck | 3/4/6/3 | 25,557,032 | 3.858 G")
  assert rows[-1].startswith("| CIFAR ResNet-1202 (A) | basic | 200/200/200 | 19,421,274 |")
