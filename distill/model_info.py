"""What a teacher or student knows about itself: the typed form of ``distill.json`` and of ``student.json``'s ``info``.

``teacher.info`` and ``student.info`` are :class:`ModelInfo` records. Assigning a mapping (a parsed ``distill.json``,
or a literal in user code) converts it, so the JSON on disk keeps its keys and old folders load unchanged; keys this
record does not name survive a load/save round trip in ``extra``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataInfo:
    """The training data: a dataset name ``distill.data.load_dataset`` knows, its image size (``None``: native or not
    an image set) and, for a model adapted to a class subset, those classes."""

    name: str | None = None
    size: int | None = None
    classes: list[int] | None = None

    @classmethod
    def from_json(cls, value) -> DataInfo:
        if isinstance(value, DataInfo):
            return value
        if isinstance(value, str):  # a dataset name alone (Evaluation(data="mnist"))
            return cls(name=value)
        value = dict(value or {})
        return cls(name=value.get("name"), size=value.get("size"), classes=value.get("classes"))

    def to_json(self) -> dict:
        return {"name": self.name, "size": self.size, **({"classes": list(self.classes)} if self.classes else {})}


@dataclass(frozen=True)
class ModelInfo:
    """``name``/``description``: the model card's; ``data``: what it was trained on; ``num_classes``/``null_label``:
    a class-conditional model's label count and its unconditional label; ``teacher``: the teacher a student was
    distilled from (a bundled name or folder, reloadable by ``distill.load_teacher``); ``guidance_range``: the scales
    a guidance-conditioned student was trained on; ``adapted_from``: the teacher a LoRA fine-tune started from."""

    name: str | None = None
    description: str | None = None
    data: DataInfo = field(default_factory=DataInfo)
    num_classes: int | None = None
    null_label: int | None = None
    teacher: str | None = None
    guidance_range: list[float] | None = None
    adapted_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value) -> ModelInfo:
        """From a parsed ``distill.json`` (or ``None``: nothing known)."""
        if isinstance(value, ModelInfo):
            return value
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"model info must be a mapping (the contents of distill.json), got {type(value).__name__}")
        value = dict(value or {})
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "data"}
        fields = {key: value.pop(key) for key in list(value) if key in known}
        return cls(data=DataInfo.from_json(value.pop("data", None)), **fields, extra=value)

    def to_json(self) -> dict:
        """The ``distill.json`` mapping: the card's keys always, the others when set, then ``extra``."""
        out = {"name": self.name, "description": self.description, "data": self.data.to_json(),
               "num_classes": self.num_classes, "null_label": self.null_label}
        for key in ("teacher", "guidance_range", "adapted_from"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return {**out, **self.extra}

    def replace(self, **changes) -> ModelInfo:
        """A copy with ``changes`` (``data`` may be a mapping)."""
        if "data" in changes:
            changes["data"] = DataInfo.from_json(changes["data"])
        return dataclasses.replace(self, **changes)

    @property
    def conditional(self) -> bool:
        """Whether the model takes class labels."""
        return bool(self.num_classes)


class InfoAttribute:
    """The ``info`` attribute of teachers and students: always a :class:`ModelInfo`, converting a mapping on set."""

    def __set_name__(self, owner, name: str):
        self.slot = "_" + name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        return instance.__dict__.get(self.slot) or ModelInfo()

    def __set__(self, instance, value) -> None:
        instance.__dict__[self.slot] = ModelInfo.from_json(value)
