"""VIA → Label Studio → VIA through `shoeseg via import` / `export` against a real Label Studio server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from via_tools.io import load
from via_tools.labelstudio import labeling_config
from via_tools.model import polygons_close

pytestmark = pytest.mark.e2e

POLYS = {
    "left.png": [([2.5, 40, 30.25, 5], [3, 4, 28.5, 30.75]), ([45, 60, 52.125], [30, 31, 45])],
    "right.png": [([10.5, 50, 30], [5, 6.25, 40])],
    "sub/empty.png": [],
}


def make_via_set(root, *, size_wh=(64, 48)):
    root.mkdir(parents=True, exist_ok=True)
    meta = {}
    for k, (name, polys) in enumerate(POLYS.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size_wh, (30 * k, 90, 160)).save(root / name)
        size = (root / name).stat().st_size
        meta[f"{name}{size}"] = {
            "filename": name, "size": size, "file_attributes": {},
            "regions": [{"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
                         "region_attributes": {"label": "shoe"}} for xs, ys in polys],
        }
    f = root / "via_project.json"
    f.write_text(json.dumps({"_via_img_metadata": meta, "_via_image_id_list": list(meta),
                             "_via_attributes": {"region": {}, "file": {}}, "_via_settings": {}}))
    return f


def shoeseg(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "shoeseg_app", "--log-level", "WARNING", "via", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def assert_same_polygons(src_file, back_file, *, labelled_only=False):
    src, back = load(src_file), load(back_file)
    by_name = back.by_file_name()
    wanted = [img for img in src if img.regions or not labelled_only]
    assert set(by_name) == {img.file_name for img in wanted}
    for img in wanted:
        other = by_name[img.file_name]
        assert [r.label for r in other.regions] == [r.label for r in img.regions]
        for a, b in zip(img.regions, other.regions, strict=True):
            assert polygons_close(a.polygons, b.polygons, tol_px=0.01), img.file_name


def project_id_of(output: str) -> int:
    return int(output.split("project ", 1)[1].split(":", 1)[0])


def test_import_as_annotations_twice_then_export(label_studio, ls_client, tmp_path):
    via = make_via_set(tmp_path / "uploaded")  # outside the server's files root: images are uploaded
    common = ["--images", via.parent, "--url", label_studio.url, "--api-key", label_studio.token]
    out1 = shoeseg("import", via, *common, "--title", "e2e annotations")
    pid = project_id_of(out1)
    assert "3 task(s) created" in out1 and "2 annotations created" in out1 and "3 image(s) uploaded" in out1
    out2 = shoeseg("import", via, *common, "--title", "e2e annotations")
    assert project_id_of(out2) == pid
    assert "0 task(s) created, 3 already there" in out2 and "0 annotations created, 2 already there" in out2
    assert "0 image(s) uploaded" in out2

    tasks = list(ls_client.tasks.list(project=pid, fields="all"))
    assert len(tasks) == 3
    assert sorted(len(t.annotations) for t in tasks) == [0, 1, 1]
    # the uploaded image is served back, byte for byte
    t = next(t for t in tasks if t.data["file_name"] == "left.png")
    got = ls_client.connection.request(t.data["image"].lstrip("/"), method="GET")
    assert got.status_code == 200 and got.content == (via.parent / "left.png").read_bytes()

    back = tmp_path / "back.json"
    shoeseg("export", "--url", label_studio.url, "--api-key", label_studio.token, "--project", pid, "-o", back)
    assert_same_polygons(via, back)

    # a corrected polygon adds one annotation to its task; the export takes the latest
    doc = json.loads(via.read_text())
    entry = next(e for e in doc["_via_img_metadata"].values() if e["filename"] == "right.png")
    entry["regions"][0]["shape_attributes"]["all_points_x"][0] = 12.75
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(doc))
    out3 = shoeseg("import", fixed, *common, "--project", pid)
    assert "0 task(s) created" in out3 and "1 annotations created, 1 already there" in out3
    coco = tmp_path / "back.coco.json"
    shoeseg("export", "--url", label_studio.url, "--api-key", label_studio.token, "--project", pid, "-o", coco,
            "--format", "coco", "--accepted-only")
    exported = json.loads(coco.read_text())
    assert len(exported["images"]) == 2 and len(exported["annotations"]) == 3
    assert_same_polygons(fixed, coco, labelled_only=True)


def test_import_as_predictions_from_local_files(label_studio, ls_client, tmp_path):
    via = make_via_set(label_studio.files_root / "e2e-local")  # under LOCAL_FILES_DOCUMENT_ROOT
    common = ["--images", via.parent, "--url", label_studio.url, "--api-key", label_studio.token,
              "--as", "predictions", "--files-root", label_studio.files_root, "--model-version", "via-e2e"]
    project = ls_client.projects.create(title="e2e predictions",
                                        label_config=labeling_config(["shoe"]))
    for _ in range(2):
        shoeseg("import", via, *common, "--project", project.id)
    tasks = list(ls_client.tasks.list(project=project.id, fields="all"))
    assert len(tasks) == 3
    assert all(t.data["image"].startswith("/data/local-files/?d=e2e-local/") for t in tasks)
    assert sorted(len(t.predictions) for t in tasks) == [0, 1, 1]
    assert all(len(t.annotations) == 0 for t in tasks)
    assert {p.model_version for t in tasks for p in t.predictions} == {"via-e2e"}
    t = next(t for t in tasks if t.data["file_name"] == "right.png")
    got = ls_client.connection.request(t.data["image"].lstrip("/"), method="GET")
    assert got.status_code == 200 and got.content == (via.parent / "right.png").read_bytes()

    back = tmp_path / "pred.json"
    shoeseg("export", "--url", label_studio.url, "--api-key", label_studio.token, "--project", project.id,
            "-o", back, "--predictions")
    assert_same_polygons(via, back)


def test_wrong_api_key_is_a_clean_error(label_studio, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "shoeseg_app", "via", "export", "--url", label_studio.url, "--api-key", "wrong-key",
         "--project", "1", "-o", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert label_studio.url in proc.stderr and "refused the API key" in proc.stderr
    assert "Traceback" not in proc.stderr
