// The bootstrap of one hoody Exec worker: a Deno process that loads one script and
// serves its `fetch` handler on a unix socket, one invocation after another.
//
//   deno run … runtime.ts <socket path> now|spare
//
// It listens at once, then reads one line on stdin, {"url": <script file URL>,
// "display": <the name its author knows>}, and imports that script. A "spare" is
// started before its script exists (hoody/exec/pool.py keeps one per active project):
// it first warms what every first invocation would otherwise pay for (V8 compiling
// Request, Headers, Response and body internals, the TypeScript parser), then waits
// for its line.
//
// The supervisor (hoody/exec/worker.py) sends each invocation as an HTTP request on
// the socket, with `x-hoody-invocation: <JSON {url, env}>`; the script sees the
// customer's request (its URL, method, headers, body) and that env. Then
// `GET /_hoody/settle` waits for ctx.waitUntil work and returns the console output of
// the invocation, so the next invocation starts clean.
//
// Lines on stdout are for the supervisor alone: "listening" once the socket is bound,
// then "ready" once the script is loaded, or one JSON object {"load_error": …} when it
// cannot be. The script's own console output is captured, never written to stdout.

const [socketPath, mode] = Deno.args;
let scriptUrl = "";
let displayName = "the script";
const MAX_LOG = 64 * 1024;

let logs: string[] = [];
let logBytes = 0;
let truncated = false;

function record(level: string, args: unknown[]): void {
  const text = args
    .map((a) => (typeof a === "string" ? a : Deno.inspect(a, { depth: 4, colors: false })))
    .join(" ");
  const line = level === "log" ? text : `${level}: ${text}`;
  if (logBytes + line.length > MAX_LOG) {
    truncated = true;
    return;
  }
  logBytes += line.length;
  logs.push(line);
}

for (const level of ["log", "info", "warn", "error", "debug", "trace"] as const) {
  // deno-lint-ignore no-explicit-any
  (console as any)[level] = (...args: unknown[]) => record(level, args);
}

globalThis.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  record("error", ["unhandled rejection:", event.reason]);
});

const encoder = new TextEncoder();
function tell(line: string): void {
  Deno.stdout.writeSync(encoder.encode(line + "\n"));
}

function where(err: unknown): string {
  // "…could not be parsed: Expected ';', got 'x' at file:///…/signup.ts:3:7" → keep the
  // message, but name the script the way its author knows it.
  const text = err instanceof Error ? err.message : String(err);
  return text.split(scriptUrl).join(displayName);
}

type Handler = {
  fetch: (request: Request, env: Record<string, string>, ctx: unknown) => unknown;
};

let handler: Handler | null = null;

let pending: Promise<unknown>[] = [];

function failure(kind: string, message: string): Response {
  return new Response(JSON.stringify({ error: { code: `script_${kind}`, message } }), {
    status: 500,
    headers: { "content-type": "application/json", "x-hoody-error": kind },
  });
}

// When no ctx.waitUntil work is pending and the console output is small, it rides
// on the response (x-hoody-console) and the worker is free at once: the supervisor
// skips its /_hoody/settle round trip, which back-to-back requests would wait for.
function settledNow(res: Response): Response {
  if (pending.length > 0) return res;
  const packed = encodeURIComponent(JSON.stringify({ console: logs, truncated }));
  if (packed.length > 8000) return res;
  const headers = new Headers(res.headers);
  headers.set("x-hoody-console", packed);
  logs = [];
  logBytes = 0;
  truncated = false;
  return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
}

async function invoke(req: Request, h: Handler): Promise<Response> {
  const raw = req.headers.get("x-hoody-invocation");
  if (raw === null) return failure("bad_invocation", "no x-hoody-invocation header");
  const meta = JSON.parse(raw) as { url: string; env: Record<string, string> };
  const headers = new Headers(req.headers);
  headers.delete("x-hoody-invocation");
  const hasBody = req.method !== "GET" && req.method !== "HEAD";
  const request = new Request(meta.url, {
    method: req.method,
    headers,
    body: hasBody ? await req.arrayBuffer() : undefined,
  });
  const ctx = {
    waitUntil(p: unknown) {
      pending.push(Promise.resolve(p).catch((e) => record("error", ["waitUntil failed:", e])));
    },
    passThroughOnException() {},
  };
  try {
    const res = await h.fetch(request, Object.freeze({ ...meta.env }), ctx);
    if (!(res instanceof Response)) {
      record("error", [`fetch returned ${Deno.inspect(res)}, not a Response`]);
      return failure("bad_response", `${displayName} returned something that is not a Response`);
    }
    return settledNow(res);
  } catch (err) {
    record("error", ["uncaught", err]);
    const what = err instanceof Error ? err.name : "an exception";
    return failure("threw", `${displayName} threw ${what}; \`hoody scripts logs\` shows where`);
  }
}

Deno.serve(
  {
    path: socketPath,
    onListen() {
      tell("listening");
    },
    onError(err) {
      record("error", ["hoody runtime:", err]);
      return failure("runtime", "the worker could not handle the request");
    },
  },
  async (req) => {
    if (new URL(req.url).pathname === "/_hoody/settle") {
      await Promise.allSettled(pending);
      pending = [];
      const out = { console: logs, truncated };
      logs = [];
      logBytes = 0;
      truncated = false;
      return Response.json(out);
    }
    if (handler === null) return failure("not_loaded", "no script is loaded in this worker yet");
    return await invoke(req, handler);
  },
);

// What the first invocation of a fresh process would otherwise compile: measured
// 13-50 ms for the first Request with a body and 10-40 ms for the first TypeScript
// module (the parser's start-up), on this 2-core VM under load. No script code runs.
async function warmUp(): Promise<void> {
  const req = new Request("http://hoody.invalid/a?b=c", {
    method: "POST",
    headers: new Headers({ "content-type": "text/plain" }),
    body: "x",
  });
  await req.arrayBuffer();
  const res = new Response("x", { status: 200, headers: { "content-type": "text/plain" } });
  const headers = new Headers(res.headers);
  headers.set("x-hoody-console", encodeURIComponent(JSON.stringify({ console: [] })));
  await new Response(res.body, { status: res.status, headers }).arrayBuffer();
  Object.freeze({ ...JSON.parse('{"a":"b"}') });
  // A module nobody has parsed before (no cache entry), so the parser starts now.
  await import(`data:application/typescript,export default ${Math.random()} as number;`);
}

async function assignment(): Promise<{ url: string; display: string }> {
  const buf = new Uint8Array(8192);
  const decoder = new TextDecoder();
  let text = "";
  while (!text.includes("\n")) {
    const n = await Deno.stdin.read(buf);
    if (n === null) Deno.exit(0); // the supervisor went away before assigning a script
    text += decoder.decode(buf.subarray(0, n), { stream: true });
  }
  return JSON.parse(text.slice(0, text.indexOf("\n")));
}

if (mode === "spare") await warmUp();
({ url: scriptUrl, display: displayName } = await assignment());
try {
  const mod = await import(scriptUrl);
  const loaded = mod.default;
  if (loaded === null || typeof loaded !== "object" || typeof loaded.fetch !== "function") {
    throw new Error(
      `${displayName} has no handler; export one: ` +
        "export default { async fetch(request, env, ctx) { return new Response(\"hi\") } }",
    );
  }
  handler = loaded;
} catch (err) {
  tell(JSON.stringify({ load_error: where(err), name: err instanceof Error ? err.name : "Error" }));
  Deno.exit(3);
}
tell("ready");
