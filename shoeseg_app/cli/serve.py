"""Commands of the `serve` area: the Label Studio ML backend as a web service."""

from __future__ import annotations

from pathlib import Path

import typer


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str, settings) -> str | None:
    """Why serving on ``host`` with these settings is refused, or ``None``.

    Anyone who reaches the port can ask for predictions (with the configured Label Studio key behind them)
    and queue trainings: off loopback, basic auth is required unless the operator says ``--insecure``.
    """
    if _is_loopback(host) or settings.auth_enabled or settings.insecure:
        return None
    return (
        f"refusing to serve on {host} without basic auth: anyone who can reach the port could use the backend "
        "(and the Label Studio key behind it). Set BASIC_AUTH_USER and BASIC_AUTH_PASS here and the same user "
        "and password in Label Studio (project Settings > Model > edit the backend > Basic Authentication), "
        "or serve on 127.0.0.1, or pass --insecure (SHOESEG_INSECURE=true) on a network you trust"
    )


def register(app: typer.Typer) -> None:
    """Adds this area's commands to the root app."""

    @app.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 for every interface)."),
        port: int = typer.Option(9090, "--port", help="TCP port."),
        model_dir: str | None = typer.Option(
            None, "--model-dir",
            help="Model registry root: a folder or s3://bucket/prefix (default: $SHOESEG_MODEL_DIR or ./models).",
        ),
        device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda (default: $SHOESEG_DEVICE)."),
        image_root: Path | None = typer.Option(
            None, "--image-root", help="Local images the backend may read (default: $SHOESEG_IMAGE_ROOT)."
        ),
        workers: int = typer.Option(1, "--workers", min=1, help="Server processes (each loads the model once)."),
        insecure: bool = typer.Option(
            False, "--insecure", help="Serve on a non-loopback address without basic auth (default: $SHOESEG_INSECURE)."
        ),
    ) -> None:
        """Serve the Label Studio ML backend (/health, /setup, /predict, /webhook, /versions, /metrics).

        Example: shoeseg serve --host 0.0.0.0 --port 9090 --model-dir models
        """
        import logging
        import os

        import uvicorn

        from shoeseg_services.settings import Settings

        overrides = {
            "SHOESEG_MODEL_DIR": model_dir or None,
            "SHOESEG_DEVICE": device,
            "SHOESEG_IMAGE_ROOT": str(image_root) if image_root else None,
        }
        for key, value in overrides.items():
            if value is not None:
                os.environ[key] = value  # the app factory (and each worker process) reads the environment
        if insecure:
            os.environ["SHOESEG_INSECURE"] = "true"
        try:
            settings = Settings.from_env()
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        problem = exposure_problem(host, settings)
        if problem:
            raise typer.BadParameter(problem, param_hint="--host")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per image download is too much
        models = settings.model_dir if isinstance(settings.model_dir, str) else settings.model_dir.resolve()
        typer.echo(
            f"ShoeSeg ML backend on http://{host}:{port} (models: {models}, "
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
