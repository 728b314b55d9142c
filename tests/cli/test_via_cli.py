"""`shoeseg via`: stats, convert to every format and back, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from shoeseg_app.cli import app
from via_tools.io import load
from via_tools.model import polygons_close

runner = CliRunner()

POLYS = {
    "a.png": [([2.5, 40, 30.25, 5], [3, 4, 28.5, 30])],
    "b.png": [([10, 50, 30], [5, 6, 40]), ([1, 8, 8, 1], [1, 1, 9, 9])],
}


@pytest.fixture
def via_set(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    meta = {}
    for name, polys in POLYS.items():
        Image.new("RGB", (64, 48), (40, 90, 160)).save(images / name)
        size = (images / name).stat().st_size
        meta[f"{name}{size}"] = {
            "filename": name, "size": size, "file_attributes": {},
            "regions": [{"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
                         "region_attributes": {"label": "shoe"}} for xs, ys in polys],
        }
    f = tmp_path / "via.json"
    f.write_text(json.dumps({"_via_settings": {}, "_via_img_metadata": meta, "_via_attributes": {"region": {}, "file": {}},
                             "_via_data_format_version": "2.0.10", "_via_image_id_list": list(meta)}))
    return f, images


def _run(*args):
    return runner.invoke(app, ["via", *map(str, args)])


def test_stats_json_has_the_counts(via_set):
    f, _ = via_set
    r = _run("stats", f, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["format"] == "via2" and s["images"] == 2 and s["regions"] == 3
    assert s["regions_by_shape"] == {"polygon": 3} and s["regions_by_label"] == {"shoe": 3}
    assert "problems" in s


def test_stats_table(via_set):
    f, _ = via_set
    r = _run("stats", f)
    assert r.exit_code == 0, r.output
    assert "via2" in r.stdout and "polygon 3" in r.stdout and "shoe 3" in r.stdout


@pytest.mark.parametrize("fmt", ["via1", "via2", "via3", "csv", "coco", "ls"])
def test_convert_to_each_format_and_back(via_set, tmp_path, fmt):
    f, images = via_set
    out = tmp_path / f"out.{fmt}"
    r = _run("convert", f, "--to", fmt, "-o", out, "--images", images)
    assert r.exit_code == 0, r.output
    back_file = tmp_path / "back.json"
    r = _run("convert", out, "--to", "via2", "-o", back_file)
    assert r.exit_code == 0, r.output
    src, back = load(f), load(back_file)
    assert load(out).source_format == fmt
    by_name = back.by_file_name()
    for img in src:
        other = by_name[img.file_name]
        assert len(other.regions) == len(img.regions)
        for a, b in zip(img.regions, other.regions, strict=True):
            assert a.label == b.label
            assert polygons_close(a.polygons, b.polygons, tol_px=0.01), (fmt, img.file_name)


def test_convert_to_ls_predictions(via_set, tmp_path):
    f, images = via_set
    out = tmp_path / "pred.json"
    r = _run("convert", f, "--to", "ls", "--as", "predictions", "-o", out, "--images", images)
    assert r.exit_code == 0, r.output
    tasks = json.loads(out.read_text())
    assert all("predictions" in t and "annotations" not in t for t in tasks)


def test_coco_without_image_sizes_still_converts_with_a_warning(via_set, tmp_path):
    f, _ = via_set
    r = _run("convert", f, "--to", "coco", "-o", tmp_path / "c.json")
    assert r.exit_code == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    assert "width" not in doc["images"][0]


@pytest.mark.parametrize("content,needle", [
    ('{"a": ', "line 1 column 7"),
    ('{"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"id": 3, "image_id": 2, "category_id": 1, '
     '"segmentation": []}], "categories": [{"id": 1, "name": "shoe"}]}', "annotation 3: image_id 2"),
    ('[{"data": {"image": "a.jpg"}, "annotations": [{"id": 1, "result": [{"type": "polygonlabels", '
     '"value": {"points": [[0, 0], [1, 1], [0, 1]]}}]}]}]', "original_width"),
])
def test_bad_file_exits_2_with_the_file_name_and_no_traceback(tmp_path, content, needle):
    bad = tmp_path / "broken-file.json"
    bad.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "shoeseg_app", "via", "stats", str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "broken-file.json" in line and needle in line, proc.stderr
    assert "Traceback" not in proc.stderr


def test_convert_with_missing_images_exits_2(via_set, tmp_path):
    f, images = via_set
    (images / "b.png").unlink()
    r = _run("convert", f, "--to", "coco", "-o", tmp_path / "c.json", "--images", images)
    assert r.exit_code == 2
    assert "b.png" in r.stderr and not (tmp_path / "c.json").exists()


def test_import_against_an_unreachable_server_names_the_url(via_set):
    f, images = via_set
    r = _run("import", f, "--images", images, "--url", "http://127.0.0.1:9", "--api-key", "x", "--title", "abc")
    assert r.exit_code == 2
    assert "http://127.0.0.1:9" in r.stderr and "cannot reach Label Studio" in r.stderr
