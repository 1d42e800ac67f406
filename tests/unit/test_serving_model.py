"""The pyfunc model's input handling (no services, no model): which bytes each row means."""

from __future__ import annotations

import base64
import math

import pandas as pd
import pytest

from weather_tasks import serving_model


def test_rows_take_image_bytes_base64_text_or_a_path(tmp_path) -> None:
    f = tmp_path / "x.jpg"
    f.write_bytes(b"from-file")
    frame = pd.DataFrame(
        {
            "image": [b"raw", base64.b64encode(b"b64").decode(), None, math.nan, b""],
            "path": [str(f), None, str(f), str(tmp_path / "missing.jpg"), None],
        }
    )
    rows = serving_model._sources(frame)
    assert [data for data, _ in rows] == [b"raw", b"b64", b"from-file", None, None]
    assert "cannot read" in rows[3][1] and "missing.jpg" in rows[3][1]
    assert rows[4][1] == "row has neither 'image' nor 'path'"


@pytest.mark.parametrize("columns", [{"image": [b"x"]}, {"path": ["/x"]}])
def test_either_column_alone_is_enough(columns: dict) -> None:
    assert len(serving_model._sources(pd.DataFrame(columns))) == 1


def test_a_frame_without_image_or_path_is_rejected_as_a_whole() -> None:
    with pytest.raises(ValueError, match="'image' or 'path' column"):
        serving_model._sources(pd.DataFrame({"img": [b"x"]}))


def test_image_of_another_type_is_a_per_row_error() -> None:
    (data, reason), = serving_model._sources(pd.DataFrame({"image": [12345]}))
    assert data is None and "must be bytes or base64 text" in reason
