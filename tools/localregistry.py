"""Local Schema Registry (Apicurio Registry 3.x, in-memory storage) for tests and the demo.

The registry runs straight from the Quarkus distribution in ``tools/registry/dist`` (unpacked
by Maven from Maven Central), so no Docker engine is needed. Its Confluent-compatible API, the
one kyc-sync speaks, is under ``/apis/ccompat/v7``::

    with LocalRegistry(work_dir=Path(".local/registry")) as registry:
        SchemaRegistry(registry.ccompat_url).register("kyc_profile_audit-value", schema)

Apicurio Registry 3.x is compiled for Java 21: the launcher picks a Java 21+ runtime from
``REGISTRY_JAVA_HOME``, ``JAVA_HOME``, ``java`` on the PATH or ``/usr/lib/jvm/*``, in that order.

CLI::

    python -m tools.localregistry start  --dir .local/registry   # detached, prints the ccompat URL
    python -m tools.localregistry status --dir .local/registry
    python -m tools.localregistry stop   --dir .local/registry
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from tools.localkafka import (
    HOST,
    cli_status,
    cli_stop,
    pid_alive,
    read_state,
    read_tail,
    state_running,
    terminate_group,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
REGISTRY_DIR = REPO_ROOT / "tools" / "registry"
DIST_DIR = REGISTRY_DIR / "dist"
RUN_JAR = "quarkus-run.jar"
MVN_COMMAND = ("mvn", "-q", "-B", "-f", str(REGISTRY_DIR / "pom.xml"), "dependency:unpack")

MIN_JAVA = 21
JVM_DIRS = (Path("/usr/lib/jvm"),)
CCOMPAT_PATH = "/apis/ccompat/v7"
READY_PATH = "/health/ready"
DEFAULT_JVM_OPTS: tuple[str, ...] = (
    "-Xms64m",
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
STATE_FILE = "registry.json"
CDS_ARCHIVE = Path(".cds") / "registry.jsa"
"""Class-data sharing archive, relative to the distribution: written by the first start (at JVM
exit), then mapped by later starts, which become about a third faster; a JDK change rebuilds it."""


class RegistryStartError(RuntimeError):
    """The local registry could not be prepared or did not become ready."""


class RegistryDistError(RegistryStartError):
    """The registry distribution is missing and could not be fetched with Maven."""


# --------------------------------------------------------------------------- pure helpers


def parse_java_version(text: str) -> int | None:
    """The feature release (major version) named in a JDK ``release`` file or in the output of
    ``java -XshowSettings:properties -version``: ``17``, ``21``, ``25``; ``8`` for ``1.8``."""
    match = re.search(r'^JAVA_VERSION="([0-9][0-9._+-]*)"', text, re.MULTILINE) or re.search(
        r"java\.specification\.version = ([0-9.]+)", text
    )
    if match is None:
        return None
    parts = re.split(r"[._+-]", match.group(1))
    if parts[0] == "1" and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1])
    return int(parts[0]) if parts[0].isdigit() else None


def java_major(java: Path) -> int | None:
    """The major version of the runtime ``java`` (its JDK's ``release`` file, else asking it)."""
    release = java.resolve().parent.parent / "release"
    try:
        version = parse_java_version(release.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        version = None
    if version is not None:
        return version
    try:
        result = subprocess.run(
            [str(java), "-XshowSettings:properties", "-version"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_java_version(result.stdout + result.stderr)


def java_candidates(env: Mapping[str, str], jvm_dirs: Iterable[Path] = JVM_DIRS) -> list[Path]:
    """Java executables to try, in order of preference (existing files only, no duplicates)."""
    found: list[Path] = []
    for variable in ("REGISTRY_JAVA_HOME", "JAVA_HOME"):
        if env.get(variable):
            found.append(Path(env[variable]) / "bin" / "java")
    on_path = shutil.which("java", path=env.get("PATH"))
    if on_path:
        found.append(Path(on_path))
    for jvm_dir in jvm_dirs:
        if jvm_dir.is_dir():
            found.extend(sorted(jvm_dir.glob("*/bin/java"), reverse=True))
    unique: dict[Path, Path] = {}
    for java in found:
        if java.is_file():
            unique.setdefault(java.resolve(), java)
    return list(unique.values())


def find_java(
    minimum: int = MIN_JAVA,
    env: Mapping[str, str] | None = None,
    jvm_dirs: Iterable[Path] = JVM_DIRS,
) -> str:
    """The first Java runtime of at least version ``minimum`` among ``java_candidates``; among
    those found only in ``jvm_dirs`` the newest wins."""
    env = os.environ if env is None else env
    candidates = java_candidates(env, jvm_dirs)
    versions = {java: java_major(java) for java in candidates}
    explicit = [j for j in candidates if not any(_under(j, d) for d in jvm_dirs)]
    for java in explicit:
        if (versions[java] or 0) >= minimum:
            return str(java)
    scanned = [j for j in candidates if j not in explicit and (versions[j] or 0) >= minimum]
    if scanned:
        return str(max(scanned, key=lambda j: versions[j] or 0))
    seen = ", ".join(f"{j} ({versions[j] or '?'})" for j in candidates) or "none"
    raise RegistryStartError(
        f"Apicurio Registry needs Java {minimum}+; Java runtimes found: {seen}. "
        f"Install a JDK {minimum}+ or point REGISTRY_JAVA_HOME at one."
    )


def _under(path: Path, directory: Path) -> bool:
    try:
        path.relative_to(directory)
    except ValueError:
        return False
    return True


def ensure_dist(dist_dir: Path = DIST_DIR) -> None:
    """Unpack the registry distribution with Maven when ``dist_dir`` has no ``quarkus-run.jar``."""
    if (dist_dir / RUN_JAR).is_file():
        return
    if dist_dir.resolve() != DIST_DIR:
        raise RegistryDistError(f"no {RUN_JAR} in {dist_dir} (Maven only fills {DIST_DIR})")
    if shutil.which("mvn") is None:
        raise RegistryDistError(
            f"{RUN_JAR} missing in {dist_dir} and mvn is not installed; "
            f"install Maven and run: {' '.join(MVN_COMMAND)}"
        )
    result = subprocess.run(MVN_COMMAND, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not (dist_dir / RUN_JAR).is_file():
        raise RegistryDistError(
            f"fetching Apicurio Registry failed (exit {result.returncode}): "
            f"{' '.join(MVN_COMMAND)}\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our URL)
            status: int = response.status
            return 200 <= status < 300
    except (urllib.error.URLError, TimeoutError, OSError):
        return False


def is_registry_process(pid: int) -> bool:
    """True when ``pid`` is alive and (where /proc can tell) runs the registry's jar."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return any(part.endswith(RUN_JAR.encode()) for part in cmdline)


# --------------------------------------------------------------------------- registry


@dataclass
class LocalRegistry:
    """An Apicurio Registry JVM with in-memory (H2) storage on free ports of 127.0.0.1."""

    work_dir: Path
    port: int = 0
    management_port: int = 0
    jvm_opts: Sequence[str] = DEFAULT_JVM_OPTS
    dist_dir: Path = DIST_DIR
    java: str = ""
    # Class-data sharing archive; None: ``CDS_ARCHIVE`` in ``dist_dir``.
    cds_archive: Path | None = None
    startup_timeout: float = 180.0
    # The first stop writes the class-data sharing archive: about 20 s on a busy machine.
    stop_timeout: float = 60.0
    # Stop the registry when this Python process exits (off for the detached CLI registry).
    stop_at_exit: bool = True
    startup_seconds: float | None = field(default=None, init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    log_handle: IO[bytes] | None = field(default=None, init=False, repr=False)
    atexit_registered: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir).resolve()

    # -- paths and addresses

    @property
    def log_path(self) -> Path:
        return self.work_dir / "registry.log"

    @property
    def url(self) -> str:
        """Base URL of the registry (its own API is under ``/apis/registry/v3``)."""
        if not self.port:
            raise RegistryStartError("registry ports are not assigned yet: call start() first")
        return f"http://{HOST}:{self.port}"

    @property
    def ccompat_url(self) -> str:
        """The Confluent-compatible API: kyc-sync's ``decoding.schema_registry_url``."""
        return self.url + CCOMPAT_PATH

    @property
    def ready_url(self) -> str:
        return f"http://{HOST}:{self.management_port}{READY_PATH}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- configuration

    def assign_ports(self) -> None:
        """Pick free ports for the API and the management interface (kept for restarts)."""
        with ExitStack() as stack:

            def pick() -> int:
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind((HOST, 0))
                port: int = sock.getsockname()[1]
                return port

            self.port = self.port or pick()
            self.management_port = self.management_port or pick()

    def system_properties(self) -> dict[str, str]:
        """Quarkus/Apicurio configuration (ports must be assigned)."""
        return {
            "quarkus.http.host": HOST,
            "quarkus.http.port": str(self.port),
            "quarkus.management.host": HOST,
            "quarkus.management.port": str(self.management_port),
            # In-memory storage: every start is an empty registry.
            "apicurio.storage.kind": "sql",
            "apicurio.storage.sql.kind": "h2",
            "apicurio.datasource.url": "jdbc:h2:mem:registry",
            "apicurio.datasource.jdbc.initial-size": "2",
            "apicurio.datasource.jdbc.min-size": "2",
            "apicurio.datasource.jdbc.max-size": "10",
            "apicurio.storage.snapshot.location": str(self.work_dir),
            # One line per request is noise in a test log.
            "quarkus.http.access-log.enabled": "false",
            'quarkus.log.category."io.apicurio.registry.logging.audit".level': "WARN",
            "java.io.tmpdir": str(self.work_dir / "tmp"),
        }

    def java_command(self) -> list[str]:
        java = self.java or find_java()
        props = [f"-D{key}={value}" for key, value in self.system_properties().items()]
        archive = self.cds_archive or self.dist_dir / CDS_ARCHIVE
        cds = [f"-XX:SharedArchiveFile={archive}", "-XX:+AutoCreateSharedArchive"]
        return [java, *self.jvm_opts, *cds, *props, "-jar", str(self.dist_dir / RUN_JAR)]

    # -- lifecycle

    def start(self) -> None:
        """Launch the JVM and wait until the ccompat API answers."""
        if self.running:
            return
        began = time.monotonic()
        ensure_dist(self.dist_dir)
        self.java = self.java or find_java()
        (self.work_dir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.cds_archive or self.dist_dir / CDS_ARCHIVE).parent.mkdir(exist_ok=True)
        self.assign_ports()
        self.log_handle = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.java_command(),
            stdin=subprocess.DEVNULL,
            stdout=self.log_handle,
            stderr=subprocess.STDOUT,
            cwd=self.work_dir,
            start_new_session=True,
        )
        if self.stop_at_exit and not self.atexit_registered:
            atexit.register(self.stop)
            self.atexit_registered = True
        try:
            self.wait_ready(began + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """SIGTERM the registry's process group, SIGKILL after ``stop_timeout``. Idempotent."""
        proc, self.process = self.process, None
        if proc is not None:
            terminate_group(proc.pid, self.stop_timeout, lambda: proc.poll() is not None)
            proc.wait()
        if self.log_handle is not None:
            self.log_handle.close()
            self.log_handle = None

    def log_tail(self, n: int = 80) -> str:
        return read_tail(self.log_path, n)

    def rss_bytes(self) -> int | None:
        """Resident memory of the running JVM (Linux), for reports."""
        if self.process is None:
            return None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) * 1024 if match else None

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

    def wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        while True:
            code = self.process.poll()
            if code is not None:
                raise RegistryStartError(
                    f"Apicurio Registry exited with code {code} during start-up; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if http_ok(self.ready_url) and http_ok(self.ccompat_url + "/subjects"):
                return
            if time.monotonic() > deadline:
                raise RegistryStartError(
                    f"Apicurio Registry not ready after {self.startup_timeout:.0f}s on "
                    f"{self.url}; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.25)


# --------------------------------------------------------------------------- CLI


def _cli_start(state_dir: Path, timeout: float) -> int:
    state = read_state(state_dir / STATE_FILE)
    if state is not None and state_running(state, is_registry_process):
        print(state["ccompat_url"])
        return 0
    state_dir.mkdir(parents=True, exist_ok=True)
    registry = LocalRegistry(work_dir=state_dir, startup_timeout=timeout, stop_at_exit=False)
    try:
        registry.start()
    except RegistryStartError as err:
        print(err, file=sys.stderr)
        return 1
    assert registry.process is not None
    new_state = {
        "pid": registry.process.pid,
        "url": registry.url,
        "ccompat_url": registry.ccompat_url,
        "port": registry.port,
        "management_port": registry.management_port,
        "log": str(registry.log_path),
        "startup_seconds": round(registry.startup_seconds or 0.0, 2),
    }
    (state_dir / STATE_FILE).write_text(json.dumps(new_state, indent=2) + "\n")
    print(registry.ccompat_url)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.localregistry", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=Path(".local/registry"), help="state dir")
    parser.add_argument("--timeout", type=float, default=180.0, help="start/stop timeout (s)")
    args = parser.parse_args(argv)
    state_dir: Path = args.dir.resolve()
    if args.command == "start":
        return _cli_start(state_dir, args.timeout)
    if args.command == "stop":
        return cli_stop(
            state_dir / STATE_FILE, is_registry_process, "registry", min(args.timeout, 60.0)
        )
    return cli_status(state_dir / STATE_FILE, is_registry_process, "ccompat_url")


if __name__ == "__main__":
    sys.exit(main())
