"""Commands of the retraining loop: `shoeseg worker`."""

from __future__ import annotations

import typer

from shoeseg_services.queues import QUEUES


def register(app: typer.Typer) -> None:
    """Adds this area's commands to the root app."""

    @app.command("worker")
    def worker_command(
        queues: list[str] = typer.Option(
            list(QUEUES), "--queues", "-q",
            help="Queues to work on, in priority order (repeat the option): " + ", ".join(QUEUES) + ".",
        ),
        redis_url: str = typer.Option(None, "--redis-url", envvar="REDIS_URL", help="Redis of the queues."),
        burst: bool = typer.Option(False, "--burst", help="Quit when the queues are empty."),
        name: str = typer.Option(None, "--name", help="Worker name shown in rq-dashboard."),
        scheduler: bool = typer.Option(True, "--scheduler/--no-scheduler",
                                       help="Run rq's scheduler (retries with back-off need it)."),
    ) -> None:
        """Runs an RQ worker that retrains on new labels and pushes predictions back to Label Studio.

        By default it takes pushes first, then rounds on new labels, then idle-time training (shoeseg-idle),
        which yields within an iteration to the other two. Training jobs need the GPU when there is one: run
        one worker per GPU on shoeseg-train and shoeseg-idle, and CPU workers on shoeseg-predict only. A plain
        `rq worker --with-scheduler shoeseg-predict shoeseg-train shoeseg-idle` run from the repository root
        works too.

        Example: shoeseg worker --queues shoeseg-train --redis-url redis://127.0.0.1:6379/0
        """
        import redis

        from worker.main import run_worker

        expanded = [q.strip() for item in queues for q in item.split(",") if q.strip()]
        try:
            run_worker(expanded, redis_url, burst=burst, with_scheduler=scheduler, name=name)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        except redis.ConnectionError as e:
            typer.echo(f"error: Redis at {redis_url} is unreachable: {e}", err=True)
            raise typer.Exit(1) from e
