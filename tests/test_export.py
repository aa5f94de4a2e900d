"""Weights out to torchvision's layout (resnet_jax/tools/export.py), the inverse of the converter: the
same logits in torchvision's own model (`make test-torch`), an exact round trip, the safetensors file
format, and a clear refusal for networks torchvision has no layout for."""

import json
import struct

import jax
import numpy as np
import pytest
from runs import ROOT, arguments, leaves, read_state
from test_convert import our_logits, state_dict_arrays, torch_logits, torch_resnet

from resnet_jax import main
from resnet_jax.errors import ConfigError, UserError
from resnet_jax.tools import export
from resnet_jax.tools.convert import convert_state_dict, model_config


def random_weights(arch: str) -> dict:
  """Our network's weights with every array random (BN statistics too), in float32."""
  from flax import nnx

  from resnet_jax.models import build_model
  _, params, stats = nnx.split(nnx.eval_shape(lambda: build_model(model_config(arch))), nnx.Param, nnx.BatchStat)
  rng = np.random.default_rng(0)
  tree = {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(stats)}
  return jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32), tree)


def read_safetensors(path) -> tuple[dict, dict]:
  """The file by the format's definition: (arrays, metadata)."""
  data = path.read_bytes()
  (length,) = struct.unpack("<Q", data[:8])
  header = json.loads(data[8:8 + length])
  dtypes = {"F32": np.float32, "I64": np.int64}
  arrays = {name: np.frombuffer(data[8 + length + start:8 + length + end], dtypes[entry["dtype"]]).reshape(entry["shape"])
            for name, entry in header.items() if name != "__metadata__"
            for start, end in [entry["data_offsets"]]}
  return arrays, header["__metadata__"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_export_then_import_round_trips_exactly(arch):
  weights = random_weights(arch)
  exported = export.export_state_dict(weights["params"], weights["batch_stats"])
  assert exported["conv1.weight"].shape == (64, 3, 7, 7) and exported["bn1.num_batches_tracked"] == 0
  back = convert_state_dict(exported, arch)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, weights))
  again = export.export_state_dict(back["params"], back["batch_stats"])
  assert exported.keys() == again.keys() and all(np.array_equal(exported[k], again[k]) for k in exported)


@pytest.mark.parametrize("model, message", [
    (dict(depth=20, dataset="cifar", shortcut="A"), "dataset='cifar'"),
    (dict(depth=34, plain=True), "plain=True"),
    (dict(depth=50, shortcut="C", variant="v1.5"), "shortcut='C'"),
    (dict(depth=50, variant="v1"), "variant='v1' (torchvision's ResNet-50 is v1.5)"),
    (dict(depth=18, variant="v1", input_channels=1), "input_channels=1"),
    (dict(depth=18, variant="v1", blurpool=True), "blurpool=True"),
])
def test_networks_torchvision_lacks_are_refused(model, message):
  with pytest.raises(ConfigError, match="torchvision has no layout for this network") as error:
    export.torchvision_arch(model)
  assert message in str(error.value)
  assert export.torchvision_arch(dict(depth=50, variant="v1.5", shortcut="B")) == "resnet50"


def test_the_safetensors_writer_follows_the_format(tmp_path):
  arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(7, np.int64),
            "b": np.ones((1, 1, 3, 3), np.float32)}
  for length in range(8):  # headers of every length modulo 8
    path = tmp_path / f"{length}.safetensors"
    export.write_safetensors(arrays, path, {"step": "4" * (length + 1)})
    assert struct.unpack("<Q", path.read_bytes()[:8])[0] % 8 == 0  # the tensors start 8-byte aligned
    read, metadata = read_safetensors(path)
    assert metadata == {"step": "4" * (length + 1)} and read.keys() == arrays.keys()
    assert all(np.array_equal(read[k], arrays[k]) and read[k].dtype == arrays[k].dtype for k in arrays)


@pytest.mark.slow
def test_the_export_command_writes_a_runs_weights_and_refuses_what_it_cannot(fake_imagenet, tmp_path, capsys):
  """A ResNet-18 trained 2 steps with an EMA: both weights exported, read back through the converter
  equal to the checkpoint's arrays; an existing file is never replaced; a CIFAR run is refused."""
  run = tmp_path / "run"
  main.main([f"--config={ROOT}/configs/imagenet.py:depth=18,batch=4", f"--workdir={run}",
             f"--config.data.data_dir={fake_imagenet / 'folder'}", "--config.data.image_size=32",
             "--config.data.eval_resize=36", "--config.num_train_steps=2", "--config.ema_decay=0.5",
             "--config.eval_batch_size=4", f"--config.data.eval_label_file={fake_imagenet / 'folder' / 'val_labels.txt'}"])
  state = read_state(run)
  for weights, params in (("live", state["params"]), ("ema", state["ema_params"])):
    output = tmp_path / f"{weights}.safetensors"
    assert export.main([f"--workdir={run}", f"--output={output}", f"--weights={weights}"]) == output
    arrays, metadata = read_safetensors(output)
    back = convert_state_dict(arrays, "resnet18")
    # (the checkpoint's tree has string keys for list indices, all single digits here: the same order)
    for ours, saved in ((back["params"], params), (back["batch_stats"], state["batch_stats"])):
      assert len(leaves(ours)) == len(leaves(saved)) and all(map(np.array_equal, leaves(ours), leaves(saved)))
    description = json.loads((tmp_path / f"{weights}.safetensors.json").read_text())
    assert description["step"] == 2 and description["weights"] == weights and metadata["weights"] == weights
    assert description["torchvision"] == "torchvision.models.resnet18(num_classes=1000)"
    assert "Normalize(mean=(0.485, 0.456, 0.406)" in description["input"]
  assert "load it with torchvision.models.resnet18" in capsys.readouterr().out
  with pytest.raises(ConfigError, match="exists; an export never replaces a file"):
    export.main([f"--workdir={run}", f"--output={tmp_path / 'live.safetensors'}"])
  with pytest.raises(UserError, match="checkpoints/3; the run.s newest is step 2"):
    export.main([f"--workdir={run}", f"--output={tmp_path / 'x.pth'}", "--step=3"])
  cifar = tmp_path / "cifar"
  main.main(arguments(cifar, 4))
  with pytest.raises(ConfigError, match="torchvision has no layout for this network: dataset='cifar'"):
    export.main([f"--workdir={cifar}", f"--output={tmp_path / 'c.pth'}"])
  assert not (tmp_path / "c.pth").exists()


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvisions_model_loads_the_export_and_gives_our_logits(arch, tmp_path):
  """Both files, each loaded strictly into torchvision's own model: our logits to 1e-4."""
  torch = pytest.importorskip("torch")
  models = pytest.importorskip("torchvision.models")
  safetensors_torch = pytest.importorskip("safetensors.torch")
  weights = convert_state_dict(state_dict_arrays(torch_resnet(arch)), arch)  # random BN statistics too
  exported = export.export_state_dict(weights["params"], weights["batch_stats"])
  export.write_pth(exported, tmp_path / "w.pth")
  export.write_safetensors(exported, tmp_path / "w.safetensors", {})
  images = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)
  ours = our_logits(arch, weights, images)
  assert exported.keys() == getattr(models, arch)().state_dict().keys()  # torchvision's own keys, counters too
  for state_dict in (torch.load(tmp_path / "w.pth", weights_only=True),
                     safetensors_torch.load_file(tmp_path / "w.safetensors")):
    model = getattr(models, arch)()
    model.load_state_dict(state_dict, strict=True)
    theirs = torch_logits(model.eval(), images)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())
