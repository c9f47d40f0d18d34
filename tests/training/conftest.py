"""Data files of the other shapes, for training tests."""

from __future__ import annotations

import pytest

from tests.training.shape_data import write_shape


@pytest.fixture
def unpaired_file(tmp_path):
    return write_shape(tmp_path, "unpaired", n=16)


@pytest.fixture
def ranked_file(tmp_path):
    return write_shape(tmp_path, "ranked", n=16)


@pytest.fixture
def negatives_file(tmp_path):
    return write_shape(tmp_path, "negatives", n=16)
