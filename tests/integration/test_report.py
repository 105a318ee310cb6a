"""The report page: a missing input is named; the browser check used on the real report can fail."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from browser import rendered_images
from casting_inspection.core.errors import InspectionError
from casting_inspection.evaluation.report import write_report

pytestmark = pytest.mark.slow  # real processes, servers, browsers or dvc runs: skipped by `pytest -m "not slow"`


def test_missing_metrics_are_named(tmp_path):
    with pytest.raises(InspectionError, match=r"data\.json: missing; run the pipeline first"):
        write_report(tmp_path / "metrics", tmp_path / "plots", tmp_path / "reports/index.html")
    assert not (tmp_path / "reports").exists()


def test_browser_check_tells_a_drawn_picture_from_a_broken_one(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), "red").save(buffer, "PNG")
    good = base64.b64encode(buffer.getvalue()).decode()
    page = tmp_path / "page.html"
    page.write_text(
        f'<html><body><img alt="good" src="data:image/png;base64,{good}">'
        f'<img alt="broken" src="data:image/png;base64,AAAA"></body></html>'
    )
    images = {image["alt"]: image for image in rendered_images(page)}
    assert images["good"]["decoded"] and images["good"]["width"] == 40
    assert not images["broken"]["decoded"]
