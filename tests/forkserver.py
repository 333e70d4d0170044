"""Real `batchrun` processes without paying litellm's import for each: a warm process that forks.

    cli_popen(batchrun_cmd("run", ...), env=..., stdout=PIPE, ...)   like subprocess.Popen
    cli_run(batchrun_cmd("status", ...), env=..., capture_output=True, ...)   like subprocess.run

`python -m batchrun.cli` spends about 4 s importing litellm before it does
anything. The tests that start one want what only a process has: a pid to
signal or SIGKILL, its own stdout and stderr, an exit status, a death the next
run has to survive. So each pytest process (each xdist worker) starts one
server, on first use: `python tests/forkserver.py SOCKET` imports batchrun and
litellm the way `batchrun run` does (LITELLM_LOCAL_MODEL_COST_MAP=True,
LITELLM_LOG=ERROR unless set) and then waits, single-threaded. For each
command line the server forks a child that becomes that process:

  * its stdin (/dev/null), stdout and stderr are the descriptors the test
    passed over the socket (pipes, /dev/null or the test's own, as
    subprocess would give them);
  * its environment is replaced by the one given (os.environ, so putenv too),
    its working directory set, and start_new_session calls setsid();
  * then it runs `-m batchrun.cli` with runpy (sys.argv, sys.path[0] and
    __main__ as `python -m` sets them) or a script (tests/crashing_batchrun.py)
    with runpy.run_path, and ends as that interpreter would: SystemExit's code,
    a traceback and 1, atexit handlers, non-daemon threads joined.

The server freezes its heap (gc.freeze) before it forks: a child's collector
then never walks what the server imported, which would copy every page of it
(a forked `batchrun status` took seconds instead of a fraction of one);
batchrun's worker processes freeze theirs after the same import. The server
waits for each child through a pidfd and sends its exit status on
the test's connection: returncode as subprocess reports it (-9 after
SIGKILL). The test signals the child's pid itself (send_signal, kill, or
os.killpg for a child in its own session), and its children (worker
processes, the embedded simulator) are its own, as before.

What differs from a fresh interpreter is that litellm is already imported, so
a command line runs in the warm process only where that cannot show:

  * `run` (it sets LITELLM_LOG=ERROR before it imports litellm: the state the
    server imported it in) and what never imports litellm (status, export,
    report, diff, init, serve, --help, --version); `plan`, `cancel`, `bench`,
    `cache` and `sim` import it with their own logging state: real subprocess;
  * an environment that differs from the server's only where importing
    litellm cannot see it (`import_view`: BATCHRUN_*, PYTEST_*, RAY_*, and
    what `batchrun run` sets before the import anyway); any other difference
    (LITELLM_LOG=DEBUG, PYTHONPATH, ...): real subprocess;
  * what only a first import shows ("loading litellm..." on stderr) needs a
    real subprocess: the test that checks it starts one itself;
  * litellm's aiohttp pool was sized by the server's import (500 per host);
    a run with more in flight raises it after the import (tuning.size_pool),
    as any process where litellm came first does (the test of 1,000 in
    flight, tests/test_hostile_machine.py, still starts a real subprocess);
  * the child's /proc/PID/cmdline is the server's (`python tests/forkserver.py
    SOCKET`): tests read the command lines of a run's children (worker
    processes, the embedded simulator), never the run's own.

`STATS` counts the command lines run warm and those sent to a subprocess (and
why). The server exits when its stdin (a pipe from the pytest process)
closes: at the end of the session, or when pytest dies.
"""

from __future__ import annotations

import collections
import io
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
CRASHING = str(Path(__file__).with_name("crashing_batchrun.py"))
READY = "batchrun-forkserver ready"
UNAVAILABLE = "batchrun-forkserver unavailable"
MAX_MESSAGE = 1 << 20
#: subcommands (and the group's own options) run in the warm process (module docstring)
WARM_COMMANDS = frozenset({"run", "status", "export", "report", "diff", "init", "serve", "--help", "-h", "--version",
                           ""})

STATS: collections.Counter[str] = collections.Counter()


# --------------------------------------------------------------------------------------------
# the server (its own process)
# --------------------------------------------------------------------------------------------


def _send(conn: socket.socket, body: dict[str, Any]) -> None:
    try:
        conn.send(json.dumps(body).encode())
    except OSError:  # the test closed its end: nothing to tell
        pass


def serve(path: str) -> tuple[dict[str, Any], list[int]] | None:
    """Accept command lines until stdin closes (returns None); in a forked child, return its request."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "control")
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, the test's connection)
    print(READY, flush=True)
    while True:
        for key, _ in selector.select():
            if key.data == "control":
                if not os.read(key.fd, 4096):
                    return None
            elif key.data == "accept":
                conn, _ = listener.accept()
                selector.register(conn, selectors.EVENT_READ, "request")
            elif key.data == "request":
                conn = key.fileobj  # type: ignore[assignment]
                selector.unregister(conn)
                try:
                    message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
                except OSError:
                    message, fds = b"", []
                if not message or len(fds) != 3:
                    for fd in fds:
                        os.close(fd)
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                try:
                    pid = os.fork()
                except OSError as exc:
                    for fd in fds:
                        os.close(fd)
                    _send(conn, {"error": f"fork: {exc}"})
                    conn.close()
                    continue
                if pid == 0:  # the child: nothing of the server stays open
                    for registered in list(selector.get_map().values()):  # listener, connections, pidfds
                        if isinstance(registered.fileobj, socket.socket):
                            registered.fileobj.close()
                        elif registered.fd > 2:
                            os.close(registered.fd)
                    selector.close()
                    conn.close()
                    for _, other in children.values():
                        other.close()
                    return json.loads(message), fds
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, conn)
                selector.register(pidfd, selectors.EVENT_READ, "exit")
                _send(conn, {"pid": pid})
            else:  # a child ended
                selector.unregister(key.fd)
                pid, conn = children.pop(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                _send(conn, {"returncode": os.waitstatus_to_exitcode(status)})
                conn.close()


def become(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: take the stdio, environment and directory given, then run the command."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    if request["new_session"]:
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import runpy

    if request["script"] is None:  # python -m batchrun.cli ARGS
        sys.modules.pop("batchrun.cli", None)  # imported by the server; `python -m` runs it as __main__ only
        sys.path[0] = os.getcwd()
        sys.argv = ["-m", *request["args"]]  # runpy puts the module's path in argv[0]
        runpy.run_module("batchrun.cli", run_name="__main__", alter_sys=True)
    else:  # python SCRIPT ARGS
        sys.path[0] = os.path.dirname(os.path.abspath(request["script"]))
        sys.argv = [request["script"], *request["args"]]
        runpy.run_path(request["script"], run_name="__main__")


def server_main() -> None:
    # what `batchrun run` sets before it imports litellm (run_logging, providers/litellm_setup)
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm  # noqa: F401  (the seconds this server exists to pay once)

    import batchrun.cli  # noqa: F401
    import batchrun.launcher  # noqa: F401
    import batchrun.execution.engine  # noqa: F401
    import batchrun.providers.online  # noqa: F401

    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as exc:  # no pidfd (Linux < 5.3): the client falls back to subprocess
        print(f"{UNAVAILABLE}: pidfd_open: {exc}", flush=True)
        return
    import gc

    gc.collect()
    gc.freeze()  # the collector of a child never walks (and so never copies) what the server imported
    child = serve(sys.argv[1])
    if child is not None:
        become(*child)


# --------------------------------------------------------------------------------------------
# the client (the pytest process)
# --------------------------------------------------------------------------------------------


class WarmProcess:
    """A forked `batchrun` process, with the part of subprocess.Popen's interface the tests use."""

    def __init__(self, args: list[str], conn: socket.socket, pid: int, stdout: IO[Any] | None,
                 stderr: IO[Any] | None) -> None:
        self.args, self.pid, self.returncode = args, pid, None
        self.stdin: IO[Any] | None = None
        self.stdout, self.stderr = stdout, stderr
        self._conn = conn
        self._readers: dict[str, tuple[threading.Thread, list[Any]]] = {}

    def _receive(self, timeout: float | None) -> bool:
        if self.returncode is not None:
            return True
        self._conn.settimeout(timeout)
        try:
            message = self._conn.recv(4096)
        except (BlockingIOError, TimeoutError):
            return False
        if not message:
            raise RuntimeError(f"the warm batchrun server went away before pid {self.pid} ended")
        self.returncode = json.loads(message)["returncode"]
        self._conn.close()
        return True

    def poll(self) -> int | None:
        self._receive(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._receive(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # as Popen: never signal a pid that may have been reused
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """Read stdout and stderr to their end (a thread each, so neither pipe fills), then wait."""
        if input is not None:
            raise ValueError("no stdin: the warm process reads /dev/null")
        deadline = None if timeout is None else time.monotonic() + timeout
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None and name not in self._readers:
                chunks: list[Any] = []
                thread = threading.Thread(target=lambda s=stream, c=chunks: c.append(s.read()), daemon=True)
                thread.start()
                self._readers[name] = (thread, chunks)
        for thread, _ in self._readers.values():
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
        out = err = None
        if "stdout" in self._readers:
            out = self._readers["stdout"][1][0]
            self.stdout.close()  # type: ignore[union-attr]
        if "stderr" in self._readers:
            err = self._readers["stderr"][1][0]
            self.stderr.close()  # type: ignore[union-attr]
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return out, err

    def __del__(self) -> None:
        try:
            self._conn.close()
        except Exception:
            pass


class WarmServer:
    """The pytest process's side of one server (started on first use)."""

    def __init__(self) -> None:
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.folder = tempfile.mkdtemp(prefix="batchrun-forkserver-")
        self.path = os.path.join(self.folder, "socket")
        self.log = open(os.path.join(self.folder, "server.log"), "w+b")
        self.process = subprocess.Popen([sys.executable, __file__, self.path], env=self.env, cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        assert self.process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        line = self.process.stdout.readline().decode().strip() if selector.select(timeout=300) else ""
        selector.close()
        self.unavailable = line[len(UNAVAILABLE) + 2:] if line.startswith(UNAVAILABLE) else None
        if line != READY and self.unavailable is None:
            self.process.kill()
            self.process.wait()
            self.log.seek(0)
            raise RuntimeError(f"the warm batchrun server did not start: {self.log.read()[-3000:].decode()!r}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()  # type: ignore[union-attr]
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()  # type: ignore[union-attr]
        self.log.close()
        for name in ("socket", "server.log"):
            try:
                os.unlink(os.path.join(self.folder, name))
            except FileNotFoundError:
                pass
        os.rmdir(self.folder)

    def env_difference(self, env: dict[str, str]) -> list[str]:
        """The variables that would make a fresh `batchrun run` import litellm differently."""
        ours, theirs = import_view(self.env), import_view(env)
        return sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))

    def start(self, args: list[str], script: str | None, command: list[str], env: dict[str, str], cwd: str,
              new_session: bool, fds: list[int]) -> tuple[socket.socket, int]:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.connect(self.path)
            body = {"args": args, "script": script, "env": env, "cwd": cwd, "new_session": new_session}
            socket.send_fds(conn, [json.dumps(body).encode()], fds)
            conn.settimeout(60)
            answer = conn.recv(4096)
            if not answer:
                raise RuntimeError("the warm batchrun server closed the connection")
            reply = json.loads(answer)
            if "error" in reply:
                raise RuntimeError(f"the warm batchrun server could not start {command}: {reply['error']}")
            return conn, reply["pid"]
        except BaseException:
            conn.close()
            raise


#: variables that do not change what importing litellm (or batchrun) does: batchrun's own (read when
#: a command runs), pytest's (PYTEST_CURRENT_TEST changes with every test) and Ray's (the server never
#: imports ray; a Ray driver imports it in the child, with the child's environment)
IMPORT_NEUTRAL = ("BATCHRUN_", "PYTEST_", "RAY_")


def import_view(env: dict[str, str]) -> dict[str, str]:
    """`env` as litellm sees it when `batchrun run` imports it: IMPORT_NEUTRAL variables left out,
    and what batchrun sets before the import set (run_logging, providers/litellm_setup)."""
    view = {k: v for k, v in env.items() if not k.startswith(IMPORT_NEUTRAL)}
    view.setdefault("LITELLM_LOG", "ERROR")
    view["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    # size_connection_pool: at least litellm's defaults, which no test's run exceeds (module docstring)
    view.setdefault("AIOHTTP_CONNECTOR_LIMIT_PER_HOST", "500")
    view.setdefault("AIOHTTP_CONNECTOR_LIMIT", "1000")
    return view


_server: WarmServer | None = None
_server_lock = threading.Lock()


def server() -> WarmServer:
    global _server
    with _server_lock:
        if _server is None or (_server.unavailable is None and _server.process.poll() is not None):
            _server = WarmServer()
        return _server


def stop_server() -> None:
    global _server
    with _server_lock:
        if _server is not None:
            _server.close()
            _server = None


def _warm_form(args: list[str]) -> tuple[list[str], str | None, str] | None:
    """(arguments, script or None, subcommand) of a batchrun command line the server can run."""
    if not args or args[0] != sys.executable:
        return None
    if args[1:3] == ["-m", "batchrun.cli"]:
        rest, script = list(args[3:]), None
        command = rest[0] if rest else ""
    elif len(args) > 2 and args[1] == CRASHING:
        rest, script = list(args[2:]), CRASHING
        command = rest[1] if len(rest) > 1 else ""
    else:
        return None
    return rest, script, command


_UNSUPPORTED = object()


def cli_popen(args: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
              stdin: Any = None, stdout: Any = None, stderr: Any = None, text: bool = False,
              start_new_session: bool = False) -> Any:
    """subprocess.Popen(args, ...) for a `batchrun_cmd(...)` or `crashing_batchrun_cmd(...)` command
    line: a child of the warm server where that cannot show (module docstring), else a real Popen."""
    env = dict(os.environ if env is None else env)
    form = _warm_form(args)
    reason = None
    if form is None:
        reason = "not a batchrun command line"
    elif form[2] not in WARM_COMMANDS:
        reason = f"batchrun {form[2]}"
    elif stdin not in (None, subprocess.DEVNULL):
        reason = "stdin"
    elif server().unavailable is not None:
        reason = f"no warm server: {server().unavailable}"
    else:
        difference = server().env_difference(env)
        if difference:
            reason = "environment: " + ", ".join(difference)
    if reason is not None:
        STATS[f"subprocess ({reason})"] += 1
        return subprocess.Popen(args, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr, text=text,
                                start_new_session=start_new_session)
    rest, script, _ = form  # type: ignore[misc]
    opened: list[int] = []  # descriptors made here; the child has its own copies once forked
    ours: dict[str, IO[Any]] = {}

    def descriptor(spec: Any, name: str, default: int) -> int:
        if spec is None:
            return default
        if spec == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR)
            opened.append(fd)
            return fd
        if spec == subprocess.PIPE:
            read, write = os.pipe()
            opened.append(write)
            ours[name] = io.open(read, "r" if text else "rb")
            return write
        return spec if isinstance(spec, int) else spec.fileno()

    try:
        fds = [descriptor(subprocess.DEVNULL, "stdin", 0)]
        fds.append(descriptor(stdout, "stdout", 1))
        fds.append(fds[1] if stderr == subprocess.STDOUT else descriptor(stderr, "stderr", 2))
        conn, pid = server().start(rest, script, args, env, os.fspath(cwd) if cwd is not None else os.getcwd(),
                                   start_new_session, fds)
    except BaseException:
        for stream in ours.values():
            stream.close()
        raise
    finally:
        for fd in opened:
            os.close(fd)
    STATS["warm"] += 1
    return WarmProcess(list(args), conn, pid, ours.get("stdout"), ours.get("stderr"))


def cli_run(args: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
            capture_output: bool = False, stdout: Any = None, stderr: Any = None, text: bool = False,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """subprocess.run(args, ...) through `cli_popen`; on a timeout the process is killed, as run does."""
    if capture_output:
        stdout = stderr = subprocess.PIPE
    process = cli_popen(args, env=env, cwd=cwd, stdout=stdout, stderr=stderr, text=text)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    except BaseException:
        process.kill()
        raise
    return subprocess.CompletedProcess(args, process.wait(), out, err)


if __name__ == "__main__":
    server_main()
