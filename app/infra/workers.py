"""`ostiary serve --workers N`: N worker processes, each listening on its own socket bound to the
same address with SO_REUSEPORT, so that the kernel spreads new connections across the workers
(docs/decisions.md#workers-listen-on-their-own-sockets). The parent only supervises: it restarts
a worker that dies, stops when one cannot start, and passes SIGINT/SIGTERM on for a graceful
shutdown.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import threading
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

logger = logging.getLogger("uvicorn.error")
_spawn = multiprocessing.get_context("spawn")  # a fresh interpreter per worker, as uvicorn starts them


def can_share_port() -> bool:
    """SO_REUSEPORT balances connections on Linux; elsewhere uvicorn's one shared socket is used."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """One worker's socket: SO_REUSEPORT lets the workers bind the same address (Linux admits only
    sockets of the same user to the group), SO_REUSEADDR a port in TIME_WAIT, as uvicorn binds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _worker(config: uvicorn.Config) -> None:  # pragma: no cover - runs in the worker process
    config.configure_logging()
    try:
        sock = listening_socket(config.host, config.port, config.backlog)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
        sys.exit(STARTUP_FAILURE)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def serve(config: uvicorn.Config, workers: int) -> int:
    """Run `workers` workers until SIGINT or SIGTERM; 0 then, STARTUP_FAILURE if a worker could not
    start (a restart would fail the same way)."""
    stop = threading.Event()
    status = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)

    def start() -> BaseProcess:
        process = _spawn.Process(target=_worker, args=(config,), name="ostiary-worker")
        process.start()
        return process

    processes = [start() for _ in range(workers)]
    while not stop.wait(0.5):
        for index, process in enumerate(processes):
            if process.is_alive():
                continue
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error("worker process [%s] could not start; stopping", process.pid)
                status = STARTUP_FAILURE
                stop.set()
                break
            logger.warning("worker process [%s] ended (exit code %s); starting another", process.pid, process.exitcode)
            processes[index] = start()
    for process in processes:
        if process.is_alive() and process.pid is not None:
            process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
    for process in processes:
        process.join()
    return status
