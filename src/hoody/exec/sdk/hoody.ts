// The hoody SDK for Exec scripts: `import { Hoody } from "hoody"`.
//
//   export default {
//     async fetch(request: Request, env: Env) {
//       const hoody = new Hoody(env);
//       const tenant = await hoody.copy("demo-app", { idempotencyKey: "evt_1" });
//       const { url } = await hoody.authorize(tenant.id);
//       return Response.redirect(url, 303);
//     },
//   };
//
// env.HOODY_API and env.HOODY_TOKEN (a short-lived token of the script's own project)
// are set for every invocation. Errors are thrown as HoodyError with the API's status,
// code and message. Plain fetch underneath: runs unchanged wherever fetch exists.

/** What every invocation's env carries, plus the project's secrets. */
export interface Env {
  HOODY_API: string;
  HOODY_TOKEN: string;
  HOODY_PROJECT: string;
  HOODY_SCRIPT: string;
  [secret: string]: string;
}

/** A container as a project sees it: where it runs (node, address, placement) is the
 * fleet operator's to know; `url` is the router's address of it. */
export interface Container {
  id: string;
  project_id: number;
  template: string;
  version: number;
  state: "creating" | "running" | "stopped" | "sleeping" | "failed" | "deleting" | "deleted" | string;
  url: string;
  limits: Record<string, unknown>;
  metadata: Record<string, unknown>;
  created_at: number;
  deleted_at: number | null;
}

export interface Claim {
  container_claim: string;
  expires_at: number;
  /** Send the customer here: the router exchanges the claim for a session, once. */
  url: string;
}

export interface Deleted {
  id: string;
  deleted: boolean;
  /** False when an earlier call already deleted it. */
  existed: boolean;
}

export interface Limits {
  cpu?: number;
  memory_mib?: number;
  pids?: number;
  disk_mib?: number;
}

export interface CopyOptions {
  /** Same key, same container: a retried webhook never makes a second tenant. */
  idempotencyKey?: string;
  metadata?: Record<string, unknown>;
  name?: string;
  version?: number;
  limits?: Limits;
  env?: Record<string, string>;
}

export interface ListOptions {
  /** Only containers whose metadata has all these key=value pairs. */
  metadata?: Record<string, string | number | boolean>;
  template?: string;
  state?: string;
}

export class HoodyError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "HoodyError";
  }
}

export class Hoody {
  readonly api: string;
  readonly #token: string;

  constructor(env: { HOODY_API: string; HOODY_TOKEN: string }) {
    if (!env?.HOODY_API || !env?.HOODY_TOKEN) {
      throw new HoodyError(0, "no_api", "new Hoody(env) needs env.HOODY_API and env.HOODY_TOKEN");
    }
    this.api = env.HOODY_API.replace(/\/+$/, "");
    this.#token = env.HOODY_TOKEN;
  }

  async #call<T>(method: string, path: string, body?: unknown, headers?: HeadersInit): Promise<T> {
    const res = await fetch(`${this.api}/api/v1${path}`, {
      method,
      headers: {
        authorization: `Bearer ${this.#token}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) {
      const err = (data as { error?: { code?: string; message?: string } }).error ?? {};
      throw new HoodyError(res.status, err.code ?? "error", err.message ?? res.statusText);
    }
    return data as T;
  }

  /** A new container from `template`, placed on the node with headroom. */
  copy(template: string, options: CopyOptions = {}): Promise<Container> {
    const { idempotencyKey, ...body } = options;
    return this.#call<Container>(
      "POST",
      `/containers/${encodeURIComponent(template)}/copy`,
      body,
      idempotencyKey ? { "idempotency-key": idempotencyKey } : undefined,
    );
  }

  /** A one-time claim URL that lets one customer into container `cid`. */
  authorize(cid: string, options: { ttlSeconds?: number } = {}): Promise<Claim> {
    const body = options.ttlSeconds ? { ttl_seconds: options.ttlSeconds } : {};
    return this.#call<Claim>("POST", `/containers/${encodeURIComponent(cid)}/authorize`, body);
  }

  /** Delete container `cid` and everything it had; deleting twice is harmless. */
  remove(cid: string): Promise<Deleted> {
    return this.#call<Deleted>("DELETE", `/containers/${encodeURIComponent(cid)}`);
  }

  get(cid: string): Promise<Container> {
    return this.#call<Container>("GET", `/containers/${encodeURIComponent(cid)}`);
  }

  /** Every container of the project that matches, oldest first (all pages). */
  async list(options: ListOptions = {}): Promise<Container[]> {
    const query = new URLSearchParams({ limit: "500" });
    for (const [k, v] of Object.entries(options.metadata ?? {})) query.append("metadata", `${k}=${v}`);
    if (options.template) query.set("template", options.template);
    if (options.state) query.set("state", options.state);
    const out: Container[] = [];
    for (;;) {
      const page = await this.#call<{ items: Container[]; next_cursor: string | null }>(
        "GET",
        `/containers?${query}`,
      );
      out.push(...page.items);
      if (!page.next_cursor) return out;
      query.set("cursor", page.next_cursor);
    }
  }
}
