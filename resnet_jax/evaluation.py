"""Evaluation: every example of an eval split exactly once (the last batch padded and masked),
top-1/top-5 accuracy and error. Used by the trainer after training and by the evaluate command on
a saved checkpoint."""

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from resnet_jax import sharding
from resnet_jax.reporting import host_sum


def correct_top_k(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  k = min(k, logits.shape[-1])
  return jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)


def member_scores(model: nnx.Module, images: jax.Array | tuple, *, normalize: Callable[[jax.Array], jax.Array],
                  flip: bool = False, average: str = "probabilities", classes: tuple[int, ...] | None = None
                  ) -> jax.Array:
  """One network's (batch, classes) scores of a batch's images; with `classes`, among those only
  (their logits alone, in that order: a class-subset set such as ImageNet-R).

  Images are uint8 (batch, views, H, W, C), or a tuple of such with one size each (the scales of
  Table 4's multi-scale testing), normalised here; `flip` adds each view's mirror image. An
  example's score is its softmax averaged over all its views (1 center crop, the 10 crops of Table
  3, or the whole image and its mirror at every scale) or, `average='logits'`, the softmax of its
  averaged logits (FFCV's flip test: argmax of the logits' sum).
  """
  groups = images if isinstance(images, tuple) else (images,)
  if flip:
    groups = tuple(jnp.concatenate([views, views[:, :, :, ::-1]], axis=1) for views in groups)
  outputs = []
  for views in groups:
    logits = model(normalize(views.reshape(-1, *views.shape[2:])))
    if classes is not None:
      logits = logits[:, jnp.array(classes)]
    outputs.append((jax.nn.softmax(logits) if average == "probabilities" else logits).reshape(*views.shape[:2], -1))
  scores = jnp.concatenate(outputs, axis=1).mean(axis=1)
  return jax.nn.softmax(scores) if average == "logits" else scores


def ensemble_eval_step(members: tuple, batch: dict, *, graphdefs: tuple, normalize: Callable[[jax.Array], jax.Array],
                       flip: bool = False, average: str = "probabilities", classes: tuple[int, ...] | None = None
                       ) -> dict:
  """Sums over the real (mask = 1) examples of one global batch, each example scored by its
  `member_scores` averaged over the networks `members` ((params, batch_stats) each, with their
  `graphdefs`): Table 5's ensemble, the plain mean of the members' softmax scores. One member is
  the network alone, bit for bit.

  With `classes` (sorted) the scores are among those classes only. A batch with `label_set`
  (ImageNet-ReaL) counts a top-1 prediction correct when it is in the example's set and leaves out
  examples whose set is empty; its top-5 is not defined (zero)."""
  scores = sum(member_scores(nnx.merge(graphdef, params, batch_stats), batch["image"], normalize=normalize,
                             flip=flip, average=average, classes=classes)
               for graphdef, (params, batch_stats) in zip(graphdefs, members, strict=True)) / len(members)
  mask, labels = batch["mask"], batch["label"]
  if classes is not None:  # the labels' positions among the scored classes
    labels = jnp.searchsorted(jnp.array(classes), labels)
  loss = -jnp.log(jnp.take_along_axis(scores, labels[:, None], axis=1)[:, 0] + 1e-12)
  if "label_set" in batch:
    sets = batch["label_set"]
    mask = mask * (sets[:, 0] >= 0)
    top1 = jnp.any(jnp.argmax(scores, axis=-1)[:, None] == sets, axis=-1).astype(jnp.float32)
    top5 = jnp.zeros_like(top1)
  else:
    top1, top5 = correct_top_k(scores, labels, 1), correct_top_k(scores, labels, 5)
  return {"count": mask.sum(), "loss": (loss * mask).sum(), "top1": (top1 * mask).sum(), "top5": (top5 * mask).sum()}


def eval_step(params: Any, batch_stats: Any, batch: dict, *, graphdef: nnx.GraphDef, **options) -> dict:
  """`ensemble_eval_step` of one network."""
  return ensemble_eval_step(((params, batch_stats),), batch, graphdefs=(graphdef,), **options)


# One jitted function for the whole process: with the (hashable) graphdefs and normaliser static,
# every periodic evaluation of a run reuses the first one's compilation.
_compiled_eval_step = jax.jit(ensemble_eval_step, static_argnames=("graphdefs", "normalize", "flip", "average",
                                                                   "classes"))


TOP5_CLASSES = 5  # with at most this many classes, top-5 is 100% by construction


def evaluate(experiment: Any, params: Any, batch_stats: Any, split: str | None = None) -> dict[str, float]:
  """Scores a whole eval split (default: the config's `data.eval_split`) or set from another source
  (by its description); returns accuracies, errors (in %), the mean loss and the count scored. A
  network (or class subset) of 5 classes or fewer has no top-5 result: every label is among its top
  5; nor does ImageNet-ReaL, scored top-1 as its authors do."""
  return evaluate_ensemble(experiment, [(experiment.eval_graphdef, params, batch_stats)], split)


def evaluate_ensemble(experiment: Any, members: Sequence[tuple[nnx.GraphDef, Any, Any]],
                      split: str | None = None) -> dict[str, float]:
  """`evaluate` with each example scored by the mean softmax of several networks (graphdef, params,
  batch_stats), over the experiment's data and views."""
  data = experiment.config.data
  other = experiment.data.eval_sets.get(split)
  step = functools.partial(_compiled_eval_step, graphdefs=tuple(m[0] for m in members),
                           normalize=experiment.data.normalize, flip=data.eval_flip, average=data.eval_average,
                           classes=other and other.classes)
  weights = tuple((params, batch_stats) for _, params, batch_stats in members)
  batches: Iterable[dict] = experiment.data.eval_batches(split)
  sums = host_sum(step(weights, batch) for batch in sharding.prefetch_to_devices(batches, experiment.mesh))
  totals = {name: float(value) for name, value in sums.items()}
  count = totals["count"]
  top1, top5 = 100 * totals["top1"] / count, 100 * totals["top5"] / count
  results = {"top1": top1, "top5": top5, "top1_error": 100 - top1, "top5_error": 100 - top5,
             "loss": totals["loss"] / count, "examples": int(count)}
  if len(other and other.classes or range(experiment.model_config.num_classes)) <= TOP5_CLASSES or (
      other and other.label_sets is not None):
    del results["top5"], results["top5_error"]
  return results


def set_description(experiment: Any, split: str) -> dict | None:
  """What a set from another source is (for its records); None for a split of the run's own data."""
  other = experiment.data.eval_sets.get(split)
  return other.description if other else None


def describe(results: dict[str, float]) -> str:
  top5 = (f"top-5 {results['top5']:.2f}% (error {results['top5_error']:.2f}%) " if "top5" in results
          else "no top-5 ")
  return f"top-1 {results['top1']:.2f}% (error {results['top1_error']:.2f}%), {top5}on {results['examples']:,} examples"
