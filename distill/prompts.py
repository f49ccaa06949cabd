"""Prompt datasets for text-to-image teachers: a text file (one prompt per line), a CSV or JSONL of captions, or an
image-caption folder (Hugging Face ``imagefolder`` layout: ``metadata.jsonl`` / ``metadata.csv`` with ``file_name``
and a caption column, or one ``.txt`` caption beside each image).

A pipeline folder may also bring its own prompts (``prompts.json``, :func:`vocabulary_prompts`): the class names and
the phrasings to train and to judge with, so that prompt agreement (does the image show the class the prompt names)
can be measured on phrasings never trained. :func:`conditions_in_turn` is the one place a model's conditions are
drawn: class labels in turn for a class-conditional model, prompts in turn for a text-to-image one."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

CAPTION_COLUMNS = ("text", "caption", "prompt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VOCABULARY_FILE = "prompts.json"  # in a pipeline folder: its own prompts (vocabulary_prompts)
SPLITS = ("train", "held_out")


@dataclass(frozen=True)
class PromptSet:
    """``prompts`` in file order; ``images``: the image each caption describes (an image-caption folder), else
    ``None``; ``labels``: the class each prompt names (a pipeline's ``prompts.json``), else ``None``."""

    prompts: list[str]
    source: str
    images: list[Path] | None = None
    labels: list[int] | None = None

    def __len__(self) -> int:
        return len(self.prompts)


def load_prompts(source: str | Path) -> PromptSet:
    """Read a prompt dataset (see the module docstring); every error names the file and what to fix."""
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no prompt file or folder at {path}: pass a .txt (one prompt per line), .csv, "
                                ".jsonl or an image-caption folder")
    if path.is_dir():
        prompts = caption_folder(path)
    elif path.suffix == ".txt":
        prompts = PromptSet([line.strip() for line in path.read_text().splitlines() if line.strip()], str(path))
    elif path.suffix == ".csv":
        prompts = PromptSet([caption(row, path, i + 2) for i, row in enumerate(csv_rows(path))], str(path))
    elif path.suffix in (".jsonl", ".json"):
        prompts = PromptSet([caption(row, path, i + 1) for i, row in enumerate(jsonl_rows(path))], str(path))
    else:
        raise ValueError(f"{path}: unknown prompt file type {path.suffix!r}; use .txt, .csv or .jsonl")
    if not prompts.prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def jsonl_rows(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON object ({error.msg}); write one object per line, "
                             f'such as {{"text": "a handwritten 3"}}') from None
        rows.append({"text": row} if isinstance(row, str) else row)
    return rows


def caption(row, path: Path, line: int) -> str:
    """The caption column of one row (the first of ``CAPTION_COLUMNS`` present)."""
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{line}: expected an object with a {' / '.join(CAPTION_COLUMNS)} field")
    for column in CAPTION_COLUMNS:
        if isinstance(row.get(column), str):
            return row[column].strip()
    raise ValueError(f"{path}:{line}: no caption column; name one of {', '.join(CAPTION_COLUMNS)} "
                     f"(found {', '.join(map(str, row)) or 'none'})")


def caption_folder(folder: Path) -> PromptSet:
    """``metadata.jsonl`` / ``metadata.csv`` (``file_name`` + caption), else ``<image>.txt`` beside each image."""
    for name, reader in (("metadata.jsonl", jsonl_rows), ("metadata.csv", csv_rows)):
        metadata = folder / name
        if metadata.exists():
            rows = reader(metadata)
            line = 2 if name.endswith(".csv") else 1
            for i, row in enumerate(rows):
                if "file_name" not in row:
                    raise ValueError(f"{metadata}:{i + line}: no file_name column (the image the caption describes)")
            return PromptSet([caption(row, metadata, i + line) for i, row in enumerate(rows)], str(folder),
                             [folder / row["file_name"] for row in rows])
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    captioned = [image for image in images if image.with_suffix(".txt").exists()]
    if not captioned:
        raise ValueError(f"{folder} has no captions: add metadata.jsonl (file_name, text) or a .txt beside each image")
    return PromptSet([image.with_suffix(".txt").read_text().strip() for image in captioned], str(folder), captioned)


# ------------------------------------------------------------------------------------------------------------
# A pipeline's own prompts, and the conditions every driver draws
# ------------------------------------------------------------------------------------------------------------
def vocabulary_prompts(vocabulary: dict, split: str, source: str = VOCABULARY_FILE) -> PromptSet:
    """The prompts of a ``prompts.json`` vocabulary: ``words`` (class ``i``'s name), ``train_templates`` plus every
    list of ``stroke_templates`` (``split="train"``) or ``held_out_templates`` (``"held_out"``), each template over
    every class in turn (``{word}``: the class name, ``{digit}``: its index), labelled with that class."""
    if split not in SPLITS:
        raise ValueError(f"unknown prompt split {split!r}; use one of {', '.join(SPLITS)}")
    if split == "train":
        templates = [*vocabulary["train_templates"],
                     *(t for group in vocabulary.get("stroke_templates", {}).values() for t in group)]
    else:
        templates = list(vocabulary["held_out_templates"])
    words = vocabulary["words"]
    pairs = [(template.format(word=word, digit=label), label) for template in templates
             for label, word in enumerate(words)]
    return PromptSet([p for p, _ in pairs], f"{source} ({split})", labels=[label for _, label in pairs])


def conditions_in_turn(model, n: int, prompts: str | Path | None = None, split: str = "train", info=None) -> tuple:
    """``(cond, labels)`` for ``n`` samples of ``model`` (a teacher or a student): a class-conditional model's classes
    in turn (those of ``info``, default ``model.info``; ``cond`` is ``labels``); for a text-to-image model, the
    prompts of ``prompts`` (a prompt dataset) or of its own ``prompts.json`` ``split``, in turn, encoded, with the
    classes they name (``None`` when unknown); for an unconditional model, ``(None, None)``."""
    from .data import class_cycle

    chosen = load_prompts(prompts) if prompts is not None else model.prompt_set(split)
    if chosen is None:
        labels = class_cycle(model.info if info is None else info, n)
        return labels, labels
    order = torch.arange(n) % len(chosen)
    cond = model.encode_prompts([chosen.prompts[i] for i in order])
    labels: Tensor | None = None if chosen.labels is None else torch.as_tensor(chosen.labels)[order]
    return cond, labels
