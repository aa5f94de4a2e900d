"""A run's identity: the config and the data it trains on, recorded in `WORKDIR/run.json` at its
first start and compared on every resume, so that no record describes a run that never happened.

A change in anything that changes what is trained (any field but `FREE_FIELDS`, or the data's
fingerprint) is refused before anything compiles, with one line listing each change (old -> new).
`--amend=FIELD,...` accepts the named changes; each is appended to the run's history (step, field,
old, new), which config.json, every later record and the results table carry. The free fields'
changes are recorded too, marked free.

The data's fingerprint (`Inputs.fingerprint`) names its source, resolved location, class list and,
per split, the number of examples and a hash of their ids (or, held in memory, of their pixels).
"""

import dataclasses
import datetime
import json
import logging
import pathlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from resnet_jax.errors import ConfigError

# The settings of an evaluation: which splits, with which views, in what batches. The evaluate
# command takes these from its own config and everything else from the run's.
EVALUATION_FIELDS = (
    "evals", "eval_batch_size", "data.eval_split", "data.eval_label_file", "data.eval_resize", "data.eval_crop",
    "data.eval_view", "data.eval_flip", "data.eval_average", "data.eval_scales", "data.eval_resampler",
)
# The settings that do not change what is trained: the evaluations, how often to log, evaluate and
# save, how many checkpoints to keep, profiling, the run's length (extending it), the data's name,
# and its directory as written (the data itself is compared as `dataset.*`, its location resolved).
# Changing one on a resume is accepted and recorded.
FREE_FIELDS = (
    *EVALUATION_FIELDS, "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "keep_best",
    "eval_every_epochs", "profile_steps", "num_train_steps", "num_epochs", "data.name", "data.data_dir",
)
DATA_PREFIX = "dataset."
_ABSENT = object()  # a field one side of a comparison does not have


def _within(field: str, fields: tuple[str, ...]) -> bool:
  """Whether `field` is one of `fields` or inside one (e.g. evals.test inside evals)."""
  return any(field == f or field.startswith(f + ".") for f in fields)


@dataclasses.dataclass(frozen=True)
class Change:
  field: str
  old: Any
  new: Any

  @property
  def free(self) -> bool:
    return _within(self.field, FREE_FIELDS)

  def __str__(self) -> str:
    return f"{self.field} {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
  if isinstance(value, list) and len(value) > 4:
    return f"[{len(value)} items: {', '.join(map(str, value[:2]))}, ..., {value[-1]}]"
  return "(absent)" if value is _ABSENT else json.dumps(value)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  """{'a.b': value} of a nested dict, values as JSON gives them back (tuples become lists)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = json.loads(json.dumps(value, default=str))
  return flat


def changes(old: Mapping, new: Mapping, defaults: Mapping | None = None) -> list[Change]:
  """Every field whose value differs between two nested dicts, in order; a field only `new` has
  that holds its value in `defaults` (a setting added since `old` was written, at the default that
  behaves as before it existed) is no change."""
  before, after, default = flatten(old), flatten(new), flatten(defaults or {})
  return [Change(field, before.get(field, _ABSENT), after.get(field, _ABSENT))
          for field in sorted(set(before) | set(after)) if before.get(field, _ABSENT) != after.get(field, _ABSENT)
          and not (field not in before and field in default and after[field] == default[field])]


def data_changes(old: Mapping, new: Mapping) -> list[Change]:
  """Changes in the data between two fingerprints; a split only one of them scores (a named
  evaluation added or dropped) is not a change of the data."""
  shared = set(old.get("splits", {})) & set(new.get("splits", {}))
  def comparable(fingerprint):
    return {**{k: v for k, v in fingerprint.items() if k != "splits"},
            "splits": {split: fingerprint["splits"][split] for split in sorted(shared)}}
  return [dataclasses.replace(change, field=DATA_PREFIX + change.field)
          for change in changes(comparable(old), comparable(new))]


def identity(config: Mapping, fingerprint: Mapping, history: Sequence[Mapping] = (), run_id: str | None = None) -> dict:
  """What run.json holds: an id that stays with the run, its config and data now, and its history."""
  return {"id": run_id or uuid.uuid4().hex[:12], "config": dict(config), "data": dict(fingerprint),
          "history": list(history), "recorded": datetime.datetime.now().isoformat(timespec="seconds")}


def compare(recorded: Mapping, config: Mapping, fingerprint: Mapping, amend: Sequence[str],
            workdir: str, resuming: bool) -> list[Change]:
  """The changes from a run's recorded identity to the config and data of this start. Refuses
  (ConfigError, one line) a change that is neither free nor named in `amend`, and an `amend` name
  that changed nothing. Before any checkpoint (`resuming` False) nothing trained is kept, so every
  change is accepted."""
  from resnet_jax.config import base_config
  found = changes(recorded["config"], config, base_config().to_dict()) + data_changes(recorded["data"], fingerprint)
  binding = [change for change in found if not change.free]
  unamended = [change for change in binding if change.field not in amend] if resuming else []
  if unamended:
    every = ",".join(change.field for change in binding)
    raise ConfigError(
        f"the run in {workdir} was trained with other settings or data; changed: "
        f"{'; '.join(map(str, unamended))}. Resume it with its own (see {workdir}/run.json), start a new run "
        f"with another --workdir, or amend this one with --amend={every} (recorded in its history)")
  unused = sorted(set(amend) - {change.field for change in binding})
  if unused:
    raise ConfigError(f"--amend names {', '.join(unused)}, which did not change (changed: "
                      f"{', '.join(change.field for change in binding) or 'nothing'}); amend only what changed")
  return found


def amended(recorded: Mapping, config: Mapping, fingerprint: Mapping, found: Sequence[Change], step: int) -> dict:
  """The identity after this start: the new config and data, the changes appended to the history."""
  date = datetime.datetime.now().isoformat(timespec="seconds")
  entries = [{"step": step, "field": c.field, "old": None if c.old is _ABSENT else c.old,
              "new": None if c.new is _ABSENT else c.new, "free": c.free, "date": date} for c in found]
  return identity(config, fingerprint, [*recorded.get("history", []), *entries], recorded.get("id"))


def describe_history(history: Sequence[Mapping]) -> str:
  """'schedule.learning_rate 0.1 -> 0.2 at step 2; ...' for the changes that alter what is trained."""
  return "; ".join(f"{h['field']} {_show(h['old'])} -> {_show(h['new'])} at step {h['step']:,}"
                   for h in history if not h.get("free"))


def check_amend_names(amend: Sequence[str]) -> list[str]:
  """The field names of an --amend flag; a free field needs no amending."""
  names = [name.strip() for name in amend if name.strip()]
  free = [name for name in names if _within(name, FREE_FIELDS)]
  if free:
    raise ConfigError(f"--amend names {', '.join(free)}, which can change freely on a resume (it does not change "
                      f"what is trained); leave it out of --amend")
  return names


def run_summary(workdir: str, identity: Mapping | None, split: str) -> dict:
  """What a record says of the run whose weights it scored: its directory and id, the data (with
  the scored split's fingerprint) and the history of its amendments."""
  if identity is None:
    return {"workdir": str(pathlib.Path(workdir).absolute())}
  data = identity["data"]
  classes = data.get("classes")
  return {"workdir": str(pathlib.Path(workdir).absolute()), "id": identity["id"], "history": identity["history"],
          "data": {**{k: v for k, v in data.items() if k not in ("splits", "classes")},
                   "classes": len(classes) if isinstance(classes, list) else classes,
                   "split": data.get("splits", {}).get(split)}}


def evaluation_config(identity: Mapping | None, command: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config to score a run's checkpoint with: the run's own (`identity`), with the command's
  evaluation settings and, when it gives one, its data directory. Without an identity (a converted
  checkpoint, an older run), the command's config."""
  if identity is None:
    return command
  config = command.copy_and_resolve_references()
  command_values = flatten(command.to_dict())
  own = {field: value for field, value in flatten(identity["config"]).items()
         if field in command_values and not _within(field, EVALUATION_FIELDS)}
  if command.data.data_dir:
    own.pop("data.data_dir", None)
  ignored = [Change(field, command_values[field], value) for field, value in own.items()
             if command_values[field] != value and not _within(field, FREE_FIELDS)]
  if ignored:
    logging.warning("scoring with the run's own settings, not the command's: %s", "; ".join(map(str, ignored)))
  with config.ignore_type():
    config.update_from_flattened_dict(own)
  return config
