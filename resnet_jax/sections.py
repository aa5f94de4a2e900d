"""Typed sections of a run config (`model`, `schedule`, `optimizer`): frozen dataclasses whose
defaults are the paper's and whose checks run on construction. The run config's ConfigDict keeps
the same fields (from these defaults), so every setting is overridable on the command line and
checked in one place."""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from resnet_jax.errors import ConfigError

Section = TypeVar("Section")


def from_mapping(cls: type[Section], fields: Mapping[str, Any], name: str) -> Section:
  """`cls` from a dict or a ConfigDict section; an unknown field is an error, not ignored."""
  fields = dict(fields.items())
  known = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(fields) - set(known))
  if unknown:
    raise ConfigError(f"unknown {name} option(s) {unknown}; valid: {', '.join(sorted(known))}")
  return cls(**fields)


def check(section: Any, name: str, rules: tuple[tuple[str, Callable[[Any], bool], str], ...]) -> None:
  """Refuses the first field of `section` (the run config itself when `name` is '') that fails its
  rule (field, test, what it must be), naming the flag that sets it."""
  for field, valid, requirement in rules:
    value = getattr(section, field)
    field = f"{name}.{field}" if name else field
    try:
      ok = valid(value)
    except TypeError:
      ok = False
    if not ok:
      raise ConfigError(f"{field}={value!r} is invalid: it must be {requirement} (--config.{field}=...)")
