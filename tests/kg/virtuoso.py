"""A throw-away Virtuoso server for tests that need a real SPARQL endpoint.

:class:`VirtuosoServer` writes a minimal ``virtuoso.ini`` into a fresh folder,
starts ``virtuoso-t`` in the foreground on two free ports of 127.0.0.1, bulk
loads RDF files (``.nt``, ``.nt.gz``, ``.ttl``, ...) into one named graph and
exposes the SPARQL endpoint as :attr:`VirtuosoServer.sparql_url`. Leaving the
context stops the server and removes the folder.

Virtuoso answers a query without ``FROM`` over all its graphs, so queries need
not name :attr:`VirtuosoServer.graph`. Debian ships the binaries in
``virtuoso-opensource-7-bin`` (``virtuoso-t``, ``isql-vt``).

Virtuoso 7.2's quirks met by these tests (the endpoint client copes with them):
a direct POST (``application/sparql-query``) never gets an answer, the
``timeout`` parameter is read as milliseconds (``600s`` is an error) and turns
a slow query into a silently partial "anytime" answer, ``ASK`` answers in the
SELECT layout, and ``ResultSetMaxRows`` truncates answers.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

SERVER_BINARY = "virtuoso-t"
ISQL_BINARY = "isql-vt"
INSTALL_HINT = (
    "install Virtuoso: apt-get install -y --no-install-recommends "
    "virtuoso-opensource-7-bin"
)
DEFAULT_GRAPH = "http://kgclip.test/graph"

_INI = """\
[Database]
DatabaseFile = {dir}/virtuoso.db
ErrorLogFile = {dir}/virtuoso.log
LockFile = {dir}/virtuoso.lck
TransactionFile = {dir}/virtuoso.trx
xa_persistent_file = {dir}/virtuoso.pxa
ErrorLogLevel = 7
FileExtend = 200
MaxCheckpointRemap = 2000
Striping = 0
TempStorage = TempDatabase

[TempDatabase]
DatabaseFile = {dir}/virtuoso-temp.db
TransactionFile = {dir}/virtuoso-temp.trx
MaxCheckpointRemap = 2000
Striping = 0

[Parameters]
ServerPort = 127.0.0.1:{sql_port}
ServerThreads = 10
CheckpointInterval = 0
NumberOfBuffers = {buffers}
MaxDirtyBuffers = {dirty_buffers}
DirsAllowed = {dirs_allowed}
VADInstallDir = {dir}

[HTTPServer]
ServerPort = 127.0.0.1:{http_port}
ServerRoot = {dir}
ServerThreads = 10
MaxClientConnections = 10
EnabledDavVSP = 0

[SPARQL]
ResultSetMaxRows = {max_rows}
"""


class VirtuosoError(RuntimeError):
    """Virtuoso is missing, did not start in time, or could not load a file."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class VirtuosoServer:
    """A Virtuoso server loaded with some RDF files, for one test session.

    Args:
        workdir: folder under which a fresh temporary folder is made for the
            database, the ini file and the logs; that folder is removed on stop.
        files: RDF files to bulk-load (``.nt``, ``.nt.gz``, ``.ttl``, ...).
        graph: the graph IRI the files are loaded into.
        start_timeout_s: how long to wait for the SPARQL endpoint to answer.
        buffers, dirty_buffers: Virtuoso's NumberOfBuffers and MaxDirtyBuffers
            (8 KiB pages; 170000 is Virtuoso's advice for a 2 GB machine).
        max_rows: the endpoint's ResultSetMaxRows.

    Raises:
        VirtuosoError: on :meth:`start`, when a binary is missing, the server
            does not answer within ``start_timeout_s`` (the message quotes the
            end of its log), or a file cannot be loaded.
    """

    def __init__(
        self,
        workdir: Path,
        files: Sequence[Path],
        *,
        graph: str = DEFAULT_GRAPH,
        start_timeout_s: float = 60.0,
        buffers: int = 170000,
        dirty_buffers: int = 130000,
        max_rows: int = 1_000_000,
    ):
        self.workdir = Path(workdir)
        self.files = [Path(f).resolve() for f in files]
        self.graph = graph
        self.start_timeout_s = start_timeout_s
        self.buffers = buffers
        self.dirty_buffers = dirty_buffers
        self.max_rows = max_rows
        self.dir: Path | None = None
        self.sql_port = 0
        self.http_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.start_s = 0.0  # seconds until the endpoint answered
        self.load_s = 0.0  # seconds the bulk load and checkpoint took

    @property
    def sparql_url(self) -> str:
        """The SPARQL endpoint, ``http://127.0.0.1:PORT/sparql``."""
        return f"http://127.0.0.1:{self.http_port}/sparql"

    def __enter__(self) -> VirtuosoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Write the ini, start the server, wait for it and load the files."""
        for binary in (SERVER_BINARY, ISQL_BINARY):
            if shutil.which(binary) is None:
                raise VirtuosoError(f"`{binary}` is not on PATH; {INSTALL_HINT}")
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise VirtuosoError(f"RDF files to load not found: {', '.join(missing)}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="virtuoso-", dir=self.workdir))
        try:
            self._launch()
            self._load()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (if running) and remove its folder."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log.warning("Virtuoso did not stop within 30 s; killing it")
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _write_ini(self, folder: Path) -> Path:
        # ld_add only reads files below DirsAllowed.
        dirs = [".", str(folder), *sorted({str(f.parent) for f in self.files})]
        ini = folder / "virtuoso.ini"
        ini.write_text(
            _INI.format(
                dir=folder,
                sql_port=self.sql_port,
                http_port=self.http_port,
                buffers=self.buffers,
                dirty_buffers=self.dirty_buffers,
                dirs_allowed=", ".join(dirs),
                max_rows=self.max_rows,
            ),
            encoding="utf-8",
        )
        return ini

    def _launch(self) -> None:
        assert self.dir is not None
        self.sql_port, self.http_port = free_port(), free_port()
        while self.http_port == self.sql_port:
            self.http_port = free_port()
        ini = self._write_ini(self.dir)
        started = time.monotonic()
        # +foreground keeps it our child, so stop() can end it by its pid.
        with open(self.dir / "stdout.log", "wb") as out:
            self.process = subprocess.Popen(
                [SERVER_BINARY, "+foreground", "+configfile", str(ini)],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_answering(started)
        self.start_s = time.monotonic() - started
        log.info("Virtuoso answered at %s after %.1f s", self.sparql_url, self.start_s)

    def _wait_until_answering(self, started: float) -> None:
        assert self.process is not None
        probe = self.sparql_url + "?" + urllib.parse.urlencode({"query": "ASK {}"})
        while time.monotonic() - started < self.start_timeout_s:
            if self.process.poll() is not None:
                raise VirtuosoError(
                    f"Virtuoso exited with status {self.process.returncode} "
                    f"while starting; its log ends:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(probe, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass  # not listening yet
            time.sleep(0.25)
        raise VirtuosoError(
            f"Virtuoso did not answer at {self.sparql_url} within "
            f"{self.start_timeout_s:.0f} s; its log ends:\n{self.log_tail()}"
        )

    def _load(self) -> None:
        started = time.monotonic()
        adds = "".join(
            f"ld_add('{_sql_string(str(f))}', '{_sql_string(self.graph)}');"
            for f in self.files
        )
        self.isql(f"{adds} rdf_loader_run(); checkpoint;")
        # The loader records a file it could not parse instead of failing.
        errors = self.isql(
            "select concat('LOAD-ERROR ', ll_file, ': ', ll_error) "
            "from DB.DBA.load_list where ll_error is not null;"
        )
        failed = [line for line in errors.splitlines() if "LOAD-ERROR " in line]
        if failed:
            raise VirtuosoError("Virtuoso could not load:\n" + "\n".join(failed))
        self.load_s = time.monotonic() - started
        log.info("Virtuoso loaded %d file(s) in %.1f s", len(self.files), self.load_s)

    def isql(self, sql: str, timeout_s: float = 600.0) -> str:
        """Run SQL statements through ``isql-vt`` as dba; return its output.

        Raises:
            VirtuosoError: when isql exits non-zero or reports an error.
        """
        command = [
            ISQL_BINARY,
            str(self.sql_port),
            "dba",
            "dba",
            "VERBOSE=OFF",
            "BANNER=OFF",
            "ERRORS=STDOUT",
            f"exec={sql}",
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        output = done.stdout + done.stderr
        if done.returncode != 0 or "*** Error" in output:
            raise VirtuosoError(
                f"isql-vt failed (exit {done.returncode}) on {sql!r}:\n{output}\n"
                f"Virtuoso's log ends:\n{self.log_tail()}"
            )
        return output

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log, or a note that there is none."""
        if self.dir is None:
            return "(no log: the server folder is gone)"
        for name in ("virtuoso.log", "stdout.log"):
            path = self.dir / name
            if path.exists() and path.stat().st_size:
                text = path.read_text(encoding="utf-8", errors="replace")
                return "\n".join(text.splitlines()[-lines:])
        return "(the server wrote no log)"


def _sql_string(text: str) -> str:
    """``text`` for a single-quoted SQL string literal."""
    return text.replace("'", "''")
