"""hoody Exec: TypeScript request handlers ("scripts") served as URLs by the control
plane, each run in a Deno (V8) process of its own with limits.

    tables.py     scripts (versioned), invocations, per-project settings and secrets
    limits.py     what one invocation may use, per project
    secrets.py    secrets encrypted at rest; the key that signs invocation tokens
    tokens.py     short-lived project tokens minted for each invocation
    scripts.py    the Fleet area: deploy, list, show, delete, logs, settings, secrets
    sandbox.py    a worker's files, uid, cgroup and Deno permissions
    worker.py     one warm Deno process serving one script version on a unix socket
    pool.py       warm workers per (project, script version); limits enforced
    gateway.py    /exec/<project>/<name>[/<subpath>] on the control plane's port
    api.py        /api/v1/scripts…, /api/v1/projects/{id}/secrets|exec endpoints
    deno/         the runtime bootstrap each worker loads
    sdk/          the TypeScript SDK scripts import as "hoody"

A request flows gateway → pool → worker (Deno) → the script's `fetch(request, env,
ctx)`; the script calls back into /api/v1 with env.HOODY_TOKEN.
"""

from __future__ import annotations

__all__: list[str] = []
