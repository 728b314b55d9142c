"""What the security tests send and check (imported by them; not a test module)."""

from __future__ import annotations

import httpx

from tests.helpers import POLYGON_CONFIG

#: The configured Label Studio API key: it must reach no other host.
SECRET_KEY = "SECRET-KEY-123"


def answering(backend) -> bool:
    """The service still answers after an attack."""
    r = httpx.get(f"{backend.url}/health", timeout=10)
    return r.status_code == 200 and r.json()["status"] == "UP"


def predict_body(*urls: str, project: str = "9.1", config: str = POLYGON_CONFIG) -> dict:
    return {"tasks": [{"id": i + 1, "data": {"image": u}} for i, u in enumerate(urls)],
            "project": project, "label_config": config}
