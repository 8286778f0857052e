"""Makes the holders of tenants' user namespaces for the agent (see userns.py).

Run by the agent as `python -I -S <this file>`: standard library only, no threads, a
few MiB, so each fork costs about a millisecond, where forking an agent that holds
1,000 tenants costs 10-25 ms (a fork copies the page tables of the whole process).

Reads JSON lines on stdin, one request each, and answers on stdout:

    {"owner": uid, "rlimits": [[kind, value], ...]}  → {"pid": pid, "code": errno or 0}
        fork a holder: rlimits, no groups, uid/gid := owner, unshare(CLONE_NEWUSER),
        exit. It is left unreaped, so its namespace stays reachable under /proc/<pid>
        until the agent has opened it and written its id maps.
    {"reap": pid}                                   → {"reaped": pid}, once it is.

Exits at the end of stdin (the agent is gone); holders it did not reap go to init.
"""

import contextlib
import ctypes
import json
import os
import resource
import sys

CLONE_NEWUSER = 0x10000000
libc = ctypes.CDLL(None, use_errno=True)


def holder(owner: int, rlimits: list[list[int]]) -> tuple[int, int]:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for kind, value in rlimits:
                resource.setrlimit(kind, (value, value))
            os.setgroups([])
            os.setresgid(owner, owner, owner)
            os.setresuid(owner, owner, owner)
            if libc.unshare(CLONE_NEWUSER) != 0:
                code = ctypes.get_errno() or 1
        except OSError as exc:
            code = exc.errno or 1
        os._exit(code)
    status = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    exited = status is not None and status.si_code == os.CLD_EXITED
    return pid, (status.si_status if exited else -1) if status is not None else -1


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if "reap" in request:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(request["reap"]), 0)
            answer = {"reaped": request["reap"]}
        else:
            pid, code = holder(int(request["owner"]), request["rlimits"])
            answer = {"pid": pid, "code": code}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
