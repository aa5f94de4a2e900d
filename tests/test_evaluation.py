"""Exact evaluation: every example once, and multi-view scores averaged over every view."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resnet_jax.data.sources import load_split


def test_evaluation_scores_each_example_once_and_matches_a_direct_count(tiny_experiment):
  from resnet_jax.evaluation import evaluate
  state = tiny_experiment.initial_state()
  # Give BN some statistics so that predictions differ between examples.
  stats = jax.tree.map(lambda x: x + 0.1, state.batch_stats)
  results = evaluate(tiny_experiment, state.params, stats)
  split = load_split("mnist_bundled", "mnist", "test")
  images = np.concatenate([b["image"][b["mask"] == 1, 0] for b in tiny_experiment.data.eval_batches()])
  normalized = tiny_experiment.data.normalize(images)
  forward = jax.jit(lambda p, s, x: nnx.merge(tiny_experiment.eval_graphdef, p, s)(x))
  logits = np.asarray(forward(state.params, stats, normalized))
  ranked = np.argsort(-logits, axis=1)
  assert results["examples"] == len(split) == len(normalized) == 1000
  assert results["top1"] == pytest.approx(100 * np.mean(ranked[:, 0] == split.labels), abs=1e-4)
  assert results["top5"] == pytest.approx(100 * np.mean((ranked[:, :5] == split.labels[:, None]).any(1)), abs=1e-4)
  assert results["top1_error"] == pytest.approx(100 - results["top1"])


def test_multiscale_scores_are_the_softmax_averaged_over_every_view_of_every_scale(tiny_experiment):
  from resnet_jax.data.in_memory import Normalizer
  from resnet_jax.evaluation import eval_step
  state = tiny_experiment.initial_state()
  stats = jax.tree.map(lambda x: x + 0.1, state.batch_stats)
  rng = np.random.default_rng(0)
  small, large = rng.integers(0, 256, (4, 2, 20, 24, 1), np.uint8), rng.integers(0, 256, (4, 2, 28, 28, 1), np.uint8)
  labels = np.array([0, 3, 5, 7])
  batch = {"image": (jnp.asarray(small), jnp.asarray(large)),
           "label": jnp.asarray(labels), "mask": jnp.array([1.0, 1.0, 1.0, 0.0])}
  normalize = Normalizer(np.full(1, 120, np.float32), np.full(1, 70, np.float32))  # any size: per channel
  sums = eval_step(state.params, stats, batch, graphdef=tiny_experiment.eval_graphdef, normalize=normalize)
  model = nnx.merge(tiny_experiment.eval_graphdef, state.params, stats)
  softmax = [np.asarray(jax.nn.softmax(model(normalize(x[:, v])))) for x in (small, large) for v in (0, 1)]
  scores = np.mean(softmax, axis=0)
  assert float(sums["count"]) == 3
  assert float(sums["top1"]) == np.sum((scores.argmax(1) == labels)[:3])
  expected_loss = -np.log(scores[np.arange(4), labels] + 1e-12)[:3].sum()
  assert float(sums["loss"]) == pytest.approx(expected_loss, rel=1e-5)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  """Two ResNet-8 runs on the digits that differ in their seed, 6 steps each."""
  from runs import train_here
  root = tmp_path_factory.mktemp("ensemble")
  for seed in (0, 1):
    train_here(root / f"seed{seed}", 6, f"--config.seed={seed}")
  return root


@pytest.mark.slow
def test_an_ensemble_of_one_scores_as_the_network_alone(two_runs):
  from runs import arguments

  from resnet_jax import evaluate, rundir
  [record] = evaluate.main([*arguments(two_runs / "alone", 6), f"--ensemble={two_runs / 'seed0'}"])
  final = rundir.final_record(two_runs / "seed0")
  assert record["results"] == final["results"]  # bit for bit: the same step, one member
  assert record["weights"] == "ensemble" and record["step"] == 0 and record["by"] == "evaluate"
  [member] = record["ensemble"]
  assert member["step"] == 6 and member["checkpoint"].endswith("seed0/checkpoints/6")
  assert member["network"].startswith("CIFAR ResNet-8")


@pytest.mark.slow
def test_an_ensemble_of_two_scores_their_averaged_softmax(two_runs, tmp_path):
  """Against a hand computation: each network's softmax over the 1,000 test digits, averaged."""
  from conftest import load_config
  from runs import arguments

  from resnet_jax import evaluate
  from resnet_jax.checkpoint import network_of, network_weights
  from resnet_jax.experiment import setup
  from resnet_jax.tools.table import rows
  members = [two_runs / "seed0", two_runs / "seed1" / "checkpoints" / "6"]
  [record] = evaluate.main([*arguments(tmp_path, 6), f"--ensemble={','.join(map(str, members))}"])
  experiment = setup(load_config("mnist_demo", "depth=8,batch=32,steps=6"))
  images = np.concatenate([b["image"][b["mask"] == 1, 0] for b in experiment.data.eval_batches()])
  labels = np.concatenate([b["label"][b["mask"] == 1] for b in experiment.data.eval_batches()])
  normalized = experiment.data.normalize(images)
  softmax = []
  for member in members:
    directory, _, model, config = network_of(str(member))
    graphdef, params, stats = network_weights(directory, model, config)
    softmax.append(np.asarray(jax.nn.softmax(nnx.merge(graphdef, params, stats)(normalized)), np.float64))
  assert not np.allclose(softmax[0], softmax[1], atol=1e-3)  # two different networks
  scores = (softmax[0] + softmax[1]) / 2
  assert record["results"]["examples"] == 1000
  assert record["results"]["top1"] == pytest.approx(100 * np.mean(scores.argmax(1) == labels), abs=1e-4)
  assert record["results"]["loss"] == pytest.approx(np.mean(-np.log(scores[np.arange(1000), labels] + 1e-12)),
                                                    rel=1e-5)
  assert [m["step"] for m in record["ensemble"]] == [6, 6]
  assert "ensemble of CIFAR ResNet-8" in rows([dict(record, workdir=str(tmp_path))])[2]
