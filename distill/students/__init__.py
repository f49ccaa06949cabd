"""Flow-map students ``X(x, t, s)``: one interface (:class:`FlowMap`), one class per kind and output rule, and the
registries that name them in configs and ``student.json``."""

from __future__ import annotations

import json
from pathlib import Path

from .base import STUDENT_FILE, FlowMap, jump_gains
from .consistency_form import ConsistencyFormFlowMap
from .outputs import DataFlowMap, PreconditionedFlowMap, VelocityFlowMap
from .teacher_network import TeacherFlowMap
from .two_time import TwoTimeFlowMap

FlowMap.on_teacher_network = TeacherFlowMap  # what FlowMap.from_teacher builds

# student.output in configs and student.json -> the class of a student on the teacher's network
OUTPUT_RULES: dict[str, type[TeacherFlowMap]] = {
    TeacherFlowMap.output_rule: TeacherFlowMap,
    VelocityFlowMap.output_rule: VelocityFlowMap,
    DataFlowMap.output_rule: DataFlowMap,
    PreconditionedFlowMap.output_rule: PreconditionedFlowMap,
    ConsistencyFormFlowMap.output_rule: ConsistencyFormFlowMap,
}
# student.json's kind -> how the folder is read
FOLDER_KINDS = ("from_teacher", "lora", TwoTimeFlowMap.kind)

__all__ = ["FlowMap", "TeacherFlowMap", "TwoTimeFlowMap", "VelocityFlowMap", "DataFlowMap", "PreconditionedFlowMap",
           "ConsistencyFormFlowMap", "OUTPUT_RULES", "STUDENT_FILE", "jump_gains", "load_model", "load_student",
           "student_class"]


def student_class(output_rule: str) -> type[TeacherFlowMap]:
    """The student class of an output rule, with a one-line error naming the valid ones."""
    if output_rule not in OUTPUT_RULES:
        raise ValueError(f"unknown student output {output_rule!r}; use one of {', '.join(OUTPUT_RULES)}")
    return OUTPUT_RULES[output_rule]


def load_student(folder: str | Path, teacher=None) -> FlowMap:
    """Load a student saved by ``save_pretrained``; a LoRA student's adapters go onto ``teacher`` (by default the
    teacher named in its info)."""
    folder = Path(folder)
    if not (folder / STUDENT_FILE).exists():
        raise FileNotFoundError(f"{folder} holds no student ({STUDENT_FILE} missing)")
    spec = json.loads((folder / STUDENT_FILE).read_text())
    kind = spec.get("kind")
    if kind not in FOLDER_KINDS:
        raise ValueError(f"{folder / STUDENT_FILE} names an unknown student kind {kind!r}; this version reads "
                         f"{', '.join(FOLDER_KINDS)}")
    if kind == TwoTimeFlowMap.kind:
        return TwoTimeFlowMap.from_folder(folder, spec)
    return student_class(spec.get("output", TeacherFlowMap.output_rule)).from_folder(folder, spec, teacher)


def load_model(spec: str | Path):
    """``(model, teacher)`` for a command line argument: a student folder (its teacher named in its info, or
    ``None``) or anything ``distill.load_teacher`` takes (then ``model`` is the teacher itself)."""
    from ..teachers import load_teacher

    if (Path(spec) / STUDENT_FILE).exists():
        student = load_student(spec)
        teacher_spec = student.info.teacher
        return student, (load_teacher(teacher_spec) if teacher_spec else None)
    teacher = load_teacher(spec)
    return teacher, teacher
