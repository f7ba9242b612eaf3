"""The mapping of a per-rater dataset onto the store: which columns are the item, the rater, the
rater's group and the label, how label values become labels, and the label scale.

A mapping is a YAML file (the presets of :data:`PRESETS` ship beside this module)::

    source: dices                  # namespace of rater and vote ids, and the votes' source
    format: csv                    # csv | jsonl | parquet | hf | hh  (default: from the file name)
    item: {prompt: context, response: response, id: item_id}   # id optional
    rater: rater_id
    group: rater_race              # one column, or a template such as "{rater_gender}/{rater_age}"
    label:
      column: Q_overall
      values: {"No": safe, "Unsure": unsure, "Yes": unsafe}    # several values may share a label
      skip: []                     # values dropped and counted; any other value is an error
      # or, for numbers: bins: [{min: 81, max: 100, label: very_good}, ...]  (inclusive bounds)
    scale: {names: [safe, unsure, unsafe], rewards: [1.0, 0.0, -1.0], grid: [[0], [1], [2]]}
    join: {file: survey.jsonl, on: user_id}                     # optional rater table
    split: train                   # hf: the split of a saved DatasetDict

Every key is checked when the mapping is loaded; an unknown or ill-typed one is refused in one
line naming the mapping and the key.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raydprm.core.label_scale import LabelScale
from raydprm.store.preference_store import StoreError

__all__ = ["Mapping", "MappingError", "load_mapping", "preset_path", "PRESETS", "FORMATS"]

PRESET_DIR = Path(__file__).with_name("presets")
PRESETS = ("dices", "prism", "hh")
FORMATS = ("csv", "jsonl", "parquet", "hf", "hh")
_TOP = {"source", "format", "item", "rater", "group", "label", "scale", "join", "split", "description",
        "persona", "chosen_label", "rejected_label", "ts"}


class MappingError(StoreError):
    """A mapping file is missing a key, has an unknown one, or one of the wrong type."""


@dataclass(frozen=True)
class Bin:
    lo: float
    hi: float
    label: str


@dataclass(frozen=True)
class Mapping:
    """A checked mapping (see the module docstring). ``group_columns`` are the columns the group
    template reads; ``columns`` every column the ratings file must have (join columns aside)."""

    where: str
    source: str
    format: str | None
    prompt: str = ""
    response: str = ""
    item_id: str | None = None
    rater: str = ""
    group: str = ""
    group_columns: tuple[str, ...] = ()
    label_column: str = ""
    values: dict[str, str] = field(default_factory=dict)
    bins: tuple[Bin, ...] = ()
    skip: tuple[str, ...] = ()
    scale: LabelScale | None = None
    join_file: str | None = None
    join_on: str | None = None
    join_format: str | None = None
    split: str = "train"
    ts: str | None = None
    hh: dict[str, Any] = field(default_factory=dict)

    @property
    def is_template(self) -> bool:
        return "{" in self.group

    def with_group(self, group: str) -> Mapping:
        """The same mapping with another group column or template (``--group``)."""
        import dataclasses

        return dataclasses.replace(self, group=group, group_columns=_template_columns(group, self.where, "group"))

    def with_join_file(self, path: str) -> Mapping:
        import dataclasses

        if self.join_on is None:
            raise MappingError(f"mapping {self.where} has no 'join' section, so --join has nothing to join")
        return dataclasses.replace(self, join_file=path)

    def columns(self, available_join: tuple[str, ...] = ()) -> list[str]:
        """Columns the ratings file must have; group columns found in the rater table are not
        needed in it (``available_join``)."""
        cols = [self.rater, self.prompt, self.response, self.label_column]
        cols += [c for c in (self.item_id, self.ts) if c]
        if self.join_on:
            cols.append(self.join_on)
        cols += [c for c in self.group_columns if c not in available_join]
        return list(dict.fromkeys(cols))


def preset_path(name: str) -> Path:
    """The mapping file of a shipped preset."""
    if name not in PRESETS:
        raise MappingError(f"unknown preset '{name}'; presets: {', '.join(PRESETS)}")
    return PRESET_DIR / f"{name}.yaml"


def _template_columns(group: str, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(group, str) or not group.strip():
        raise MappingError(f"mapping {where}: '{key}' must be a column name or a template such as "
                           "'{rater_gender}/{rater_age}'")
    if "{" not in group:
        return (group,)
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(group) if f is not None]
    except ValueError as e:
        raise MappingError(f"mapping {where}: '{key}' template {group!r} is malformed ({e})") from None
    if not fields or any(not f for f in fields):
        raise MappingError(f"mapping {where}: '{key}' template {group!r} must name columns in braces")
    return tuple(dict.fromkeys(fields))


def _str(d: dict, key: str, where: str, path: str, required: bool = True) -> str | None:
    v = d.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip():
        raise MappingError(f"mapping {where}: '{path}' must be a non-empty string, got {v!r}")
    return v


def _section(d: dict, key: str, where: str, allowed: set[str], required: bool = True) -> dict | None:
    v = d.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, dict):
        raise MappingError(f"mapping {where}: '{key}' must be a mapping of keys, got {type(v).__name__}")
    if True in v and "on" in allowed:  # YAML 1.1 reads an unquoted `on:` key as the boolean true
        v = {("on" if k is True else k): x for k, x in v.items()}
        d[key] = v
    unknown = sorted(set(map(str, v)) - allowed)
    if unknown:
        raise MappingError(f"mapping {where}: unknown key '{key}.{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")
    return v


def _scale(d: dict | None, where: str) -> LabelScale | None:
    if d is None:
        return None
    try:
        grid = d.get("grid")
        return LabelScale(names=tuple(d["names"]), rewards=tuple(d["rewards"]),
                          grid=None if grid is None else tuple(tuple(g) for g in grid))
    except KeyError as e:
        raise MappingError(f"mapping {where}: 'scale' needs {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise MappingError(f"mapping {where}: 'scale' is invalid ({e})") from None


def parse_mapping(data: Any, where: str) -> Mapping:
    """Check a mapping given as parsed YAML; ``where`` names it in errors."""
    if not isinstance(data, dict):
        raise MappingError(f"mapping {where} must be a YAML mapping of keys, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - _TOP)
    if unknown:
        raise MappingError(f"mapping {where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(_TOP))})")
    fmt = data.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise MappingError(f"mapping {where}: 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    source = _str(data, "source", where, "source")
    if len(source) > 64 or ":" in source:
        raise MappingError(f"mapping {where}: 'source' must be at most 64 chars without ':', got {source!r}")
    if fmt == "hh":
        hh = {k: data[k] for k in ("persona", "chosen_label", "rejected_label") if k in data}
        return Mapping(where=where, source=source, format="hh", scale=_scale(data.get("scale"), where), hh=hh)
    item = _section(data, "item", where, {"prompt", "response", "id"})
    label = _section(data, "label", where, {"column", "values", "bins", "skip"})
    scale = _scale(_section(data, "scale", where, {"names", "rewards", "grid"}, required=False), where)
    names = set(scale.names) if scale is not None else None
    values: dict[str, str] = {}
    bins: list[Bin] = []
    if ("values" in label) == ("bins" in label):
        raise MappingError(f"mapping {where}: 'label' needs exactly one of 'values' (value -> label) or 'bins'")
    if "values" in label:
        if not isinstance(label["values"], dict) or not label["values"]:
            raise MappingError(f"mapping {where}: 'label.values' must map file values to label names")
        for k, v in label["values"].items():
            if isinstance(k, bool):
                raise MappingError(f"mapping {where}: 'label.values' key {k!r} is a YAML boolean; quote the file's "
                                   "value (\"Yes\": ..., \"No\": ...)")
            if not isinstance(v, str):
                raise MappingError(f"mapping {where}: 'label.values.{k}' must be a label name, got {v!r}")
            values[_value_key(k)] = v
    else:
        if not isinstance(label["bins"], list) or not label["bins"]:
            raise MappingError(f"mapping {where}: 'label.bins' must be a list of {{min, max, label}}")
        for i, b in enumerate(label["bins"]):
            if not isinstance(b, dict) or set(b) != {"min", "max", "label"}:
                raise MappingError(f"mapping {where}: 'label.bins[{i}]' must have exactly min, max and label")
            lo, hi = b["min"], b["max"]
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in (lo, hi)) \
                    or lo > hi:
                raise MappingError(f"mapping {where}: 'label.bins[{i}]' needs finite numbers min <= max")
            bins.append(Bin(float(lo), float(hi), str(b["label"])))
    used = set(values.values()) | {b.label for b in bins}
    if names is not None and not used <= names:
        bad = sorted(used - names)[0]
        raise MappingError(f"mapping {where}: label '{bad}' is not in scale.names {list(scale.names)}")
    skip = label.get("skip", []) or []
    if not isinstance(skip, list):
        raise MappingError(f"mapping {where}: 'label.skip' must be a list of values")
    join = _section(data, "join", where, {"file", "on", "format"}, required=False)
    group = data.get("group")
    m = Mapping(
        where=where, source=source, format=fmt, prompt=_str(item, "prompt", where, "item.prompt"),
        response=_str(item, "response", where, "item.response"),
        item_id=_str(item, "id", where, "item.id", required=False),
        rater=_str(data, "rater", where, "rater"), group=group,
        group_columns=_template_columns(group, where, "group"),
        label_column=_str(label, "column", where, "label.column"), values=values, bins=tuple(bins),
        skip=tuple(_value_key(x) for x in skip), scale=scale,
        join_file=None if join is None else (None if join.get("file") is None else str(join["file"])),
        join_on=None if join is None else _str(join, "on", where, "join.on"),
        join_format=None if join is None else join.get("format"),
        split=str(data.get("split", "train")), ts=_str(data, "ts", where, "ts", required=False))
    return m


def _value_key(v: Any) -> str:
    """A file value as the mapping compares it: text as is, integral numbers without '.0'."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def load_mapping(path: str | Path | None = None, preset: str | None = None) -> Mapping:
    """Read and check a mapping file, or a shipped preset by name."""
    if (path is None) == (preset is None):
        raise MappingError("give a mapping file or a preset name (one of them)")
    p = preset_path(preset) if preset is not None else Path(path)
    where = f"preset '{preset}'" if preset is not None else f"'{p}'"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise MappingError(f"cannot read mapping {where}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise MappingError(f"mapping {where} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MappingError(f"mapping {where} is not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_mapping(data, where)
