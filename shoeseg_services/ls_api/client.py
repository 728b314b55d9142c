"""The client :func:`~shoeseg_services.ls_api.connection.connect` makes: the SDK's, with ShoeSeg's connection beside it.

Kept apart so that ``label_studio_sdk`` is imported only when a client is made.
"""

from __future__ import annotations

from label_studio_sdk import LabelStudio

from shoeseg_services.ls_api.connection import Connection


class LabelStudioClient(LabelStudio):
    """``label_studio_sdk.LabelStudio`` for ``connection.url`` with its key and timeout, and :attr:`connection`:
    what the SDK keeps to itself (the URL, the key and its scheme) and the requests it has no method for.

    Raises:
        label_studio_sdk.core.api_error.ApiError: a personal access token that has expired (the SDK's check).
    """

    def __init__(self, connection: Connection) -> None:
        super().__init__(base_url=connection.url, api_key=connection.credentials.key, timeout=connection.timeout_s)
        self.connection = connection
