"""The annotator's screen: headless Chromium opens a task pre-annotated by the backend and must see the
polygons drawn by Label Studio's editor (not only listed in the Regions panel).

The editor draws regions with Konva; the tests wait until the stage holds one closed polygon per predicted
region, each with pixels painted on its layer's canvas, and the Regions panel lists them, then save a
screenshot (under pytest's tmp_path, copied into ``$SHOESEG_SCREENSHOT_DIR`` when set; its path is printed).

Two tasks: a generated image pre-annotated by a test model, and a real shoe photo (``../shared/datasets/shoes``,
a test-split photo) pre-annotated by a cpu-profile model: the checkpoint ``$SHOESEG_BROWSER_CHECKPOINT`` when
set, otherwise a short lite0-fpn training from its packaged ImageNet weights on 8 train-split photos (about a
minute on 2 cores; its quality is not what is checked, only that the editor shows what it predicted).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.e2e.backend_process import start_backend, stop_backend
from tests.e2e.stack import need_chromium
from via_tools.labelstudio import labeling_config

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


# For every closed Konva polygon on the stage: its point count and the painted pixels inside its box on its
# layer's canvas (the regions layer holds only regions, so painted pixels there are the region itself).
_DRAWN_POLYGONS_JS = """
if (!window.Konva || !window.Konva.stages.length) return null;
const out = [];
for (const stage of window.Konva.stages) {
  for (const line of stage.find('Line')) {
    if (!line.closed() || !line.isVisible() || line.points().length < 6) continue;
    const layer = line.getLayer();
    const canvas = layer.getCanvas();
    const ratio = canvas.getPixelRatio();
    const box = line.getClientRect({relativeTo: stage});
    const x = Math.max(0, Math.floor(box.x * ratio)), y = Math.max(0, Math.floor(box.y * ratio));
    const w = Math.max(1, Math.min(canvas.width - x, Math.ceil(box.width * ratio)));
    const h = Math.max(1, Math.min(canvas.height - y, Math.ceil(box.height * ratio)));
    let painted = 0;
    if (w > 0 && h > 0) {
      const data = canvas.getContext()._context.getImageData(x, y, w, h).data;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
    }
    out.push({points: line.points().length / 2, painted: painted, width: box.width, height: box.height});
  }
}
return out;
"""

_EDITOR_IMAGE_JS = """
if (!window.Konva) return false;
for (const stage of window.Konva.stages) {
  for (const node of stage.find('Image')) {
    const img = node.image();
    if (img && img.complete && img.naturalWidth > 0) return [img.naturalWidth, img.naturalHeight];
  }
}
const dom = document.querySelector('[class*="image-element"] img, .lsf-main-content img');
return dom && dom.complete && dom.naturalWidth > 0 ? [dom.naturalWidth, dom.naturalHeight] : false;
"""


def _login(driver, label_studio) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{label_studio.url}/user/login/")
    driver.find_element(By.NAME, "email").send_keys(label_studio.username)
    driver.find_element(By.NAME, "password").send_keys(label_studio.password)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit], form input[type=submit]").click()
    deadline = time.monotonic() + 60
    while "/user/login" in driver.current_url:
        assert time.monotonic() < deadline, "the login form did not log the browser in"
        time.sleep(0.3)


def _open_task(driver, label_studio, project_id: int, task_id: int, expected: int, shot: Path, *,
               listed_needed: int | None = None):
    """Opens the task in the editor, waits for ``expected`` drawn polygons and ``listed_needed`` (default
    ``expected``) entries in the Regions panel, saves a screenshot.

    Returns:
        ``(image (width, height) or None, drawn polygons, regions listed, screenshot path)``.
    """
    from selenium.webdriver.common.by import By

    _login(driver, label_studio)
    driver.get(f"{label_studio.url}/projects/{project_id}/data?task={task_id}")
    listed_needed = expected if listed_needed is None else listed_needed
    drawn, image_wh, listed = [], None, 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        image_wh = driver.execute_script(_EDITOR_IMAGE_JS)
        drawn = driver.execute_script(_DRAWN_POLYGONS_JS) or []
        listed = len(driver.find_elements(By.CSS_SELECTOR, ".lsf-outliner-item"))
        if image_wh and len(drawn) >= expected and all(d["painted"] > 0 for d in drawn) and listed >= listed_needed:
            break
        time.sleep(0.5)
    driver.save_screenshot(str(shot))
    if os.environ.get("SHOESEG_SCREENSHOT_DIR"):
        target = Path(os.environ["SHOESEG_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shot = Path(shutil.copy(shot, target / shot.name))
    print(f"\nscreenshot: {shot}")
    return image_wh, drawn, listed, shot


def test_editor_draws_the_predicted_polygons(browser, label_studio, preannotated, tmp_path):
    client = label_studio.client()
    task_id = preannotated.task_ids[0]
    (prediction,) = client.predictions.list(task=task_id)
    expected = len(prediction.result)
    assert expected > 0, "the backend gave this task no region to draw"

    image_wh, drawn, listed, shot = _open_task(browser, label_studio, preannotated.project_id, task_id, expected,
                                               tmp_path / "preannotated-task.png")

    assert image_wh, f"the editor did not load the task's image (screenshot {shot})"
    assert tuple(image_wh) == preannotated.sizes_wh[task_id]
    assert len(drawn) == expected, f"{len(drawn)} polygons drawn for {expected} predicted regions (screenshot {shot})"
    assert all(d["painted"] > 0 and d["points"] >= 3 for d in drawn), f"polygons without pixels: {drawn} ({shot})"
    assert listed == expected, f"the Regions panel lists {listed} regions, expected {expected} ({shot})"


# -- a real shoe photo, pre-annotated by a trained cpu-profile model ---------------------------------------

N_TRAIN_PHOTOS = 8


@pytest.fixture(scope="module")
def shoes(shared_dir):
    from shoeseg.data import split_dataset
    from via_tools.io import load
    from via_tools.options import ReadOptions

    root = shared_dir / "datasets" / "shoes"
    if not ((root / "via_project.json").is_file() and (root / "images").is_dir()):
        pytest.skip(f"{root} (via_project.json and images/) is absent: the real-photo check needs it")
    ds = load(root / "via_project.json", options=ReadOptions(images_dir=root / "images"))
    return SimpleNamespace(images=root / "images", ds=ds, split=split_dataset(ds, seed=0))


@pytest.fixture(scope="module")
def shoe_registry(shoes, tmp_path_factory):
    """A registry whose current version is a cpu-profile model: ``$SHOESEG_BROWSER_CHECKPOINT``, or trained here."""
    need_chromium()  # before training: module fixtures start before the browser's skip
    from shoeseg.data import subset
    from shoeseg.train import TrainConfig, train
    from shoeseg_services.registry import ModelRegistry

    root = tmp_path_factory.mktemp("browser-shoes")
    given = os.environ.get("SHOESEG_BROWSER_CHECKPOINT")
    if given:
        checkpoint = Path(given)
        assert checkpoint.is_file(), f"SHOESEG_BROWSER_CHECKPOINT={given} is not a file"
    else:
        config = TrainConfig.for_profile("cpu", device="cpu", arch="lite0-fpn", weights="imagenet", iters=40,
                                         warmup_iters=8, min_size=256, max_size=384, progress_bar=False)
        result = train(config, dataset=subset(shoes.ds, shoes.split["train"][:N_TRAIN_PHOTOS]),
                       images_dir=shoes.images, out_dir=root / "run")
        checkpoint = result.checkpoint
    registry = ModelRegistry(root / "models")
    version = registry.register(checkpoint, meta={"trained_by": "tests/e2e/test_browser.py"})
    registry.promote(version.version)
    return registry


@pytest.fixture(scope="module")
def shoe_backend(label_studio, shoe_registry, tmp_path_factory):
    backend = start_backend(tmp_path_factory.mktemp("browser-shoes-backend"), registry_root=shoe_registry.root,
                            env={"LABEL_STUDIO_URL": label_studio.url})
    yield backend
    stop_backend(backend)


def _photo_project(label_studio, backend, photos: list[Path]) -> tuple[int, dict[int, Path]]:
    """A project of local-file tasks (the photos copied under Label Studio's files root), connected to the
    backend, with "retrieve predictions" run on every task. Returns its id and each task's photo."""
    client = label_studio.client()
    project = client.projects.create(title="shoeseg browser: real shoes", label_config=labeling_config(["shoe"]))
    folder = Path(label_studio.files_root) / f"shoes-{project.id}"
    folder.mkdir(parents=True, exist_ok=True)
    for p in photos:
        shutil.copyfile(p, folder / p.name)
    client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True,
                                       regex_filter=r".*\.jpg", title="shoe photos")
    rel = folder.relative_to(label_studio.files_root).as_posix()
    client.projects.import_tasks(id=project.id, request=[
        {"data": {"image": f"/data/local-files/?d={rel}/{p.name}"}} for p in photos])
    tasks = sorted(client.tasks.list(project=project.id), key=lambda t: t.id)
    assert len(tasks) == len(photos), [t.data for t in tasks]
    by_task = {t.id: folder / t.data["image"].rsplit("/", 1)[1] for t in tasks}
    client.ml.create(url=backend.url, project=project.id, title="shoeseg", is_interactive=True)
    client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": True, "excluded": []})
    return project.id, by_task


@pytest.mark.shared
@pytest.mark.slow
def test_editor_draws_a_trained_models_polygons_on_a_real_shoe_photo(browser, label_studio, shoes, shoe_registry,
                                                                     shoe_backend, tmp_path):
    from via_tools.images import image_size_wh

    client = label_studio.client()
    version = shoe_registry.current_version_id()
    photos = [shoes.images / name for name in shoes.split["test"]]  # photos the model did not train on
    project_id, task_photos = _photo_project(label_studio, shoe_backend, photos)

    predictions = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(predictions) < len(task_photos):
        predictions = {t: ps for t in task_photos if (ps := client.predictions.list(task=t))}
        time.sleep(0.5)
    assert len(predictions) == len(task_photos), f"predictions for {len(predictions)} of {len(task_photos)} tasks"
    assert all(len(ps) == 1 and ps[0].model_version == version for ps in predictions.values()), \
        {t: [p.model_version for p in ps] for t, ps in predictions.items()}
    with_regions = [t for t in sorted(predictions) if predictions[t][0].result]
    assert with_regions, f"the model ({version}) found no shoe on any of the {len(photos)} held-out photos"
    task_id = with_regions[0]
    expected = len(predictions[task_id][0].result)

    # the Regions panel renders only the entries in view: with many regions it lists fewer than there are
    image_wh, drawn, listed, shot = _open_task(browser, label_studio, project_id, task_id, expected,
                                               tmp_path / "real-shoe-preannotated.png", listed_needed=1)

    assert image_wh, f"the editor did not load the shoe photo (screenshot {shot})"
    assert tuple(image_wh) == image_size_wh(task_photos[task_id]), (image_wh, shot)
    assert len(drawn) == expected, f"{len(drawn)} polygons drawn for {expected} predicted regions (screenshot {shot})"
    assert all(d["painted"] > 0 and d["points"] >= 3 for d in drawn), f"polygons without pixels: {drawn} ({shot})"
    assert 1 <= listed <= expected, f"the Regions panel lists {listed} regions for {expected} predicted ({shot})"
