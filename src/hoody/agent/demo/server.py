"""demo-app: shows the tenant's id and a visit counter kept in SQLite on its own disk.

Deliberately stdlib-only and tiny so an idle tenant costs a few MiB of anonymous
memory: a raw socket loop (no http.server), and the C modules `_socket` and `_sqlite3`
rather than their Python wrappers, whose imports (enum, datetime, ...) add ~0.9 MiB
of heap to every tenant.
"""

import _socket
import _sqlite3
import os

TENANT = os.environ.get("HOODY_TENANT", "unknown")
PORT = int(os.environ.get("PORT", "8080"))
DB = "/var/lib/demo-app/visits.db"

os.makedirs(os.path.dirname(DB), exist_ok=True)
db = _sqlite3.connect(DB, isolation_level=None)
# Write-ahead log, synced at checkpoints: a visit is one append, not three fsyncs (a
# counter may lose its last visits to a power cut, never to a restart or a crash).
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.execute("BEGIN IMMEDIATE")
db.execute("CREATE TABLE IF NOT EXISTS visits (n INTEGER NOT NULL)")
if db.execute("SELECT COUNT(*) FROM visits").fetchone()[0] == 0:
    db.execute("INSERT INTO visits VALUES (0)")
db.execute("COMMIT")

PAGE = (
    "<!doctype html><html><head><meta charset=utf-8><title>{tid}</title>"
    "<style>body{{font:18px system-ui;margin:3em;color:#222}}b{{font-size:2em}}</style>"
    "</head><body><h1>Hello from tenant <code id=tenant>{tid}</code></h1>"
    "<p>Visits: <b id=visits>{n}</b></p>"
    "<p>This page runs in its own container; the counter lives in SQLite on the "
    "tenant's own disk.</p></body></html>"
)


def visit() -> int:
    db.execute("UPDATE visits SET n = n + 1")
    return int(db.execute("SELECT n FROM visits").fetchone()[0])


def respond(conn: _socket.socket) -> None:
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    path = parts[1] if len(parts) > 1 else "/"
    if path == "/healthz":
        body, ctype = b"ok\n", "text/plain"
    elif path == "/api/visits":
        body, ctype = (
            f'{{"tenant": "{TENANT}", "visits": {visit()}}}\n'.encode(),
            "application/json",
        )
    elif path in ("/", "/index.html"):
        body, ctype = PAGE.format(tid=TENANT, n=visit()).encode(), "text/html; charset=utf-8"
    else:
        body, ctype = b"not found\n", "text/plain"
    status = "404 Not Found" if body == b"not found\n" else "200 OK"
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        f"X-Hoody-Tenant: {TENANT}\r\nConnection: close\r\n\r\n"
    )
    conn.sendall(head.encode() + body)


def main() -> None:
    srv = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    srv.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", PORT))
    srv.listen(64)
    print(f"demo-app for tenant {TENANT} listening on :{PORT}", flush=True)
    while True:
        fd, _ = srv._accept()  # type: ignore[attr-defined]  # what socket.accept() wraps
        conn = _socket.socket(fileno=fd)
        try:
            respond(conn)
        except OSError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()
