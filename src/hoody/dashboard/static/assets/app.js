// hoody fleet dashboard. Plain JS, no build step; plots by uPlot (vendored).
// Reads /dashboard/api/*, listens to /dashboard/events (server-sent events) and
// posts tenant actions with the page's CSRF token.
"use strict";

const CSRF = document.querySelector('meta[name="csrf"]').content;
const $ = (id) => document.getElementById(id);
const state = { summary: null, history: null, page: 1, pages: 1, ids: new Set(), plots: {} };

// formatting

function bytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (n >= 100 || i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}
function money(v, currency, digits) {
  if (v === null || v === undefined) return "–";
  const d = digits === undefined ? (v < 10 ? 2 : 0) : digits;
  if (/^[A-Z]{3}$/.test(currency)) {
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency,
        minimumFractionDigits: d, maximumFractionDigits: d }).format(v);
    } catch (e) { /* unknown code: plain number below */ }
  }
  return v.toFixed(d) + " " + currency;
}
function age(s) {
  if (s < 60) return Math.floor(s) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h";
  return Math.floor(s / 86400) + " d";
}
function num(n) { return (n || 0).toLocaleString(); }
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function api(path, options) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (r.status === 401) { location.reload(); throw new Error("session ended"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}

// headline and nodes

function setValue(id, text) {
  const e = $(id);
  if (e.textContent !== text) {
    const bump = e.textContent !== "–";
    e.textContent = text;
    if (bump) { e.classList.remove("bump"); void e.offsetWidth; e.classList.add("bump"); }
  }
}

function renderSummary(s) {
  const h = s.headline;
  const cur = h.currency;
  setValue("h-tenants", num(h.tenants));
  $("h-tenants").dataset.count = h.tenants;
  $("h-running").textContent = Object.entries(h.states).map(([k, v]) => num(v) + " " + k).join(" · ");
  setValue("h-nodes", num(h.nodes));
  $("h-nodes-up").textContent = h.nodes_up + " up" + (h.nodes - h.nodes_up ? " · " + (h.nodes - h.nodes_up) + " down" : "");
  setValue("h-bill", h.monthly_bill ? money(h.monthly_bill, cur, 0) : "–");
  $("h-bill-sub").textContent = h.bill_complete ? "sum of node costs, per month"
    : "set costs: hoody node set NODE --monthly-cost 29";
  setValue("h-cpt", h.cost_per_tenant ? money(h.cost_per_tenant, cur, h.cost_per_tenant < 1 ? 3 : 2) : "–");
  setValue("h-more", h.more_tenants === null ? "–" : "+" + num(h.more_tenants));
  $("h-more-sub").textContent = h.memory_per_tenant_bytes
    ? "at " + bytes(h.memory_per_tenant_bytes) + " per tenant today" : h.basis;
  $("h-more-sub").title = "basis: " + h.basis + "; keeps " + Math.round(h.reserve_fraction * 100) + "% of each node in reserve";
  $("tagline").replaceChildren(
    el("b", {}, num(h.tenants) + " tenants"), " on ", el("b", {}, h.nodes + (h.nodes === 1 ? " node" : " nodes")),
    h.monthly_bill ? " · one flat bill of " + money(h.monthly_bill, cur, 0) + "/month, no per-tenant meter" : "");
  renderNodes(s.nodes);
}

function meter(label, used, total, text, cls, second) {
  const pct = total ? Math.min(100, 100 * used / total) : 0;
  const track = el("div", { class: "track" }, el("div", { class: "fill " + (cls || "") }));
  track.firstChild.style.width = pct.toFixed(1) + "%";
  if (second) {
    const b = el("div", { class: "fill b" });
    b.style.width = (total ? Math.min(100 - pct, 100 * second / total) : 0).toFixed(1) + "%";
    track.append(b);
  }
  return el("div", { class: "meter" }, el("span", {}, label), track, el("span", { class: "txt" }, text));
}

function level(frac) { return frac > 0.9 ? "bad" : frac > 0.75 ? "warn" : ""; }

function renderNodes(nodes) {
  const box = $("nodes");
  box.replaceChildren(...nodes.map((n) => {
    const memFrac = n.memory_total_bytes ? n.memory_used_bytes / n.memory_total_bytes : 0;
    const diskUsed = n.disk_total_bytes - n.disk_free_bytes;
    return el("div", { class: "node", "data-node": n.name },
      el("header", {},
        el("span", { class: "name" }, n.name),
        el("span", { class: "pill " + n.state }, n.state),
        el("span", { class: "cost" }, n.monthly_cost === null ? "no cost set" : money(n.monthly_cost, n.currency, 0) + "/mo")),
      el("div", { class: "kv" },
        el("span", {}, el("b", { class: "n-tenants" }, num(n.tenants)), " tenants"),
        el("span", {}, el("b", {}, num(n.running)), " running"),
        el("span", {}, "load ", el("b", {}, n.load_1m.toFixed(2)), " / " + n.cpus + " CPUs")),
      meter("memory", n.memory_used_bytes, n.memory_total_bytes,
        bytes(n.memory_used_bytes) + " / " + bytes(n.memory_total_bytes), level(memFrac)),
      meter("CPU load", Math.min(n.load_1m, n.cpus), n.cpus, Math.round(100 * n.cpu_load) + "%", level(n.cpu_load)),
      meter("disk", n.disk_tenants_bytes, n.disk_total_bytes,
        bytes(diskUsed) + " / " + bytes(n.disk_total_bytes), level(n.disk_total_bytes ? diskUsed / n.disk_total_bytes : 0),
        n.disk_templates_bytes),
      el("div", { class: "kv" },
        el("span", { title: "the tenants' own bytes: each one's delta from its template" }, "own ", el("b", {}, bytes(n.disk_tenants_bytes))),
        el("span", { title: "template bytes the tenants read without owning (a full copy each would cost this)" }, "shared ", el("b", {}, bytes(n.disk_shared_bytes))),
        el("span", { title: "template versions on this node, stored once" }, "templates ", el("b", {}, bytes(n.disk_templates_bytes)))),
      el("div", { class: "kv" },
        el("span", { title: "/sys/kernel/mm/ksm/general_profit" }, "KSM profit ", el("b", {}, bytes(n.ksm_profit_bytes))),
        el("span", { title: "ksmd's CPU since the previous heartbeat, % of one CPU" }, "ksmd CPU ", el("b", {}, n.ksmd_cpu_percent.toFixed(1) + "%")),
        el("span", {}, "tenants use ", el("b", {}, bytes(n.tenant_memory_bytes)))),
      el("div", { class: "kv", title: "what placement would still put here, per template version" },
        ...(n.state === "up" ? n.estimates : []).slice(0, 3).map((e) =>
          el("span", {}, "room ", el("b", {}, "+" + num(e.further_tenants)), " " + e.template + " v" + e.version + " (" + e.limited_by + ")"))));
  }));
}

// plots

function plotSize(id) {
  const w = $(id).clientWidth || 600;
  return { width: w, height: 240 };
}

function drawPlots() {
  const hist = state.history;
  const s = state.summary;
  if (!hist) return;
  // The live point joins the recorded history, so the plots move with the counters.
  const at = hist.at.slice(), tenants = hist.tenants.slice();
  const byCount = new Map(hist.cost_by_count.tenants.map((t, i) => [t, hist.cost_by_count.cost_per_tenant[i]]));
  if (s) {
    at.push(s.at); tenants.push(s.headline.tenants);
    if (s.headline.cost_per_tenant) byCount.set(s.headline.tenants, s.headline.cost_per_tenant);
  }
  const counts = [...byCount.keys()].sort((a, b) => a - b);
  const cur = s ? s.headline.currency : "";
  const costData = [counts, counts.map((c) => byCount.get(c))];
  const timeData = [at, tenants];
  const axis = { stroke: "#6b7685", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e3e6eb" } };
  if (!state.plots.cost) {
    state.plots.cost = new uPlot({
      ...plotSize("plot-cost"),
      scales: { x: { time: false } },
      series: [{ label: "tenants" }, {
        label: "cost per tenant / month", stroke: "#4f46e5", width: 2,
        fill: "rgba(79,70,229,0.08)", points: { show: true, size: 5 },
        value: (u, v) => v === null || v === undefined ? "–" : money(v, cur, 3),
      }],
      axes: [{ ...axis, label: "tenants", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000] }, { ...axis, size: 64, values: (u, vals) => vals.map((v) => money(v, cur, v < 1 ? 2 : 0)) }],
      legend: { live: true },
    }, costData, $("plot-cost"));
    state.plots.tenants = new uPlot({
      ...plotSize("plot-tenants"),
      series: [{}, { label: "tenants", stroke: "#16a34a", width: 2, fill: "rgba(22,163,74,0.08)" }],
      axes: [axis, { ...axis, size: 56 }],
    }, timeData, $("plot-tenants"));
  } else {
    state.plots.cost.setData(costData);
    state.plots.tenants.setData(timeData);
  }
}

window.addEventListener("resize", () => {
  for (const [id, p] of [["plot-cost", state.plots.cost], ["plot-tenants", state.plots.tenants]]) {
    if (p) p.setSize(plotSize(id));
  }
});

// tenants table

function filters() {
  const p = new URLSearchParams();
  const set = (k, v) => { if (v) p.set(k, v); };
  set("q", $("f-q").value.trim());
  set("node", $("f-node").value);
  set("template", $("f-template").value);
  set("state", $("f-state").value);
  set("sort", $("f-sort").value);
  const meta = $("f-meta").value.trim();
  if (meta.includes("=")) p.append("metadata", meta);
  p.set("page", state.page);
  p.set("per_page", 50);
  return p;
}

function fillChoices(select, values) {
  const keep = select.value;
  const first = select.options[0];
  select.replaceChildren(first, ...values.map((v) => el("option", { value: v }, v)));
  select.value = values.includes(keep) ? keep : "";
}

function renderTenants(page) {
  state.pages = page.pages;
  $("t-total").textContent = num(page.total) + " shown by these filters";
  $("p-info").textContent = "page " + page.page + " of " + page.pages;
  $("p-prev").disabled = page.page <= 1;
  $("p-next").disabled = page.page >= page.pages;
  fillChoices($("f-node"), page.choices.nodes);
  fillChoices($("f-template"), page.choices.templates);
  const seen = state.ids;
  state.ids = new Set(page.items.map((t) => t.id));
  $("t-body").replaceChildren(...page.items.map((t) => row(t, seen.size && !seen.has(t.id))));
}

let loading = null, again = false;
async function loadTenants() {
  if (loading) { again = true; return loading; }
  loading = (async () => {
    try {
      renderTenants(await api("/dashboard/api/tenants?" + filters()));
    } catch (e) {
      $("t-total").textContent = e.message;
    }
  })();
  await loading;
  loading = null;
  if (again) { again = false; await loadTenants(); }
}

function used(bytesUsed, limitMib, what) {
  const limit = bytes(limitMib * 1048576);
  if (bytesUsed === null || bytesUsed === undefined) {
    return el("td", { title: what + ": not reported yet; limit " + limit }, el("span", { class: "muted" }, "– / " + limit));
  }
  return el("td", { title: what + " as its node last reported, of its limit" }, bytes(bytesUsed), el("span", { class: "muted" }, " / " + limit));
}

function row(t, fresh) {
  const actions = el("td", { class: "actions" });
  const live = t.state !== "deleted" && t.state !== "deleting" && t.state !== "creating";
  if (live) {
    actions.append(el("button", { type: "button", "data-act": "open", "data-id": t.id, title: "mint a claim and open the tenant" }, "open"));
    if (t.state === "running") actions.append(el("button", { type: "button", "data-act": "stop", "data-id": t.id }, "stop"));
    else actions.append(el("button", { type: "button", "data-act": "start", "data-id": t.id }, "start"));
    actions.append(el("button", { type: "button", class: "danger", "data-act": "delete", "data-id": t.id }, "delete"));
  }
  const meta = Object.entries(t.metadata || {}).map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v))).join(" ");
  return el("tr", { class: fresh ? "new" : "", "data-id": t.id },
    el("td", { class: "id" }, t.id),
    el("td", {}, t.node),
    el("td", {}, t.template + " v" + t.version),
    el("td", {}, el("span", { class: "pill " + t.state }, t.state)),
    used(t.memory_bytes, t.memory_mib, "memory"),
    used(t.disk_bytes, t.disk_mib, "own disk bytes"),
    el("td", {}, age(t.age_seconds)),
    el("td", { class: "meta", title: meta }, meta),
    actions);
}

async function act(verb, cid) {
  if (verb === "delete") {
    $("confirm-text").textContent = "Delete tenant " + cid + "? Its files, database, logs and network go with it.";
    $("confirm").returnValue = "";
    $("confirm").showModal();
    const ok = await new Promise((resolve) => $("confirm").addEventListener("close", () => resolve($("confirm").returnValue === "ok"), { once: true }));
    if (!ok) return;
  }
  const win = verb === "open" ? window.open("about:blank", "_blank") : null;
  try {
    const out = await api("/dashboard/api/tenants/" + encodeURIComponent(cid) + "/" + verb, {
      method: "POST", headers: { "X-CSRF-Token": CSRF },
    });
    if (win) win.location = out.url;
  } catch (e) {
    if (win) win.close();
    alert(verb + " " + cid + ": " + e.message);
  }
  loadTenants();
}

$("t-body").addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-act]");
  if (b) act(b.dataset.act, b.dataset.id);
});
let typing;
$("filters").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { state.page = 1; loadTenants(); }, 200); });
$("filters").addEventListener("submit", (ev) => ev.preventDefault());
$("p-prev").addEventListener("click", () => { if (state.page > 1) { state.page--; loadTenants(); } });
$("p-next").addEventListener("click", () => { if (state.page < state.pages) { state.page++; loadTenants(); } });

// live feed

function connect() {
  const es = new EventSource("/dashboard/events");
  es.addEventListener("open", () => $("live").className = "live on");
  es.addEventListener("error", () => $("live").className = "live off");
  es.addEventListener("logout", () => location.reload());
  es.addEventListener("fleet", (ev) => {
    const s = JSON.parse(ev.data);
    const before = state.summary;
    state.summary = s;
    renderSummary(s);
    const moved = !before || JSON.stringify(before.headline.states) !== JSON.stringify(s.headline.states)
      || before.headline.tenants !== s.headline.tenants;
    if (moved) { loadTenants(); drawPlots(); }
  });
}

function start() {
  // The page came with its first data (a JSON block, not code): draw it at once; the
  // live feed and the filters fetch what changes later.
  const first = JSON.parse($("first").textContent);
  state.summary = first.summary;
  state.history = first.history;
  renderSummary(first.summary);
  drawPlots();
  renderTenants(first.tenants);
  // Ready once the frame showing the data has been produced (a task after the next
  // animation frame): `hoody bench dashboard` reads this mark, the tests wait for
  // the attribute. The live feed connects after, so it never delays the first paint.
  requestAnimationFrame(() => setTimeout(() => {
    performance.mark("hoody-first-data");
    document.body.dataset.ready = "1";
    connect();
  }));
  // New history points are recorded about once a minute: fetch them now and then.
  setInterval(async () => { state.history = await api("/dashboard/api/history"); drawPlots(); }, 60000);
}

start();
