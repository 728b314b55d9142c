"""The annotator's screen: headless Chromium opens a task pre-annotated by the backend and must see the
polygons drawn by Label Studio's editor (not only listed in the Regions panel).

The editor draws regions with Konva; the test waits until the stage holds one closed polygon per predicted
region, each with pixels painted on its layer's canvas, and the Regions panel lists them, then saves a
screenshot (under pytest's tmp_path, and into ``$SHOESEG_SCREENSHOT_DIR`` when set).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

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


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


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


def test_editor_draws_the_predicted_polygons(browser, label_studio, preannotated, tmp_path):
    from selenium.webdriver.common.by import By

    client = label_studio.client()
    task_id = preannotated.task_ids[0]
    (prediction,) = client.predictions.list(task=task_id)
    expected = len(prediction.result)
    assert expected > 0, "the backend gave this task no region to draw"

    _login(browser, label_studio)
    browser.get(f"{label_studio.url}/projects/{preannotated.project_id}/data?task={task_id}")

    drawn, image_wh, listed = [], None, 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        image_wh = browser.execute_script(_EDITOR_IMAGE_JS)
        drawn = browser.execute_script(_DRAWN_POLYGONS_JS) or []
        listed = len(browser.find_elements(By.CSS_SELECTOR, ".lsf-outliner-item"))
        if image_wh and len(drawn) >= expected and all(d["painted"] > 0 for d in drawn) and listed >= expected:
            break
        time.sleep(0.5)
    shot = tmp_path / "preannotated-task.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("SHOESEG_SCREENSHOT_DIR"):
        target = Path(os.environ["SHOESEG_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / shot.name)

    assert image_wh, f"the editor did not load the task's image (screenshot {shot})"
    assert tuple(image_wh) == preannotated.sizes_wh[task_id]
    assert len(drawn) == expected, f"{len(drawn)} polygons drawn for {expected} predicted regions (screenshot {shot})"
    assert all(d["painted"] > 0 and d["points"] >= 3 for d in drawn), f"polygons without pixels: {drawn} ({shot})"
    assert listed == expected, f"the Regions panel lists {listed} regions, expected {expected} ({shot})"
