"""Named evaluations on sets from other sources than the training data (`config.eval_set`):

- ImageNet-V2 as its authors ship it (class folders named 0..999) or as tfds builds it;
- ImageNet-ReaL: the run's validation images scored against the ReaL label sets (real.json, one
  list of labels per validation file number): a prediction counts when it is in the image's set,
  and images whose set is empty are left out, as its authors score it (top-1 only);
- a folder of class folders named as the training classes that covers only some of them
  (ImageNet-A, ImageNet-R: 200 synsets), scored among its own classes: the other logits are left out.
"""

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from resnet_jax.errors import ConfigError, DataError

VALIDATION_FILE = re.compile(r"ILSVRC2012_val_(\d{8})\.")


@dataclasses.dataclass(frozen=True, eq=False)
class EvalSet:
  """How a set from another source is scored beyond its images and labels."""

  classes: tuple[int, ...] | None = None  # the classes it is scored among (a class subset)
  label_sets: np.ndarray | None = None  # ReaL: (examples, K) correct labels, -1 padded; all -1: left out
  description: dict[str, Any] = dataclasses.field(default_factory=dict)  # for the records


def load(spec: Any, config: Any, train_source: Any) -> tuple[Any, EvalSet]:
  """The source of a named evaluation's images and how to score them; the run's data and
  training classes come from `config` and `train_source`."""
  from resnet_jax.data import streamed

  d = config.data
  if spec.source == "tfds":
    source = streamed.TfdsSource(spec.name, spec.split, spec.data_dir)
  elif spec.source == "folder":
    classes = train_source.classes if spec.classes == "names" else [str(i) for i in range(train_source.num_classes)]
    source = streamed.FolderSource(spec.data_dir, spec.split, classes=classes)
  elif d.source == "folder":
    split = spec.split or d.eval_split
    source = streamed.FolderSource(d.data_dir, split, classes_from=d.train_split,
                                   label_file=d.eval_label_file if split == d.eval_split else None)
  else:
    source = streamed.TfdsSource(d.name, spec.split or d.eval_split, d.data_dir or None)
  if source.num_classes > train_source.num_classes:
    raise ConfigError(f"{spec.data_dir or d.data_dir} has {source.num_classes} classes, the training data "
                      f"{train_source.num_classes}; its labels cannot index the network's outputs")
  classes = tuple(int(c) for c in np.unique(source.labels)) if spec.subset else None
  label_sets = read_real_labels(spec.real_labels, [source.file_name(i) for i in range(len(source))],
                                train_source.num_classes) if spec.real_labels else None
  description = {"source": spec.source or d.source, "data_dir": spec.data_dir or d.data_dir,
                 "name": spec.name or d.name, "split": source.split, **source.fingerprint(),
                 **({"classes": len(classes)} if classes else {}),
                 **({"real_labels": spec.real_labels, "scored": int((label_sets[:, 0] >= 0).sum())}
                    if label_sets is not None else {})}
  return source, EvalSet(classes, label_sets, description)


def read_real_labels(path: str, file_names: Sequence[str], num_classes: int) -> np.ndarray:
  """Each image's ReaL labels, (images, K) padded with -1, found by the validation file number in
  its name (ILSVRC2012_val_00000001.JPEG is real.json's first entry)."""
  try:
    entries = json.loads(open(path).read())
  except (OSError, ValueError) as error:
    raise DataError(f"cannot read the ReaL labels {path} ({getattr(error, 'strerror', None) or error}); give "
                    f"real.json from github.com/google-research/reassessed-imagenet") from None
  if not (isinstance(entries, list) and all(isinstance(e, list) and all(isinstance(c, int) and 0 <= c < num_classes
                                                                         for c in e) for e in entries)):
    raise DataError(f"{path} is not ReaL's real.json: a list with a list of class indices (0..{num_classes - 1}) "
                    f"for each validation image")
  width = max(1, max(map(len, entries), default=1))
  sets = np.full((len(file_names), width), -1, np.int32)
  for row, name in enumerate(file_names):
    match = VALIDATION_FILE.search(name)
    if not match or not 1 <= int(match[1]) <= len(entries):
      raise DataError(f"{name or 'an image without a file name'} is not an ILSVRC2012 validation file that {path} "
                      f"labels ({len(entries)} entries): ReaL scores ImageNet's validation images only")
    labels = entries[int(match[1]) - 1]
    sets[row, :len(labels)] = labels
  return sets
