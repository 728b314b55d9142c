"""A real Label Studio 1.23.2 server, one per test run, and the ML backend as a real process beside it."""

from __future__ import annotations

import pytest

from shoeseg_app.stack.labelstudio import LabelStudioServer, find_label_studio
from tests.e2e.backend_process import create_preannotated_project, fill_registry, start_backend, stop_backend
from tests.e2e.stack import CHROMEDRIVER, CHROMIUM, need_chromium


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A running Label Studio with an admin whose legacy token is ``label_studio.token``.

    Local files under ``label_studio.files_root`` are served as ``/data/local-files/?d=...``.
    """
    try:
        find_label_studio()
    except FileNotFoundError as e:
        pytest.skip(f"{e} (`make test` installs it)")
    root = tmp_path_factory.mktemp("label-studio")
    server = LabelStudioServer(data_dir=root / "data", files_root=root / "files")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ls_client(label_studio):
    """A label-studio-sdk client for the session's server."""
    return label_studio.client()


@pytest.fixture(scope="session")
def backend_registry(tmp_path_factory):
    """A registry with test-v1 promoted (a model biased to find three shoes per image) and test-v2."""
    from shoeseg_services.registry import ModelRegistry

    root = tmp_path_factory.mktemp("e2e-backend")
    return fill_registry(ModelRegistry(root / "models"), root)


@pytest.fixture(scope="session")
def shoeseg_backend(label_studio, backend_registry, tmp_path_factory):
    """The backend trusting the session's Label Studio (``LABEL_STUDIO_URL``); its token comes from /setup.

    It scores tasks by ``least_confidence``, not the default ``flip_consistency``: the stored task score is then
    a known answer from the stored regions (their best score). The default's score is checked against the
    worker's push, byte for byte, in tests/worker."""
    backend = start_backend(tmp_path_factory.mktemp("backend-logs"), registry_root=backend_registry.root,
                            env={"LABEL_STUDIO_URL": label_studio.url, "SHOESEG_AL_STRATEGY": "least_confidence"})
    yield backend
    stop_backend(backend)


@pytest.fixture(scope="session")
def preannotated(label_studio, shoeseg_backend):
    return create_preannotated_project(label_studio, shoeseg_backend, title="shoeseg backend e2e")


@pytest.fixture
def browser(tmp_path):
    webdriver = need_chromium()
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
