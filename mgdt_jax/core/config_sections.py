"""Typed views of config sections, so library code never needs ml_collections.

Experiment configs are ml_collections ConfigDicts, but the model, the sharding and the train step
also run where ml_collections is absent (benchmarks on a bare accelerator machine), from plain
dicts or any object with attributes. A section dataclass declares the fields its module reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

Section = TypeVar("Section")


def read_section(section_type: type[Section], config: Any) -> Section:
    """Builds a ``section_type`` dataclass from a ConfigDict, a dict or an attribute object.

    Fields missing from ``config`` keep their dataclass defaults; unrelated fields are ignored.
    """
    if isinstance(config, section_type):
        return config
    names = field_names(section_type)
    if isinstance(config, Mapping):
        values = {name: config[name] for name in names if name in config}
    else:
        values = {name: getattr(config, name) for name in names if hasattr(config, name)}
    return section_type(**values)


def field_names(section_type: type) -> tuple[str, ...]:
    """The fields a section dataclass declares (what ``read_section`` reads)."""
    return tuple(field.name for field in dataclasses.fields(section_type))


def section(config: Any, name: str, default: Any = None) -> Any:
    """The ``name`` section (or field) of a config given as a ConfigDict, a dict or an attribute object."""
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)
