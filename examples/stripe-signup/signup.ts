// A Stripe webhook that gives each new customer their own container.
//
//   checkout.session.completed     → copy the template (the event id is the
//                                    Idempotency-Key: Stripe's retries make no second
//                                    tenant) → authorize → answer with the claim URL
//   customer.subscription.deleted  → delete that customer's tenant
//
// Deploy as scripts/<project>/signup.ts; set the endpoint's signing secret with
//   hoody secrets set 1 STRIPE_WEBHOOK_SECRET=whsec_...
// and optionally the template (default demo-app) with HOODY_TEMPLATE=....
import { Hoody } from "hoody";

interface Env {
  HOODY_API: string;
  HOODY_TOKEN: string;
  STRIPE_WEBHOOK_SECRET?: string;
  HOODY_TEMPLATE?: string;
}

interface StripeEvent {
  id: string;
  type: string;
  data: { object: Record<string, unknown> };
}

const TOLERANCE_SECONDS = 300;
const encoder = new TextEncoder();

function json(status: number, body: unknown): Response {
  return Response.json(body, { status });
}

function hex(bytes: ArrayBuffer): string {
  return [...new Uint8Array(bytes)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Equal-time string comparison: how long it takes says nothing about where they differ. */
function same(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/**
 * Stripe's scheme: `Stripe-Signature: t=<unix time>,v1=<hex>[,v1=<hex>…]`, each v1 an
 * HMAC-SHA256 of `<t>.<raw body>` under the endpoint secret (several while a secret
 * rotates), and t at most five minutes old. Returns why it fails, or null when it holds.
 */
export async function verifyStripeSignature(
  payload: string,
  header: string | null,
  secret: string,
  nowSeconds: number,
): Promise<string | null> {
  if (!header) return "no Stripe-Signature header";
  let timestamp = "";
  const signatures: string[] = [];
  for (const part of header.split(",")) {
    const [key, value] = part.trim().split("=", 2);
    if (key === "t") timestamp = value ?? "";
    if (key === "v1" && value) signatures.push(value);
  }
  if (!/^\d+$/.test(timestamp) || signatures.length === 0) {
    return "Stripe-Signature has no t=… or no v1=…";
  }
  // As Stripe's own libraries do: a replay window on old timestamps only.
  if (nowSeconds - Number(timestamp) > TOLERANCE_SECONDS) {
    return "Stripe-Signature timestamp is older than the 300 s tolerance";
  }
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const expected = hex(await crypto.subtle.sign("HMAC", key, encoder.encode(`${timestamp}.${payload}`)));
  return signatures.some((s) => same(s, expected)) ? null : "no v1 signature matches";
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    if (request.method !== "POST") return json(405, { error: "send Stripe events with POST" });
    const secret = env.STRIPE_WEBHOOK_SECRET;
    if (!secret) {
      return json(500, {
        error: "STRIPE_WEBHOOK_SECRET is not set: hoody secrets set <project> STRIPE_WEBHOOK_SECRET=whsec_…",
      });
    }
    const payload = await request.text(); // the raw body: the signature covers its bytes
    const problem = await verifyStripeSignature(
      payload,
      request.headers.get("stripe-signature"),
      secret,
      Date.now() / 1000,
    );
    if (problem) {
      console.warn("refused:", problem);
      return json(400, { error: problem });
    }
    const event = JSON.parse(payload) as StripeEvent;
    const hoody = new Hoody(env);
    const object = event.data?.object ?? {};

    if (event.type === "checkout.session.completed") {
      const customer = String(object.customer ?? object.customer_email ?? "");
      if (!customer) return json(400, { error: "the checkout session names no customer" });
      const tenant = await hoody.copy(env.HOODY_TEMPLATE ?? "demo-app", {
        idempotencyKey: event.id,
        metadata: { customer, stripe_event: event.id },
      });
      const claim = await hoody.authorize(tenant.id);
      console.log(`event ${event.id}: tenant ${tenant.id} for ${customer}`);
      return json(200, { tenant: tenant.id, customer, url: claim.url });
    }

    if (event.type === "customer.subscription.deleted") {
      const customer = String(object.customer ?? "");
      const tenants = await hoody.list({ metadata: { customer } });
      for (const tenant of tenants) await hoody.remove(tenant.id);
      console.log(`event ${event.id}: deleted ${tenants.length} tenant(s) of ${customer}`);
      return json(200, { deleted: tenants.map((t) => t.id), customer });
    }

    return json(200, { ignored: event.type });
  },
};
