"""Real processes for end-to-end tests: Ostiary (`ostiary serve`), its CLI and the example MCP
server. Everything binds 127.0.0.1; every process started here is stopped when its context exits.
Their databases are support.empty_database(directory, "ostiary_e2e")."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support import OSTIARY, ROOT, clean_env, cli_env

EXAMPLE_SERVER = ROOT / "examples" / "mcp_server" / "server.py"
SECRET_KEY = "e2e-secret-key-" + "0123456789abcdef" * 3


# -- processes -------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> Process:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(url, timeout=1.0).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready at {url} after {timeout}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def running(name: str, argv: list[str], env: dict[str, str], log: Path, ready_url: str) -> Iterator[Process]:
    process = Process(name, argv, env, log).start()
    try:
        process.wait_ready(ready_url)
        yield process
    finally:
        process.stop()


def ostiary_env(issuer: str, database_url: str, **settings: str) -> dict[str, str]:
    """The environment of `ostiary` processes (support.cli_env) with the end-to-end keyring,
    `issuer` and `settings` (lower-case names without the OSTIARY_ prefix)."""
    return cli_env(
        database_url,
        OSTIARY_ISSUER=issuer,
        OSTIARY_SECRET_KEYS=SECRET_KEY,
        **{f"OSTIARY_{k.upper()}": v for k, v in settings.items()},
    )


def ostiary_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run `ostiary ARGS...`; its standard output, or a failed test with its error."""
    done = subprocess.run([*OSTIARY, *args], env=env, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"ostiary {' '.join(args)} failed ({done.returncode}):\n{done.stderr}"
    return done.stdout


@contextmanager
def ostiary_server(env: dict[str, str], port: int, log: Path) -> Iterator[Process]:
    argv = [*OSTIARY, "serve", "--host", "127.0.0.1", "--port", str(port), "--migrate"]
    with running("ostiary", argv, env, log, f"http://127.0.0.1:{port}/readyz") as process:
        yield process


@contextmanager
def example_mcp_server(issuer: str, url: str, port: int, log: Path) -> Iterator[Process]:
    argv = [sys.executable, str(EXAMPLE_SERVER), "--issuer", issuer, "--url", url, "--port", str(port)]
    prm = f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
    with running("example MCP server", argv, clean_env(), log, prm) as process:
        yield process
