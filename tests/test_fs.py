"""`lm.fs`: local paths in configs, and folders a run will create."""

import os

import pytest

from lm.fs import cannot_write_directory, local_path, not_a_directory


def test_local_path_expands_plain_and_file_urls_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_path("runs/a") == str(tmp_path / "runs" / "a")
    assert local_path(f"file://{tmp_path}/b") == str(tmp_path / "b")
    assert local_path("~/x") == os.path.expanduser("~/x")
    assert local_path("gs://bucket/x") is None
    assert local_path("memory://x") is None


def test_not_a_directory_finds_a_file_on_the_way(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "afile").write_text("")
    assert not_a_directory(str(tmp_path / "dir")) is None  # exists
    assert not_a_directory(str(tmp_path / "dir" / "new" / "deeper")) is None  # can be made
    assert (
        not_a_directory(str(tmp_path / "afile")) == f"{tmp_path}/afile is a file, not a directory"
    )
    assert not_a_directory(f"{tmp_path}/afile/run/x") == (
        f"{tmp_path}/afile/run/x cannot be a directory: {tmp_path}/afile, on its path, is a file"
    )
    assert not_a_directory(f"file://{tmp_path}/afile") is not None
    assert not_a_directory("gs://bucket/afile") is None  # remote: checked when opened


def test_cannot_write_directory_probes_and_leaves_nothing(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "afile").write_text("")
    assert cannot_write_directory(str(tmp_path / "dir")) is None
    assert cannot_write_directory(str(tmp_path / "new" / "deeper")) is None
    assert sorted(os.listdir(tmp_path)) == ["afile", "dir"]  # the probe's folders are gone
    assert os.listdir(tmp_path / "dir") == []  # and its file
    assert "is a file, not a directory" in cannot_write_directory(str(tmp_path / "afile"))
    assert cannot_write_directory("memory://x/y") is None  # remote: checked when written
    if os.path.isdir("/proc/self"):  # read-only even for root, where permission bits pass
        assert cannot_write_directory("/proc/lm-export-x/y").startswith(
            "cannot write to /proc/lm-export-x/y: "
        )


@pytest.mark.parametrize(
    "field, make",
    [("trainer.log_dir", "log_dir"), ("trainer.checkpointer.base_path", "base_path")],
)
def test_trainer_output_folders_that_are_files_fail_before_anything_is_written(
    tmp_path, field, make
):
    from lm.checkpoint import CheckpointerConfig
    from lm.config import FieldError
    from lm.trainer import TrainerConfig

    blocker = tmp_path / "afile"
    blocker.write_text("")
    fields = {
        "log_dir": tmp_path / "logs",
        "checkpointer": CheckpointerConfig(base_path=str(tmp_path / "ck")),
    }
    if make == "log_dir":
        fields["log_dir"] = blocker
    else:
        fields["checkpointer"] = CheckpointerConfig(base_path=str(blocker / "ck"))
    config = TrainerConfig(id="r", require_accelerator=False, **fields)
    with pytest.raises(FieldError, match=f"^{field}: .*afile.* file"):
        config.initialize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
