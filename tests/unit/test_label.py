"""The file-name label rule, table-driven."""

from __future__ import annotations

import pytest

from weather_tasks.config import DEFAULT_CLASSES
from weather_tasks.label import label_for_key, tokens


@pytest.mark.parametrize(
    ("key", "label", "reason"),
    [
        ("incoming/cloudy12.jpg", "cloudy", None),
        ("incoming/sunrise_003.png", "sunrise", None),
        ("incoming/Rain-7.JPG", "rain", None),
        ("incoming/SHINE140.jpeg", "shine", None),
        ("incoming/batch/2026/rain.jpg", "rain", None),
        ("incoming/rainbow_shine.jpg", "shine", None),  # the seed's `in` filed it twice
        ("incoming/rainy_day.jpg", None, "no_class"),  # a token must equal a class name
        ("incoming/sunshine.jpg", None, "no_class"),
        ("incoming/IMG_0001.jpg", None, "no_class"),
        ("incoming/shine_rain.jpg", None, "ambiguous_class"),
        ("incoming/cloudy-sunrise-2.png", None, "ambiguous_class"),
        ("incoming/cloudy_cloudy.jpg", "cloudy", None),
        ("incoming/rain/shine1.jpg", "shine", None),  # only the file name counts
        ("incoming/.rain", "rain", None),
        ("incoming/rain", "rain", None),
        ("incoming/../../cloudy9.jpg", "cloudy", None),
    ],
)
def test_label_for_key(key: str, label: str | None, reason: str | None) -> None:
    result = label_for_key(key, DEFAULT_CLASSES)
    assert (result.label, result.reason) == (label, reason)


def test_tokens_split_at_letter_digit_boundaries() -> None:
    assert tokens("a/Rain-7.JPG") == ["rain", "7"]
    assert tokens("cloudy12.tar.gz") == ["cloudy", "12", "tar"]


def test_custom_classes() -> None:
    assert label_for_key("fog_1.jpg", ("fog", "snow")).label == "fog"
    assert label_for_key("rain_1.jpg", ("fog", "snow")).reason == "no_class"
