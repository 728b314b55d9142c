"""A real Label Studio 1.23.2 server, one per test run."""

from __future__ import annotations

import pytest

from shoeseg.stack.labelstudio import LabelStudioServer, find_label_studio


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
