#!/usr/bin/env python3
"""Container health checks (exit 0 when healthy, 1 otherwise).

    shoeseg-healthcheck http http://localhost:9090/health   # an HTTP service answers 200
    shoeseg-healthcheck worker                                # an RQ worker of this container is registered
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def check_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError as e:
        print(f"{url}: {e}", file=sys.stderr)
        return False


def check_worker() -> bool:
    import redis
    from rq import Worker

    url = os.environ.get("REDIS_URL")
    if not url:
        print("REDIS_URL is not set", file=sys.stderr)
        return False
    try:
        workers = Worker.all(connection=redis.Redis.from_url(url, socket_timeout=5))
    except redis.RedisError as e:
        print(f"{url}: {e}", file=sys.stderr)
        return False
    host = socket.gethostname()
    return any(w.hostname == host for w in workers)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        return 0 if check_http(argv[1]) else 1
    if argv == ["worker"]:
        return 0 if check_worker() else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
