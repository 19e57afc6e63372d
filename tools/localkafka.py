"""Local single-node Apache Kafka broker (KRaft, combined mode) for tests and the demo.

The broker runs straight from the jars in ``tools/kafka/lib`` (fetched by Maven), so no
Docker engine and no Kafka distribution scripts are needed::

    with LocalKafka(work_dir=Path(".local/kafka")) as broker:
        create_topic(broker.bootstrap, "kyc.audit", partitions=3)

CLI (used by the Makefile demo)::

    python -m tools.localkafka start  --dir .local/kafka   # detached, prints the bootstrap
    python -m tools.localkafka status --dir .local/kafka
    python -m tools.localkafka stop   --dir .local/kafka
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin does not re-export it

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_DIR = REPO_ROOT / "tools" / "kafka"
LIB_DIR = KAFKA_DIR / "lib"
MVN_COMMAND = ("mvn", "-q", "-B", "-f", str(KAFKA_DIR / "pom.xml"), "dependency:copy-dependencies")

HOST = "127.0.0.1"
PLAINTEXT = "PLAINTEXT"
CONTROLLER = "CONTROLLER"
DEFAULT_JVM_OPTS: tuple[str, ...] = (
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
TEST_JVM_OPTS: tuple[str, ...] = (*DEFAULT_JVM_OPTS, "-XX:TieredStopAtLevel=1")
"""For the test suite's brokers: the client compiler only. Here a start to ready took about 40 %
less CPU (8 s instead of 13) and half the time; a test broker never runs long enough, nor fast
enough, for the optimizing compiler to pay off."""
STATE_FILE = "broker.json"

BrokerChoice = Literal["external", "testcontainers", "local"]

# Broker logs INFO to stdout (redirected to broker.log); chatty internals are held at WARN.
LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="STDOUT"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="org.apache.kafka.common.config" level="WARN"/>
    <Logger name="org.apache.kafka.common.metrics" level="WARN"/>
    <Logger name="org.apache.kafka.common.utils.AppInfoParser" level="WARN"/>
    <Logger name="org.apache.kafka.image" level="WARN"/>
    <Logger name="org.apache.kafka.metadata" level="WARN"/>
    <Logger name="org.apache.kafka.raft" level="WARN"/>
    <Logger name="org.apache.kafka.controller" level="WARN"/>
    <Logger name="org.apache.kafka.server.metrics" level="WARN"/>
    <Logger name="kafka.server.metadata" level="WARN"/>
    <Logger name="kafka.coordinator" level="WARN"/>
    <Logger name="kafka.cluster" level="WARN"/>
    <Logger name="kafka.log" level="WARN"/>
  </Loggers>
</Configuration>
"""


class BrokerStartError(RuntimeError):
    """The local broker could not be prepared or did not become ready."""


class KafkaJarsError(BrokerStartError):
    """The broker jars are missing and could not be fetched with Maven."""


@dataclass(frozen=True)
class ExtraListener:
    """An additional broker listener, e.g. ``ExtraListener("SASL", "SASL_PLAINTEXT")``.

    Port 0 means "pick a free port on first start"; it is then kept across restarts.
    Listener-specific settings (``listener.name.sasl.*``) go in ``extra_properties``.
    """

    name: str
    protocol: str
    port: int = 0


# --------------------------------------------------------------------------- pure helpers


def choose_broker(env: Mapping[str, str]) -> BrokerChoice:
    """Which broker the tests use: an external one, a testcontainer, or a local JVM."""
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external"
    if env.get("KYC_SYNC_TEST_KAFKA") == "testcontainers":
        return "testcontainers"
    return "local"


def new_cluster_id(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 chars)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes(16)).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):  # would be read as a command-line option
            return cluster_id


def render_properties(props: Mapping[str, str]) -> str:
    """Render a Java ``.properties`` file, one ``key=value`` per line."""
    lines = []
    for key, value in props.items():
        escaped = value.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"{key}={escaped}")
    return "\n".join(lines) + "\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_tail(path: Path, n: int = 80) -> str:
    """The last ``n`` lines of a text file ("" when it does not exist)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=n))
    except FileNotFoundError:
        return ""


def find_java() -> str:
    """``$JAVA_HOME/bin/java`` if set, else ``java`` from PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerStartError("java not found: install a JDK 17+ or set JAVA_HOME")
    return java


def ensure_jars(lib_dir: Path = LIB_DIR) -> None:
    """Fetch the broker jars with Maven when ``lib_dir`` has no Kafka jar."""
    if any(lib_dir.glob("kafka_2.13-*.jar")):
        return
    if lib_dir.resolve() != LIB_DIR:
        raise KafkaJarsError(f"no Kafka jars in {lib_dir} (Maven only fills {LIB_DIR})")
    if shutil.which("mvn") is None:
        raise KafkaJarsError(
            f"Kafka jars missing in {lib_dir} and mvn is not installed; "
            f"install Maven and run: {' '.join(MVN_COMMAND)}"
        )
    result = subprocess.run(MVN_COMMAND, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not any(lib_dir.glob("kafka_2.13-*.jar")):
        raise KafkaJarsError(
            f"fetching the Kafka jars failed (exit {result.returncode}): {' '.join(MVN_COMMAND)}\n"
            f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )


# --------------------------------------------------------------------------- broker


@dataclass
class LocalKafka:
    """A single-node KRaft broker+controller JVM, restartable on the same ports and data."""

    work_dir: Path
    port: int = 0
    controller_port: int = 0
    extra_listeners: list[ExtraListener] = field(default_factory=list)
    extra_properties: dict[str, str] = field(default_factory=dict)
    # Extra ``StorageTool format`` arguments, e.g. ``--add-scram`` for a SCRAM listener.
    extra_format_args: list[str] = field(default_factory=list)
    jvm_opts: Sequence[str] = DEFAULT_JVM_OPTS
    lib_dir: Path = LIB_DIR
    startup_timeout: float = 90.0
    stop_timeout: float = 20.0
    # Stop the broker when this Python process exits (off for the detached CLI broker).
    stop_at_exit: bool = True
    cluster_id: str = ""
    startup_seconds: float | None = field(default=None, init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_handle: IO[bytes] | None = field(default=None, init=False, repr=False)
    _atexit_registered: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir).resolve()
        for listener in self.extra_listeners:
            if listener.name.upper() in (PLAINTEXT, CONTROLLER):
                raise ValueError(f"listener name {listener.name!r} is reserved")

    # -- paths and addresses

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "broker.log"

    @property
    def properties_path(self) -> Path:
        return self.work_dir / "server.properties"

    @property
    def log4j_path(self) -> Path:
        return self.work_dir / "log4j2.xml"

    @property
    def bootstrap(self) -> str:
        if not self.port:
            raise BrokerStartError("broker ports are not assigned yet: call start() first")
        return f"{HOST}:{self.port}"

    def listener_bootstrap(self, name: str) -> str:
        """``host:port`` of an extra listener."""
        for listener in self.extra_listeners:
            if listener.name == name:
                return f"{HOST}:{listener.port}"
        raise KeyError(name)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- configuration

    def assign_ports(self) -> None:
        """Pick free ports for every listener still on port 0 (kept for later restarts)."""
        with ExitStack() as stack:
            # Hold each probe socket until all are chosen so the ports are distinct.
            def pick() -> int:
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind((HOST, 0))
                port: int = sock.getsockname()[1]
                return port

            self.port = self.port or pick()
            self.controller_port = self.controller_port or pick()
            self.extra_listeners = [
                lst if lst.port else replace(lst, port=pick()) for lst in self.extra_listeners
            ]

    def server_properties(self) -> dict[str, str]:
        """The broker configuration (ports must be assigned)."""
        advertised = [(PLAINTEXT, self.port)] + [(x.name, x.port) for x in self.extra_listeners]
        listeners = [*advertised[:1], (CONTROLLER, self.controller_port), *advertised[1:]]
        protocols = [(PLAINTEXT, PLAINTEXT), (CONTROLLER, PLAINTEXT)] + [
            (x.name, x.protocol) for x in self.extra_listeners
        ]
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{HOST}:{self.controller_port}",
            "listeners": _listener_list(listeners),
            "advertised.listeners": _listener_list(advertised),
            "controller.listener.names": CONTROLLER,
            "listener.security.protocol.map": ",".join(f"{n}:{p}" for n, p in protocols),
            "inter.broker.listener.name": PLAINTEXT,
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.retention.hours": "168",
        }
        props.update(self.extra_properties)
        return props

    def java_command(self, main_class: str, *args: str) -> list[str]:
        return [
            find_java(),
            *self.jvm_opts,
            f"-Dlog4j2.configurationFile={self.log4j_path}",
            "-cp",
            str(self.lib_dir / "*"),
            main_class,
            *args,
        ]

    # -- lifecycle

    def start(self) -> None:
        """Format storage on first use, launch the JVM and wait until it serves metadata."""
        if self.running:
            return
        began = time.monotonic()
        ensure_jars(self.lib_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.assign_ports()
        self.properties_path.write_text(render_properties(self.server_properties()))
        self.log4j_path.write_text(LOG4J2_XML)
        meta = self.data_dir / "meta.properties"
        if meta.exists():  # formatted earlier: keep the data and its cluster id
            for line in meta.read_text().splitlines():
                if line.startswith("cluster.id="):
                    self.cluster_id = line.partition("=")[2].strip()
        else:
            self._format_storage()

        self._log_handle = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.java_command("kafka.Kafka", str(self.properties_path)),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            cwd=self.work_dir,
            start_new_session=True,
        )
        if self.stop_at_exit and not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._wait_ready(began + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """SIGTERM the broker's process group, SIGKILL after ``stop_timeout``. Idempotent."""
        proc, self.process = self.process, None
        if proc is not None:
            terminate_group(proc.pid, self.stop_timeout, lambda: proc.poll() is not None)
            proc.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def restart(self) -> None:
        """Stop, then start again on the same ports with the same data."""
        self.stop()
        self.start()

    def log_tail(self, n: int = 80) -> str:
        return read_tail(self.log_path, n)

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

    # -- internals

    def _format_storage(self) -> None:
        self.cluster_id = self.cluster_id or new_cluster_id()
        cmd = self.java_command(
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            self.cluster_id,
            "-c",
            str(self.properties_path),
            *self.extra_format_args,
        )
        result = subprocess.run(
            cmd, capture_output=True, text=True, cwd=self.work_dir, check=False, timeout=120
        )
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise BrokerStartError(
                f"formatting Kafka storage failed (exit {result.returncode}); "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def _wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        while True:
            code = self.process.poll()
            if code is not None:
                raise BrokerStartError(
                    f"Kafka broker exited with code {code} during start-up; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if port_open(self.port) and _serves_metadata(self.bootstrap):
                return
            if time.monotonic() > deadline:
                raise BrokerStartError(
                    f"Kafka broker not ready after {self.startup_timeout:.0f}s on "
                    f"{self.bootstrap}; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.2)


def _listener_list(listeners: Sequence[tuple[str, int]]) -> str:
    return ",".join(f"{name}://{HOST}:{port}" for name, port in listeners)


def _serves_metadata(bootstrap: str, timeout: float = 5.0) -> bool:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def terminate_group(pid: int, timeout: float, exited: Callable[[], bool] | None = None) -> None:
    """SIGTERM process group ``pid``; SIGKILL it if still alive after ``timeout`` seconds."""
    is_gone = exited or (lambda: not pid_alive(pid))
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_gone():
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def is_kafka_process(pid: int) -> bool:
    """True when ``pid`` is alive and (where /proc can tell) runs ``kafka.Kafka``."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return b"kafka.Kafka" in cmdline


# --------------------------------------------------------------------------- topics


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    config: Mapping[str, str] | None = None,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
    admin_config: Mapping[str, str] | None = None,
) -> None:
    """Create ``name`` and wait until every partition has a leader; an existing topic is fine."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(admin_config or {})})
    topic = NewTopic(
        name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        config=dict(config or {}),
    )
    # exception() rather than result(): a raised error's traceback would tie the admin client
    # into a reference cycle and keep its connections open until the next GC run.
    failure = admin.create_topics([topic], request_timeout=timeout)[name].exception(timeout)
    if failure is not None:
        error = failure.args[0] if failure.args else None
        if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise failure
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(topic=name, timeout=timeout).topics.get(name)
        leaders = meta.partitions if meta is not None and meta.error is None else {}
        if leaders and all(p.leader >= 0 for p in leaders.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name!r} has no leader for every partition yet")
        time.sleep(0.1)


# --------------------------------------------------------------------------- testcontainers


@contextmanager
def start_testcontainers_kafka() -> Iterator[str]:
    """A Kafka container (needs a Docker engine); yields its bootstrap servers."""
    # Imported here: testcontainers is a dev-only dependency and the demo CLI runs without it.
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer().with_kraft() as container:
        yield container.get_bootstrap_server()


# --------------------------------------------------------------------------- CLI


def read_state(path: Path) -> dict[str, object] | None:
    """The state file a detached service's ``start`` wrote, or None."""
    try:
        state: dict[str, object] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state


def state_running(state: Mapping[str, object] | None, is_ours: Callable[[int], bool]) -> bool:
    """The service of ``state`` is up: its pid is ours and its port accepts connections."""
    if state is None:
        return False
    pid, port = state.get("pid"), state.get("port")
    return isinstance(pid, int) and isinstance(port, int) and is_ours(pid) and port_open(port)


def cli_stop(path: Path, is_ours: Callable[[int], bool], what: str, timeout: float) -> int:
    """``stop``: terminate the process named in the state file, if it is still ours."""
    state = read_state(path)
    pid = state.get("pid") if state else None
    if isinstance(pid, int) and is_ours(pid):
        terminate_group(pid, timeout)
        print(f"stopped {what} pid {pid}")
    else:
        print(f"{what} not running")
    return 0


def cli_status(path: Path, is_ours: Callable[[int], bool], address_key: str) -> int:
    """``status``: exit 0 and the address when running, 1 when stopped."""
    state = read_state(path)
    if state is not None and state_running(state, is_ours):
        print(f"running {state[address_key]} (pid {state['pid']})")
        return 0
    print("stopped")
    return 1


def _cli_start(state_dir: Path, timeout: float) -> int:
    state = read_state(state_dir / STATE_FILE)
    if state is not None and state_running(state, is_kafka_process):
        print(state["bootstrap"])
        return 0

    def reusable(key: str) -> int:
        # Keep the previous ports (stable bootstrap for the demo) unless taken meanwhile.
        port = state.get(key) if state else None
        return port if isinstance(port, int) and not port_open(port) else 0

    broker = LocalKafka(
        work_dir=state_dir,
        port=reusable("port"),
        controller_port=reusable("controller_port"),
        startup_timeout=timeout,
        stop_at_exit=False,
    )
    try:
        broker.start()
    except BrokerStartError as err:
        print(err, file=sys.stderr)
        return 1
    assert broker.process is not None
    new_state = {
        "pid": broker.process.pid,
        "bootstrap": broker.bootstrap,
        "port": broker.port,
        "controller_port": broker.controller_port,
        "log": str(broker.log_path),
        "startup_seconds": round(broker.startup_seconds or 0.0, 2),
    }
    (state_dir / STATE_FILE).write_text(json.dumps(new_state, indent=2) + "\n")
    print(broker.bootstrap)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.localkafka", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=Path(".local/kafka"), help="state/data dir")
    parser.add_argument("--timeout", type=float, default=90.0, help="start/stop timeout (s)")
    args = parser.parse_args(argv)
    state_dir: Path = args.dir.resolve()
    if args.command == "start":
        return _cli_start(state_dir, args.timeout)
    if args.command == "stop":
        return cli_stop(state_dir / STATE_FILE, is_kafka_process, "broker", min(args.timeout, 20.0))
    return cli_status(state_dir / STATE_FILE, is_kafka_process, "bootstrap")


if __name__ == "__main__":
    sys.exit(main())
