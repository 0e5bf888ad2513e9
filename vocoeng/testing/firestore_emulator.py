"""Run an in-memory Firestore emulator for tests.

Google's Firestore emulator is a Java download that cannot be fetched here, so
this harness uses the npm package ``@firestore-emulator/server`` instead: a
gRPC implementation of the Firestore v1 API that the real
``google-cloud-firestore`` client talks to when ``FIRESTORE_EMULATOR_HOST`` is
set.

The package is installed on demand (``ensure_installed()``) into the
git-ignored folder ``var/firestore-emulator/`` at the repository root, with
``npm install --prefix``. The package ships no executable, only a library
(``new FirestoreServer().start(port)``, which always binds ``0.0.0.0``), so a
small Node launcher is generated next to it at run time. The launcher binds
``127.0.0.1`` on a given or OS-assigned port, prints one JSON line when it is
listening, answers ``reset`` commands on stdin (the package has no HTTP reset
endpoint) and exits when its stdin closes, so it cannot outlive the test
process.

By default the launcher also patches bugs of version 0.3.15 that VocoEng's
conversation store would hit (``patch_known_bugs=True``):

* field transforms after a ``SERVER_TIMESTAMP`` in the same write were
  dropped (``update({"last_activity": SERVER_TIMESTAMP,
  "message_count": Increment(1)})`` never incremented);
* ``set()`` without ``merge`` merged into the old document instead of
  replacing it;
* ``DELETE_FIELD`` was ignored;
* a failing commit (batch or transaction) kept the writes before the failing
  one, instead of applying none;
* queries on nested fields (``usage.total_tokens``) failed with ``Unknown``.

Still unsupported, patched or not: query offsets and cursors (ignored),
collection-group queries (return nothing), ``select()`` projections (ignored),
``list_documents()`` / ``collections()`` (``Unknown`` error), transforms on
nested fields, integers beyond 2**53, and transaction isolation (concurrent
transactions do not conflict, so a read-modify-write race loses updates).
``order_by()`` does not exclude documents that lack the field.

Typical use in a test module::

    @pytest.fixture(scope="session")
    def firestore_emulator():
        try:
            emulator = FirestoreEmulator().start()
        except EmulatorUnavailable as exc:
            pytest.skip(exc.reason)
        yield emulator
        emulator.stop()
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "DEFAULT_INSTALL_DIR",
    "PACKAGE_NAME",
    "PACKAGE_VERSION",
    "EmulatorError",
    "EmulatorUnavailable",
    "FirestoreEmulator",
    "ensure_installed",
    "installed_version",
]

PACKAGE_NAME = "@firestore-emulator/server"
PACKAGE_VERSION = "0.3.15"
MIN_NODE_MAJOR = 18

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_INSTALL_DIR = REPO_ROOT / "var" / "firestore-emulator"
LAUNCHER_NAME = "launcher.cjs"

_INSTALL_TIMEOUT_S = 240.0
_COMMAND_TIMEOUT_S = 10.0

_LAUNCHER_JS = r"""// Generated at run time by vocoeng/testing/firestore_emulator.py.
// Do not edit: it is rewritten whenever it differs from the Python source.
"use strict";

const readline = require("node:readline");

if (!globalThis.crypto) {
  globalThis.crypto = require("node:crypto").webcrypto;
}

const emulator = require("@firestore-emulator/server");
const grpc = require(
  require.resolve("@grpc/grpc-js", {
    paths: [require.resolve("@firestore-emulator/server")],
  }),
);

function parseArgs(argv) {
  const args = { host: "127.0.0.1", port: 0, patches: true };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === "--host") args.host = argv[(i += 1)];
    else if (argv[i] === "--port") args.port = Number(argv[(i += 1)]);
    else if (argv[i] === "--no-patches") args.patches = false;
    else throw new Error(`unknown argument: ${argv[i]}`);
  }
  return args;
}

function send(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

// Split a Firestore field path ("a.b", "`a.b`.c") into its segments.
function splitFieldPath(path) {
  const parts = [];
  let current = "";
  let quoted = false;
  for (let i = 0; i < path.length; i += 1) {
    const ch = path[i];
    if (quoted && ch === "\\") current += path[(i += 1)];
    else if (ch === "`") quoted = !quoted;
    else if (!quoted && ch === ".") {
      parts.push(current);
      current = "";
    } else current += ch;
  }
  parts.push(current);
  return parts;
}

function protoHasPath(fields, parts) {
  let map = fields;
  for (let i = 0; i < parts.length; i += 1) {
    if (!map || !map.has(parts[i])) return false;
    if (i === parts.length - 1) return true;
    const value = map.get(parts[i]);
    if (!value.has_map_value) return false;
    map = value.map_value.fields;
  }
  return false;
}

function withoutPath(fields, parts) {
  const [head, ...rest] = parts;
  if (!Object.hasOwn(fields, head)) return fields;
  const out = { ...fields };
  if (rest.length === 0) {
    delete out[head];
    return out;
  }
  const child = fields[head];
  if (!child || child.type !== "map_value") return fields;
  out[head] = new child.constructor(withoutPath(child.value, rest));
  return out;
}

function applyPatches() {
  const { FirestoreState, FirestoreStateDocument } = emulator;
  const Status = grpc.status;

  // 1. v1Transform returns after a SERVER_TIMESTAMP or array transform,
  //    dropping the transforms after it: apply them one at a time.  Nested
  //    transform paths would be written as a top-level "a.b" key: refuse.
  const transform = FirestoreStateDocument.prototype.v1Transform;
  FirestoreStateDocument.prototype.v1Transform = function (date, transforms) {
    for (const t of transforms) {
      if (splitFieldPath(t.field_path).length > 1) {
        const error = new Error(
          `transforms on nested fields are not supported: ${t.field_path}`,
        );
        error.code = Status.UNIMPLEMENTED;
        throw error;
      }
      transform.call(this, date, [t]);
    }
  };

  // 2. getField throws "Not implemented" for nested paths: walk map values.
  FirestoreStateDocument.prototype.getField = function (path) {
    let field;
    let fields = this.fields;
    for (const part of splitFieldPath(path)) {
      if (!fields || !Object.hasOwn(fields, part)) return undefined;
      field = fields[part];
      fields = field.type === "map_value" ? field.value : undefined;
    }
    return field;
  };

  // 3. set() without merge must replace the document; DELETE_FIELD (a masked
  //    path without a value) must remove the field; 4. a commit is all or
  //    nothing. Commit() passes one Date object to all writes of a commit,
  //    which tells the commits apart.
  const write = FirestoreState.prototype.writeV1Document;
  let journalDate = null;
  let journal = new Map();
  FirestoreState.prototype.writeV1Document = function (date, w) {
    if (date !== journalDate) {
      journalDate = date;
      journal = new Map();
    }
    const path = w.has_delete ? w.delete : w.has_update ? w.update.name : null;
    const doc = path ? this.getDocument(path) : null;
    if (doc && !journal.has(doc)) {
      journal.set(doc, { metadata: doc.metadata, fields: doc.fields });
    }
    try {
      const isPlainSet =
        w.has_update &&
        !w.has_update_mask &&
        !(w.has_current_document && w.current_document.has_exists);
      if (isPlainSet && doc.metadata.hasExist) doc.fields = {};
      const result = write.call(this, date, w);
      if (w.has_update && w.has_update_mask) {
        const transformed = new Set(
          w.update_transforms.map((t) => t.field_path),
        );
        for (const maskPath of w.update_mask.field_paths) {
          if (transformed.has(maskPath)) continue;
          const parts = splitFieldPath(maskPath);
          if (!protoHasPath(w.update.fields, parts)) {
            doc.fields = withoutPath(doc.fields, parts);
          }
        }
      }
      return result;
    } catch (error) {
      for (const [d, saved] of journal) {
        d.metadata = saved.metadata;
        d.fields = saved.fields;
      }
      journal = new Map();
      journalDate = null;
      throw error;
    }
  };
}

function reset(server, project) {
  if (!project) {
    server.state.clear();
    return;
  }
  const state = server.state;
  state.projects = Object.fromEntries(
    Object.entries(state.projects).filter(([name]) => name !== project),
  );
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.patches) applyPatches();

  // The package's own start() binds 0.0.0.0 and hides the port it got.
  const server = new emulator.FirestoreServer();
  server.server.bindAsync(
    `${args.host}:${args.port}`,
    grpc.ServerCredentials.createInsecure(),
    (error, port) => {
      if (error) {
        console.error(`cannot listen on ${args.host}:${args.port}: ${error}`);
        process.exit(2);
      }
      send({ event: "ready", host: args.host, port, patches: args.patches });
    },
  );

  const lines = readline.createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    const [command, ...rest] = line.trim().split(/\s+/);
    if (command === "reset") {
      reset(server, rest[0]);
      send({ event: "reset", project: rest[0] ?? null });
    } else if (command === "ping") {
      send({ event: "pong" });
    } else if (command) {
      send({ event: "error", message: `unknown command: ${command}` });
    }
  });
  // Exit with the test process that started us, however it ends.
  lines.on("close", () => {
    server.stop();
    process.exit(0);
  });

  // A throwing stream handler (e.g. Listen) must not end the test session.
  process.on("uncaughtException", (error) => {
    console.error("uncaught exception:", error);
  });
}

main();
"""


class EmulatorUnavailable(RuntimeError):
    """Signal that the emulator cannot run here (no Node/npm, failed install).

    Tests skip on this exception, with ``reason`` as the message.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EmulatorError(RuntimeError):
    """Signal that an installed emulator failed to start or to answer."""


def _node_major(node: str) -> int:
    """Return the major version of the ``node`` binary at ``node``."""
    try:
        out = subprocess.run(
            [node, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmulatorUnavailable(f"cannot run {node} --version: {exc}") from exc
    match = re.match(r"v(\d+)\.", out)
    if not match:
        raise EmulatorUnavailable(f"unexpected `node --version` output: {out!r}")
    return int(match.group(1))


def _find_node() -> str:
    """Return the path of a usable ``node`` binary or raise EmulatorUnavailable."""
    node = shutil.which("node")
    if node is None:
        raise EmulatorUnavailable(
            "Node.js is not installed (no `node` on PATH); "
            "the Firestore emulator needs Node >= 18"
        )
    major = _node_major(node)
    if major < MIN_NODE_MAJOR:
        raise EmulatorUnavailable(
            f"Node.js {major} is too old for the Firestore emulator "
            f"(needs >= {MIN_NODE_MAJOR})"
        )
    return node


def installed_version(install_dir: Path = DEFAULT_INSTALL_DIR) -> str | None:
    """Return the emulator package version installed in ``install_dir``."""
    manifest = install_dir / "node_modules" / PACKAGE_NAME / "package.json"
    try:
        return str(json.loads(manifest.read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError):
        return None


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically unless it already holds it."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _npm_install(install_dir: Path) -> None:
    """Install the pinned package into ``install_dir`` or raise EmulatorUnavailable."""
    npm = shutil.which("npm")
    if npm is None:
        raise EmulatorUnavailable(
            "npm is not installed (no `npm` on PATH); "
            "it is needed to install the Firestore emulator"
        )
    command = [
        npm,
        "install",
        "--prefix",
        str(install_dir),
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        "--save-exact",
        f"{PACKAGE_NAME}@{PACKAGE_VERSION}",
    ]
    env = {**os.environ, "npm_config_update_notifier": "false"}
    try:
        result = subprocess.run(
            command,
            cwd=install_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=_INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise EmulatorUnavailable(
            f"`npm install {PACKAGE_NAME}@{PACKAGE_VERSION}` timed out after "
            f"{_INSTALL_TIMEOUT_S:.0f} s"
        ) from exc
    except OSError as exc:
        raise EmulatorUnavailable(f"cannot run npm: {exc}") from exc
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise EmulatorUnavailable(
            f"`npm install {PACKAGE_NAME}@{PACKAGE_VERSION}` failed "
            f"(exit {result.returncode}): {tail}"
        )
    if installed_version(install_dir) != PACKAGE_VERSION:
        raise EmulatorUnavailable(
            f"npm install finished but {PACKAGE_NAME}@{PACKAGE_VERSION} "
            f"is not in {install_dir / 'node_modules'}"
        )


def ensure_installed(install_dir: Path | None = None) -> Path:
    """Install the pinned emulator package and its launcher if missing.

    Installs ``@firestore-emulator/server@0.3.15`` with npm into
    ``install_dir`` (default ``<repo>/var/firestore-emulator``) unless that
    version is already there, and (re)writes the generated ``launcher.cjs``.
    An exclusive ``flock`` on ``<install_dir>/.install.lock`` serialises
    concurrent test processes. Returns ``install_dir``.

    Raises EmulatorUnavailable when Node >= 18 or npm is missing or the
    install fails.
    """
    install_dir = Path(install_dir or DEFAULT_INSTALL_DIR)
    _find_node()
    install_dir.mkdir(parents=True, exist_ok=True)
    with open(install_dir / ".install.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if installed_version(install_dir) != PACKAGE_VERSION:
                _npm_install(install_dir)
            _write_if_changed(install_dir / LAUNCHER_NAME, _LAUNCHER_JS)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return install_dir


def _pump_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Copy lines from ``stream`` to ``lines``, then put None at EOF."""
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):
        pass
    finally:
        lines.put(None)


class FirestoreEmulator:
    """Run ``@firestore-emulator/server`` in a Node child process.

    ``start()`` installs the package if needed, starts the launcher on
    ``host`` and ``port`` (0: a free port chosen by the OS) and waits until
    the port accepts connections. Point the Firestore client at it with
    ``FIRESTORE_EMULATOR_HOST=<emulator.host>`` (see ``env``); the client
    then needs no credentials. Data lives in memory and is lost on ``stop()``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        install_dir: Path | None = None,
        patch_known_bugs: bool = True,
        startup_timeout: float = 30.0,
    ) -> None:
        self.bind_host = host
        self.requested_port = port
        self.install_dir = Path(install_dir or DEFAULT_INSTALL_DIR)
        self.patch_known_bugs = patch_known_bugs
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._command_lock = threading.Lock()

    @property
    def host(self) -> str:
        """Return ``"127.0.0.1:PORT"``, the value for FIRESTORE_EMULATOR_HOST."""
        if self.port is None:
            raise EmulatorError("the emulator is not running; call start() first")
        return f"{self.bind_host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Return the environment variables that point a client at this emulator."""
        return {"FIRESTORE_EMULATOR_HOST": self.host}

    @property
    def running(self) -> bool:
        """Tell whether the emulator process is alive."""
        return self._process is not None and self._process.poll() is None

    def logs(self) -> str:
        """Return what the emulator process wrote to stderr so far."""
        if self._stderr is None:
            return ""
        fd = self._stderr.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    def start(self) -> Self:
        """Install if needed, spawn the emulator and wait until it listens."""
        if self._process is not None:
            raise EmulatorError("the emulator is already started")
        started = time.monotonic()
        install_dir = ensure_installed(self.install_dir)
        node = _find_node()
        command = [
            node,
            str(install_dir / LAUNCHER_NAME),
            "--host",
            self.bind_host,
            "--port",
            str(self.requested_port),
        ]
        if not self.patch_known_bugs:
            command.append("--no-patches")
        # Append mode: the child writes at the end whatever logs() reads.
        self._stderr = tempfile.TemporaryFile("a+b", prefix="firestore-emulator-")
        self._lines = queue.Queue()
        self._process = subprocess.Popen(
            command,
            cwd=install_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        assert self._process.stdout is not None
        self._reader = threading.Thread(
            target=_pump_lines,
            args=(self._process.stdout, self._lines),
            name="firestore-emulator-stdout",
            daemon=True,
        )
        self._reader.start()
        deadline = started + self.startup_timeout
        try:
            ready = self._wait_for("ready", deadline)
            self.port = int(ready["port"])
            self._wait_for_port(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the emulator (kill it if it lingers) and free its resources."""
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
            self._reader = None
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self.port = None

    def reset(self, project: str | None = None) -> None:
        """Delete all documents, or only those of ``project``.

        The package has no HTTP reset endpoint like Google's emulator
        (``DELETE /emulator/v1/projects/{project}/databases/(default)/documents``),
        so the command goes to the launcher over stdin.
        """
        if project is not None and not re.fullmatch(r"[A-Za-z0-9._~-]+", project):
            raise ValueError(f"invalid project id: {project!r}")
        self._command("reset" if project is None else f"reset {project}", "reset")

    def _command(self, line: str, event: str) -> dict[str, Any]:
        """Send one command line to the launcher and return its answer."""
        with self._command_lock:
            process = self._process
            if process is None or process.stdin is None or not self.running:
                raise EmulatorError("the emulator is not running" + self._logs_suffix())
            try:
                process.stdin.write(line + "\n")
                process.stdin.flush()
            except OSError as exc:
                raise EmulatorError(
                    f"cannot talk to the emulator: {exc}" + self._logs_suffix()
                ) from exc
            return self._wait_for(event, time.monotonic() + _COMMAND_TIMEOUT_S)

    def _wait_for(self, event: str, deadline: float) -> dict[str, Any]:
        """Return the next launcher message of type ``event`` before ``deadline``."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EmulatorError(
                    f"the Firestore emulator sent no {event!r} message in time"
                    + self._logs_suffix()
                )
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self._process.wait(5) if self._process else None
                raise EmulatorError(
                    f"the Firestore emulator exited (code {code}) before "
                    f"sending {event!r}" + self._logs_suffix()
                )
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("event") == event:
                return message
            if isinstance(message, dict) and message.get("event") == "error":
                raise EmulatorError(f"emulator error: {message.get('message')}")

    def _wait_for_port(self, deadline: float) -> None:
        """Wait until the emulator's port accepts TCP connections."""
        assert self.port is not None
        while True:
            try:
                with socket.create_connection((self.bind_host, self.port), 0.5):
                    return
            except OSError as exc:
                if not self.running:
                    raise EmulatorError(
                        "the Firestore emulator exited while starting"
                        + self._logs_suffix()
                    ) from exc
                if time.monotonic() >= deadline:
                    raise EmulatorError(
                        f"the Firestore emulator did not accept connections on "
                        f"{self.bind_host}:{self.port} in time" + self._logs_suffix()
                    ) from exc
                time.sleep(0.05)

    def _logs_suffix(self) -> str:
        """Return the emulator's stderr formatted for an error message."""
        logs = self.logs().strip()
        return f"; its stderr:\n{logs[-4000:]}" if logs else ""

    def __enter__(self) -> Self:
        """Start the emulator."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the emulator."""
        self.stop()
