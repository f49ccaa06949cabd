"""The typed model info: bundled distill.json files round-trip unchanged, unknown keys survive, bad input is refused."""
import json

import pytest

from distill.model_info import DataInfo, ModelInfo
from distill.teachers.loading import ASSET_DIR, INFO_FILE


@pytest.mark.parametrize("path", sorted(ASSET_DIR.glob(f"*/{INFO_FILE}")), ids=lambda p: p.parent.name)
def test_bundled_info_files_round_trip_unchanged(path):
    stored = json.loads(path.read_text())
    assert ModelInfo.from_json(stored).to_json() == stored


def test_unknown_keys_survive_and_fields_are_typed():
    info = ModelInfo.from_json({"name": "m", "data": {"name": "mnist", "size": 16, "classes": [3, 7]},
                                "num_classes": 10, "null_label": 10, "licence": "MIT"})
    assert info.data == DataInfo("mnist", 16, [3, 7]) and info.conditional and info.extra == {"licence": "MIT"}
    assert info.to_json()["licence"] == "MIT" and info.replace(teacher="mnist").to_json()["teacher"] == "mnist"
    assert ModelInfo.from_json({"data": "digits"}).data.name == "digits"  # a dataset name alone


def test_assigning_a_mapping_converts_it_and_a_list_is_refused():
    from distill.teachers.loading import eight_gaussians_exact

    teacher = eight_gaussians_exact()
    teacher.info = {"num_classes": 3, "null_label": 3}
    assert isinstance(teacher.info, ModelInfo) and teacher.info.null_label == 3 and teacher.info.data.name is None
    with pytest.raises(TypeError, match="must be a mapping"):
        teacher.info = ["mnist"]
