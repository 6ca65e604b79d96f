"""Every YAML block in docs/parallelism.md parses as a `train_lm` config, and the worked
examples give the meshes and mappings the page states (on the 8 fake CPU devices)."""

from __future__ import annotations

import pathlib
import re

import pytest
import yaml

import lm.config
from lm.main.train_lm import TrainLmConfig

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "parallelism.md"


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


def _parse(block: str, tmp_path, *args: str) -> TrainLmConfig:
    path = tmp_path / "run.yaml"
    path.write_text(block)
    return lm.config.parse(TrainLmConfig, str(path), list(args))


def test_every_yaml_block_parses(tmp_path):
    blocks = _yaml_blocks()
    assert len(blocks) == 5
    for block in blocks:
        assert yaml.safe_load(block)  # not empty
        # the two-process example leaves process_id to the command line
        _parse(block, tmp_path, "--trainer.distributed.process_id", "1")


def _block_with(text: str) -> str:
    (block,) = [b for b in _yaml_blocks() if text in b]
    return block


def test_worked_example_mesh_and_mappings(tmp_path):
    config = _parse(_block_with("tensor_parallel_axes: [heads, mlp]"), tmp_path).trainer
    assert dict(config.device_mesh.shape) == {"replica": 1, "data": 4, "model": 2}
    assert config.compute_axis_mapping == {
        "batch": ("replica", "data"),
        "heads": "model",
        "mlp": "model",
    }
    assert config.parameter_axis_mapping == {**config.compute_axis_mapping, "embed": "data"}


def test_advanced_example_mesh_and_mappings(tmp_path):
    config = _parse(_block_with("parameter_axis_resources"), tmp_path).trainer
    assert dict(config.device_mesh.shape) == {"replica": 2, "data": 2, "model": 2}
    compute = {"batch": ("replica", "data"), "heads": "model", "mlp": "model"}
    assert config.compute_axis_mapping == compute
    assert config.parameter_axis_mapping == {**compute, "embed": ("replica", "data")}


@pytest.mark.parametrize(
    ("replica", "model", "expected"),
    [(1, 1, (1, 8, 1)), (1, 2, (1, 4, 2)), (2, 1, (2, 4, 1)), (1, -1, (1, 1, 8))],
)
def test_mesh_table(tmp_path, replica, model, expected):
    # the rows of the 8-device table on the page
    row = f"| {replica} | {model} | ({', '.join(map(str, expected))}) |"
    assert row in DOC.read_text()
    config = _parse(
        f"trainer:\n  replica_ici_axis_size: {replica}\n  model_axis_size: {model}\n", tmp_path
    ).trainer
    shape = config.mesh_shape
    assert (shape.replica, shape.data, shape.model) == expected
