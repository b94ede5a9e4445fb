"""One reading of ``--data`` strings for training and evaluation (camlens.data.source.resolve_data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from camlens import CamlensError
from camlens.data.samples import dataset_samples
from camlens.data.source import DataSource, resolve_data


def test_resolve_data_reads_builtin_stl10_wsol_metadata_and_other_folders(tmp_path):
    assert resolve_data("builtin") == DataSource("builtin")
    assert resolve_data("stl10") == DataSource("stl10", Path("data"))
    assert resolve_data("stl10:/srv/stl") == DataSource("stl10", Path("/srv/stl"))
    for where in ("flat", "nested/train", "split/val"):
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "image_ids.txt").write_text("a.png\n")
    assert resolve_data(str(tmp_path / "flat")) == DataSource("wsol", tmp_path / "flat")
    assert resolve_data(str(tmp_path / "nested")) == DataSource("wsol", tmp_path / "nested")
    assert resolve_data(str(tmp_path / "split"), "val") == DataSource("wsol", tmp_path / "split")
    assert resolve_data(str(tmp_path / "split")) == DataSource("folder", tmp_path / "split")  # val/ only with split
    assert resolve_data(str(tmp_path / "cats")) == DataSource("folder", tmp_path / "cats")


def test_evaluation_refuses_stl10_in_one_line_naming_what_to_use():
    with pytest.raises(CamlensError, match=r"^--data stl10: STL-10 has no boxes .* use builtin or a folder"):
        dataset_samples("stl10")
