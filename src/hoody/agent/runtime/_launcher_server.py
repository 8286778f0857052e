"""Starts tenants' runtimes for the agent and reaps what they leave (see launcher.py).

Run by the agent as `python -I -S <this file>`: standard library only, one thread.
It is a child subreaper (PR_SET_CHILD_SUBREAPER): once `runc run --detach` exits, the
tenant's init it leaves is reparented to this process, the nearest subreaper above
it, rather than to the host's init, and this process reaps it when it exits.

Requests on stdin, one JSON line each; answers on stdout, one line each:

    {"run": id, "argv": [...], "out": path, "prctl": [[option, arg], ...],
     "setns": [[path, nstype], ...], "rlimits": [[resource, soft, hard], ...]}
        fork; in the child: stdin /dev/null, stdout and stderr appended to `out`
        (made 0600), each prctl, join each namespace (all opened first, then joined
        in order; cwd / after), each rlimit, default signal dispositions, no other
        descriptors; exec argv (as `nsenter` and `prlimit` would, without their two
        execs).  → {"run": id, "code": exit code, or -signal} once it exits, or
        {"run": id, "error": why} when it could not fork
    {"kill": id}  → SIGKILL to that run if it has not exited (its answer follows)

At the end of stdin (the agent is gone) it takes no more requests but stays while it
has children, reaping them, so tenants outlive the agent without falling to the
host's init; it exits when the last one has.
"""

import contextlib
import ctypes
import json
import os
import resource
import selectors
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36
libc = ctypes.CDLL(None, use_errno=True)


def child(
    argv: list[str],
    out: str,
    prctls: list[list[int]],
    namespaces: list[list[object]],
    rlimits: list[list[int]],
) -> None:
    """In the forked child: never returns."""
    try:
        # The log first, so that whatever fails below is said there.
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for option, arg in prctls:
            if libc.prctl(option, arg, 0, 0, 0) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"prctl({option}, {arg}): {os.strerror(errno)}")
        # Opened before any is joined: a later path may not be visible from the mounts
        # an earlier namespace shows.
        fds = [
            (os.open(str(path), os.O_RDONLY | os.O_CLOEXEC), path, kind)
            for path, kind in namespaces
        ]
        for fd, path, kind in fds:
            if libc.setns(fd, kind) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
            os.close(fd)
        if fds:
            os.chdir("/")  # not a folder of the mounts left behind
        for which, soft, hard in rlimits:
            resource.setrlimit(which, (soft, hard))
        for sig in (signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.execv(argv[0], argv)
    except BaseException as exc:  # say why on the tenant's log, then go
        try:
            os.write(2, f"hoody launcher: cannot start {argv[:1]}: {exc}\n".encode())
        finally:
            os._exit(127)


def main() -> None:
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.stderr.write("hoody launcher: PR_SET_CHILD_SUBREAPER refused; tenants go to init\n")
    # Ctrl-C at a terminal running the agent must not take the tenants' reaper too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd is written
    runs: dict[int, int] = {}  # pid → run id
    pids: dict[int, int] = {}  # run id → pid
    listening = True
    buffer = b""
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)

    def answer(message: dict[str, object]) -> None:
        if listening:
            # OSError: the agent is gone; its successor does not need this answer.
            with contextlib.suppress(OSError):
                os.write(1, (json.dumps(message) + "\n").encode())

    def reap() -> bool:
        """Reap every child that has exited; False once there are no children."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            run = runs.pop(pid, None)
            if run is not None:
                del pids[run]
                answer({"run": run, "code": os.waitstatus_to_exitcode(status)})

    while True:
        for key, _ in sel.select():
            if key.fd == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                if not reap() and not listening:
                    return
                continue
            data = os.read(0, 65536)
            if not data:  # the agent is gone: reap what is left, then go
                listening = False
                sel.unregister(0)
                if not reap():
                    return
                continue
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                request = json.loads(line)
                if "kill" in request:
                    pid = pids.get(int(request["kill"]))
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                    continue
                run = int(request["run"])
                try:
                    pid = os.fork()
                except OSError as exc:  # out of processes or memory: say so, go on
                    answer({"run": run, "error": f"fork: {exc.strerror}"})
                    continue
                if pid == 0:
                    child(
                        request["argv"],
                        request["out"],
                        request.get("prctl", []),
                        request.get("setns", []),
                        request.get("rlimits", []),
                    )
                runs[pid] = run
                pids[run] = pid


if __name__ == "__main__":
    main()
