"""Commands of the `serve` area: the Label Studio ML backend as a web service."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Adds this area's commands to the root app."""

    @app.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 for every interface)."),
        port: int = typer.Option(9090, "--port", help="TCP port."),
        model_dir: Path | None = typer.Option(
            None, "--model-dir", help="Model registry root (default: $SHOESEG_MODEL_DIR or ./models)."
        ),
        device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda (default: $SHOESEG_DEVICE)."),
        image_root: Path | None = typer.Option(
            None, "--image-root", help="Local images the backend may read (default: $SHOESEG_IMAGE_ROOT)."
        ),
        workers: int = typer.Option(1, "--workers", min=1, help="Server processes (each loads the model once)."),
    ) -> None:
        """Serve the Label Studio ML backend (/health, /setup, /predict, /webhook, /versions, /metrics).

        Example: shoeseg serve --host 0.0.0.0 --port 9090 --model-dir models
        """
        import logging
        import os

        import uvicorn

        from backend.settings import Settings

        overrides = {
            "SHOESEG_MODEL_DIR": str(model_dir) if model_dir else None,
            "SHOESEG_DEVICE": device,
            "SHOESEG_IMAGE_ROOT": str(image_root) if image_root else None,
        }
        for key, value in overrides.items():
            if value is not None:
                os.environ[key] = value  # the app factory (and each worker process) reads the environment
        try:
            settings = Settings.from_env()
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per image download is too much
        typer.echo(
            f"ShoeSeg ML backend on http://{host}:{port} (models: {settings.model_dir.resolve()}, "
            f"device: {settings.device})"
        )
        uvicorn.run(
            "backend.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            timeout_keep_alive=75,
        )
