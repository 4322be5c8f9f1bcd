// dbsentry console: a single-page app over /api/v1, no framework, no build step.
// Everything shown is built with DOM nodes and textContent (never innerHTML), so audit
// data -- statements, identities, comments -- cannot inject markup.
"use strict";

(() => {
  const TOKEN_KEY = "dbsentry.token";
  const THEME_KEY = "dbsentry.theme";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const FEED_MAX_ROWS = 300;

  const state = { token: null, me: null, cleanups: [], pending: null, pendingListeners: new Set() };

  // --- DOM helpers ----------------------------------------------------------------------

  function build(ns, tag, attrs, children) {
    const el = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.setAttribute("class", value);
      else if (key === "text") el.textContent = String(value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key === "value" && !ns) el.value = value;
      else if (key === "checked" && !ns) el.checked = Boolean(value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }
  const h = (tag, attrs, ...children) => build(null, tag, attrs, children);
  const s = (tag, attrs, ...children) => build(SVG_NS, tag, attrs, children);
  const $ = (id) => document.getElementById(id);

  function toast(message, error = false) {
    const el = $("toast");
    el.textContent = message;
    el.className = error ? "toast error" : "toast";
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, error ? 6000 : 3000);
  }

  // --- API ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, options = {}) {
    const headers = { Authorization: `Bearer ${state.token}`, Accept: "application/json" };
    const init = { method: options.method || "GET", headers, signal: options.signal };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const res = await fetch(`/api/v1${path}`, init);
    if (res.status === 401 && state.me) { signOut("Your session has ended. Sign in again."); }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
    if (!res.ok) {
      let detail = data && data.detail;
      if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
      throw new ApiError(res.status, detail || `${res.status} ${res.statusText}`);
    }
    return data;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
    const text = q.toString();
    return text ? `?${text}` : "";
  }

  // --- formatting -------------------------------------------------------------------------

  function fmtTime(iso, withDate) {
    if (!iso) return "–";
    const d = new Date(iso);
    const today = new Date();
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
    if (!withDate && d.toDateString() === today.toDateString()) return time;
    return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  function fmtAgo(iso) {
    if (!iso) return "never";
    const secs = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (secs < 60) return `${Math.floor(secs)}s ago`;
    if (secs < 3600) return `${Math.floor(secs / 60)}m ago`;
    if (secs < 86400) return `${Math.floor(secs / 3600)}h ago`;
    return `${Math.floor(secs / 86400)}d ago`;
  }

  const fmtNum = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "";
    if (ms < 1) return `${ms.toFixed(2)} ms`;
    if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
    return `${(ms / 1000).toFixed(2)} s`;
  }

  const DECISIONS = {
    allow: ["allow", "Allowed"],
    mask: ["mask", "Masked"],
    deny: ["deny", "Denied"],
    require_approval: ["pending", "Needs approval"],
    pending_approval: ["pending", "Pending approval"],
    pending: ["pending", "Pending"],
    approved: ["allow", "Approved"],
    denied: ["deny", "Denied"],
    expired: ["", "Expired"],
    revoked: ["", "Revoked"],
    withdrawn: ["", "Withdrawn"],
    used: ["allow", "Approved, used"],
  };

  // The policy may allow a read that the masking layer then masks: show it as masked.
  const shownDecision = (r) => (r.decision === "allow" && (r.masked_columns || []).length ? "mask" : r.decision);

  function badge(decision) {
    const [cls, label] = DECISIONS[decision] || ["", decision || "unknown"];
    return h("span", { class: `badge ${cls}`, title: decision || "" }, label);
  }

  function who(identity, kind) {
    return h("span", { class: "who" },
      h("a", { href: `#/search${query({ identity })}`, title: "Statements by this identity" }, identity || "?"),
      kind === "agent" ? h("span", { class: "kind-agent", title: "AI agent" }, "agent") : null);
  }

  const chips = (items, cls = "") => (items || []).map((t) => h("span", { class: `chip ${cls}` }, t));

  function sqlCell(text, full = false) {
    return h("code", { class: full ? "sql full" : "sql", title: full ? null : text }, text || "");
  }

  function empty(title, detail) {
    return h("div", { class: "empty" }, h("strong", {}, title), detail || "");
  }

  function card(title, sub, body, extra) {
    return h("section", { class: "card" },
      h("div", { class: "card-head" },
        h("div", {}, h("h2", {}, title), sub ? h("div", { class: "sub" }, sub) : null),
        extra || null),
      body);
  }

  function stat(label, value, cls = "") {
    const v = h("div", { class: "value" }, fmtNum(value));
    const el = h("div", { class: `stat ${cls}` }, h("div", { class: "label" }, label), v);
    el.set = (n) => { v.textContent = fmtNum(n); };
    return el;
  }

  const PALETTE = ["#6d5bd0", "#2f80ed", "#0ea5a4", "#e07b39", "#d64550", "#8a9a2b", "#c2499b", "#3f8f5a", "#b7791f", "#5b6b82"];
  function colorFor(name) {
    let x = 0;
    for (const ch of String(name)) x = (x * 31 + ch.charCodeAt(0)) >>> 0;
    return PALETTE[x % PALETTE.length];
  }

  function hasRole(...roles) { return state.me && state.me.roles.some((r) => roles.includes(r)); }

  // --- the live stream (Server-Sent Events over fetch, so the token stays in a header) ------

  function openStream(after, onEvent) {
    const ctrl = new AbortController();
    let last = after;
    let backoff = 1000;
    const status = $("stream-status");
    const setStatus = (cls, text) => {
      status.hidden = false;
      status.className = `pill ${cls}`;
      status.querySelector(".pill-text").textContent = text;
    };
    async function run() {
      while (!ctrl.signal.aborted) {
        try {
          const res = await fetch(`/api/v1/stream${query({ after: last })}`, {
            headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
            signal: ctrl.signal,
          });
          if (!res.ok || !res.body) throw new Error(`stream: ${res.status}`);
          setStatus("pill-live", "Live");
          backoff = 1000;
          const reader = res.body.getReader();
          const decoder = new TextDecoder();
          let buf = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += decoder.decode(value, { stream: true });
            let cut;
            while ((cut = buf.indexOf("\n\n")) >= 0) {
              const block = buf.slice(0, cut);
              buf = buf.slice(cut + 2);
              let event = "message";
              let id = null;
              const data = [];
              for (const line of block.split("\n")) {
                if (line.startsWith(":")) continue;
                const colon = line.indexOf(":");
                const field = colon < 0 ? line : line.slice(0, colon);
                const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
                if (field === "event") event = val;
                else if (field === "data") data.push(val);
                else if (field === "id") id = val;
              }
              if (id !== null && /^\d+$/.test(id)) last = Number(id);
              if (data.length) {
                try { onEvent(event, JSON.parse(data.join("\n"))); } catch (err) { console.error(err); }
              }
            }
          }
        } catch (err) {
          if (ctrl.signal.aborted) return;
        }
        if (ctrl.signal.aborted) return;
        setStatus("pill-warn", "Reconnecting");
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 15000);
      }
    }
    run();
    return () => { ctrl.abort(); status.hidden = true; };
  }

  // --- statement tables -----------------------------------------------------------------------

  function statementRow(r, opts = {}) {
    const outcome = h("td", { class: "num nowrap" });
    const fill = (row) => {
      outcome.replaceChildren();
      if (row.error) outcome.append(h("span", { class: "badge deny plain", title: row.error }, row.sqlstate || "error"));
      else if (row.rows !== null && row.rows !== undefined) outcome.append(`${fmtNum(row.rows)} ${row.rows === 1 ? "row" : "rows"}`);
      if (row.duration_ms !== null && row.duration_ms !== undefined) outcome.append(h("div", { class: "sub-line" }, fmtMs(row.duration_ms)));
    };
    fill(r);
    const masked = (r.masked_columns || []).length
      ? h("div", { class: "sub-line" }, "masked: ", chips(r.masked_columns)) : null;
    const tr = h("tr", { dataset: { id: r.id, seq: r.seq } },
      h("td", { class: "time", title: r.time }, fmtTime(r.time, opts.withDate)),
      opts.noIdentity ? null : h("td", { class: "nowrap" }, who(r.identity, r.identity_kind),
        h("div", { class: "sub-line" }, h("a", { href: `#/session/${encodeURIComponent(r.session_id)}`, title: "Open session" }, `session ${String(r.session_id || "").slice(0, 8)}`))),
      h("td", { class: "nowrap" }, r.connection || "–", h("div", { class: "sub-line" }, r.environment || "")),
      h("td", { class: "nowrap" }, badge(shownDecision(r)),
        (r.rules || []).length ? h("div", { class: "sub-line", title: r.rules.join(", ") }, r.rules.join(", ")) : null),
      h("td", {}, sqlCell(r.statement, opts.full), masked,
        (r.tables || []).length ? h("div", { class: "sub-line" }, chips(r.tables)) : null),
      outcome);
    tr.fill = fill;
    return tr;
  }

  function statementTable(opts = {}) {
    const tbody = h("tbody");
    const table = h("table", {},
      h("thead", {}, h("tr", {},
        h("th", {}, "Time"), opts.noIdentity ? null : h("th", {}, "Identity"), h("th", {}, "Connection"),
        h("th", {}, "Decision"), h("th", {}, "Statement"), h("th", { class: "num" }, "Outcome"))),
      tbody);
    return { el: h("div", { class: "table-wrap" }, table), tbody };
  }

  // A statement list with a "Load more" button driven by the API's cursor.
  function pagedStatements(pathFor, opts = {}) {
    const { el, tbody } = statementTable(opts);
    const more = h("button", { class: "btn btn-sm", type: "button" }, "Load more");
    const footer = h("div", { class: "load-more" }, more);
    const box = h("div", {}, el, footer);
    let cursor = null;
    let count = 0;
    async function load() {
      more.disabled = true;
      try {
        const page = await api(pathFor(cursor));
        for (const r of page.items) tbody.append(statementRow(r, opts));
        count += page.items.length;
        cursor = page.next_cursor;
        footer.hidden = cursor === null;
        if (count === 0) box.replaceChildren(empty(opts.emptyTitle || "No statements match", opts.emptyDetail || ""));
        if (opts.onLoad) opts.onLoad(count, page);
      } catch (err) {
        box.replaceChildren(h("div", { class: "form-error" }, err.message));
      } finally {
        more.disabled = false;
      }
    }
    more.addEventListener("click", load);
    load();
    return box;
  }

  // --- pages ------------------------------------------------------------------------------

  const pages = {};

  pages.live = async (view) => {
    const queue = state.me.features.approvals;
    const stats = {
      total: stat("Statements", 0, "accent"),
      allow: stat("Allowed", 0, "allow"),
      mask: stat("Masked", 0, "mask"),
      deny: stat("Denied", 0, "deny"),
      // With an approvals queue, the same number as the Approvals badge (one source: the
      // queue; a statement sent three times is one request); without one, the feed's count.
      held: queue ? stat("Awaiting review", state.pending ?? 0, "pending") : stat("Held for approval", 0, "pending"),
      sessions: stat("Live sessions", 0),
    };
    if (queue) {
      stats.held.id = "pending-requests";
      const onPending = (n) => stats.held.set(n);
      state.pendingListeners.add(onPending);
      state.cleanups.push(() => state.pendingListeners.delete(onPending));
    }
    view.append(
      h("div", { class: "stats-caption muted" }, queue
        ? "Statements in the feed below, by decision; requests awaiting review in the approvals queue."
        : "Statements in the feed below, by decision."),
      h("div", { class: "stats" }, Object.values(stats)));
    const counts = { total: 0, allow: 0, mask: 0, deny: 0, held: 0 };
    const count = (decision) => {
      counts.total += 1;
      const key = decision === "require_approval" || decision === "pending_approval" ? "held"
        : decision === "approved" ? "allow" : decision;
      if (key in counts) counts[key] += 1;
      for (const k of Object.keys(counts)) if (k !== "held" || !queue) stats[k].set(counts[k]);
    };
    const { el, tbody } = statementTable();
    const feedCard = card("Live activity", "Every statement as the proxy records it; new ones appear at the top.", h("div", { class: "card-body flush", id: "feed" }, el));
    view.append(feedCard);
    const byId = new Map();
    const placeholder = h("tr", { class: "placeholder" }, h("td", { colspan: "6" }, empty("Waiting for statements", "Statements run through dbsentry will appear here as they happen.")));

    let sessions = 0;
    try {
      const data = await api("/sessions?limit=1");
      sessions = data.live.length;
      stats.sessions.set(sessions);
    } catch { /* shown as 0 */ }

    let after = null;
    try {
      const page = await api("/statements?limit=50");
      for (const r of page.items) {
        const tr = statementRow(r);
        byId.set(r.id, tr);
        tbody.append(tr);
        count(shownDecision(r));
      }
      if (page.items.length) after = page.items[0].seq;
    } catch (err) {
      view.prepend(h("div", { class: "form-error" }, err.message));
    }
    if (!byId.size) tbody.append(placeholder);

    const stop = openStream(after, (event, data) => {
      if (event === "statement") {
        placeholder.remove();
        const tr = statementRow(data);
        tr.classList.add("row-new");
        byId.set(data.id, tr);
        tbody.prepend(tr);
        count(shownDecision(data));
        while (tbody.rows.length > FEED_MAX_ROWS) {
          const lastRow = tbody.rows[tbody.rows.length - 1];
          byId.delete(lastRow.dataset.id);
          lastRow.remove();
        }
      } else if (event === "completion") {
        const tr = byId.get(data.statement_id);
        if (tr) tr.fill(data);
      } else if (event === "session") {
        sessions += data.event === "opened" ? 1 : data.event === "closed" ? -1 : 0;
        stats.sessions.set(Math.max(0, sessions));
      } else if (event === "approval") {
        refreshPending();
      }
    });
    state.cleanups.push(stop);
  };

  // Where a live session runs: its node (with several nodes) and worker.
  function whereCell(s) {
    const worker = s.worker === undefined || s.worker === null ? "" : `worker ${s.worker}`;
    return state.me.features.nodes
      ? h("td", { class: "mono" }, s.node || "–", h("div", { class: "sub-line" }, worker))
      : h("td", { class: "mono" }, worker || "–");
  }

  // Workers of other nodes whose sessions are missing: said, not hidden.
  function unansweredNote(missing) {
    if (!missing || !missing.length) return null;
    const names = missing.map((m) => `${m.node} worker ${m.worker}${m.answered ? ` (${m.left_off} sessions left off)` : " (not answering)"}`);
    return h("div", { class: "card-body", role: "alert" },
      h("span", { class: "badge pending" }, "incomplete"), " Sessions not shown from: ", names.join(", "), ".");
  }

  pages.sessions = async (view) => {
    const data = await api("/sessions?limit=100");
    const liveRows = data.live.map((s) => h("tr", {},
      h("td", { class: "nowrap" }, who(s.identity, s.identity_kind)),
      whereCell(s),
      h("td", {}, s.connection || "–", h("div", { class: "sub-line" }, s.environment || "")),
      h("td", { class: "mono" }, s.client_addr || "–", h("div", { class: "sub-line" }, s.tls ? `TLS ${s.tls_version || ""}` : "no TLS")),
      h("td", {}, s.application_name || "–"),
      h("td", {}, h("span", { class: `badge ${s.txn_status === "idle" ? "" : "pending"}` }, s.txn_status || s.state || "–")),
      h("td", {}, h("a", { href: `#/session/${encodeURIComponent(s.session_id)}` }, "Statements →"))));
    view.append(card("Live sessions", `${data.live.length} open now${state.me.features.nodes ? " on every node" : ""}`,
      h("div", { class: "card-body flush" }, unansweredNote(data.unanswered), liveRows.length
        ? h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Identity"), h("th", {}, state.me.features.nodes ? "Node" : "Worker"), h("th", {}, "Connection"), h("th", {}, "Client"), h("th", {}, "Application"), h("th", {}, "State"), h("th", {}, ""))), h("tbody", {}, liveRows)))
        : empty("No open sessions", "Sessions appear here while clients are connected."))));
    const recentRows = data.recent.map((s) => h("tr", {},
      h("td", { class: "time" }, fmtTime(s.opened_at || s.closed_at, true)),
      h("td", { class: "nowrap" }, who(s.identity, s.identity_kind)),
      h("td", {}, s.connection || "–", h("div", { class: "sub-line" }, s.environment || "")),
      h("td", { class: "mono" }, s.client_addr || "–"),
      h("td", {}, s.live ? h("span", { class: "badge allow" }, "open") : h("span", { class: "badge plain" }, s.end_reason || "closed"),
        s.duration_ms ? h("div", { class: "sub-line" }, fmtMs(s.duration_ms)) : null),
      h("td", {}, h("a", { href: `#/session/${encodeURIComponent(s.session_id)}` }, "Statements →"))));
    view.append(card("Recent sessions", "From the audit trail",
      h("div", { class: "card-body flush" }, recentRows.length
        ? h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Opened"), h("th", {}, "Identity"), h("th", {}, "Connection"), h("th", {}, "Client"), h("th", {}, "Status"), h("th", {}, ""))), h("tbody", {}, recentRows)))
        : empty("No sessions recorded yet"))));
  };

  pages.nodes = async (view) => {
    const data = await api("/nodes");
    const yesNo = (ok, yes, no) => h("span", { class: `badge ${ok ? "allow" : "deny"}` }, ok ? yes : no);
    const rows = data.by_node.map((n) => h("tr", { dataset: { node: n.node } },
      h("td", { class: "mono" }, n.node, n.this_node ? h("div", { class: "sub-line" }, "this node") : null),
      h("td", { class: "mono" }, n.addresses.join(", ")),
      h("td", {}, String(n.workers.length), h("div", { class: "sub-line" }, n.workers.map((w) => `w${w}`).join(" "))),
      h("td", { class: "nowrap" }, n.heartbeat_age_seconds === null ? "–" : `${n.heartbeat_age_seconds.toFixed(1)} s ago`),
      h("td", {}, fmtNum(n.sessions)),
      h("td", {}, !n.answered
        ? yesNo(false, "", `not answering (${n.not_answering.map((w) => `w${w}`).join(" ")})`)
        : yesNo(n.ready, "ready", "not ready"),
        n.not_ready.length ? h("div", { class: "sub-line" }, n.not_ready.join(", ")) : null)));
    view.append(card("Nodes", `${data.by_node.length} live on this control plane; a node leaves the list when its heartbeat is older than control_plane.node_ttl_seconds`,
      h("div", { class: "card-body flush" }, rows.length
        ? h("div", { class: "table-wrap" }, h("table", { id: "nodes-table" }, h("thead", {}, h("tr", {}, h("th", {}, "Node"), h("th", {}, "Address"), h("th", {}, "Workers"), h("th", {}, "Last heartbeat"), h("th", {}, "Live sessions"), h("th", {}, "Readiness"))), h("tbody", {}, rows)))
        : empty("No live nodes", "The control plane lists none: is it reachable?"))));
  };

  pages.session = async (view, id) => {
    const s = await api(`/sessions/${encodeURIComponent(id)}`).catch((err) => {
      if (err.status === 404) return null;
      throw err;
    });
    setTitle(`Session ${id.slice(0, 12)}`);
    if (s) {
      view.append(card("Session", s.live ? "Open now" : "Closed",
        h("div", { class: "card-body" }, h("dl", { class: "kv" },
          h("dt", {}, "Identity"), h("dd", {}, who(s.identity, s.identity_kind)),
          h("dt", {}, "Connection"), h("dd", {}, `${s.connection || "–"} (${s.environment || "–"})`),
          h("dt", {}, "Client"), h("dd", {}, `${s.client_addr || "–"}${s.tls ? ` · TLS ${s.tls_version || ""}` : ""}`),
          h("dt", {}, "Application"), h("dd", {}, s.application_name || "–"),
          s.opened_at ? [h("dt", {}, "Opened"), h("dd", {}, fmtTime(s.opened_at, true))] : null,
          s.closed_at ? [h("dt", {}, "Closed"), h("dd", {}, `${fmtTime(s.closed_at, true)} · ${s.end_reason || ""} · ${fmtMs(s.duration_ms)}`)] : null,
          h("dt", {}, "Session id"), h("dd", { class: "mono" }, id))),
        s.live ? h("span", { class: "badge allow" }, "live") : null));
    }
    view.append(card("Statements in order", "As the client sent them",
      h("div", { class: "card-body flush" },
        pagedStatements((c) => `/sessions/${encodeURIComponent(id)}/statements${query({ cursor: c, limit: 100 })}`,
          { noIdentity: true, full: true, withDate: true, emptyTitle: "No statements in this session" }))));
  };

  const SEARCH_FIELDS = [
    ["identity", "Identity"], ["kind", "Kind", ["", "human", "agent"]], ["connection", "Connection"],
    ["environment", "Environment"], ["table", "Table"], ["run", "Agent run", null, "MCP run id"],
    ["decision", "Decision", ["", "allow", "mask", "deny", "require_approval", "pending_approval"]],
    ["since", "Since", null, "24h, 7d or ISO time"], ["until", "Until", null, "ISO time"],
    ["text", "Statement contains", null, "text", true],
  ];

  pages.search = async (view, _arg, params) => {
    const form = h("form", { class: "filters" });
    const inputs = {};
    for (const [name, label, options, placeholder, wide] of SEARCH_FIELDS) {
      const input = options
        ? h("select", { name }, options.map((o) => h("option", { value: o }, o || "any")))
        : h("input", { name, placeholder: placeholder || "", spellcheck: "false" });
      input.value = params.get(name) || "";
      inputs[name] = input;
      form.append(h("div", { class: `field${wide ? " wide" : ""}` }, h("label", {}, label), input));
    }
    form.append(h("div", { class: "actions" },
      h("button", { class: "btn btn-primary", type: "submit" }, "Search"),
      h("button", { class: "btn btn-ghost", type: "button", onclick: () => { location.hash = "#/search"; } }, "Clear")));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const q = {};
      for (const [k, input] of Object.entries(inputs)) if (input.value) q[k] = input.value;
      location.hash = `#/search${query(q)}`;
    });
    view.append(card("Search the audit trail", "Every statement dbsentry has seen, newest first", h("div", { class: "card-body" }, form)));
    const filters = {};
    for (const [name] of SEARCH_FIELDS) if (params.get(name)) filters[name] = params.get(name);
    const summary = h("span", { class: "sub" });
    view.append(card("Results", null,
      h("div", { class: "card-body flush" },
        pagedStatements((c) => `/statements${query({ ...filters, cursor: c, limit: 50 })}`,
          { withDate: true, onLoad: (n, page) => { summary.textContent = `${fmtNum(n)} shown${page.next_cursor ? ", more available" : ""}`; } })),
      summary));
  };

  pages.blocked = async (view, _arg, params) => {
    const since = params.get("since") || "7d";
    const seg = segmented(["24h", "7d", "30d", "90d"], since, (v) => { location.hash = `#/blocked${query({ since: v })}`; });
    view.append(h("div", { class: "notice" },
      "Statements the policy refused. Each row names the rules that decided; ",
      h("a", { href: "#/policy" }, "explain a statement"), " to see why."));
    view.append(card("Blocked attempts", `Denied by policy in the last ${since}`,
      h("div", { class: "card-body flush" },
        pagedStatements((c) => `/statements${query({ decision: "deny", since, cursor: c, limit: 50 })}`,
          { withDate: true, emptyTitle: "Nothing was blocked", emptyDetail: "No statement was denied in this period." })),
      seg));
  };

  function segmented(values, current, onPick, labels) {
    return h("div", { class: "segmented", role: "group" }, values.map((v, i) =>
      h("button", { type: "button", class: v === current ? "on" : "", onclick: () => onPick(v) }, labels ? labels[i] : v)));
  }

  // approvals: field names differ between request kinds, so look for the usual ones
  const pick = (obj, ...keys) => { for (const k of keys) if (obj[k] !== undefined && obj[k] !== null) return obj[k]; return null; };
  const isoOf = (v) => (typeof v === "number" ? new Date(v * 1000).toISOString() : v);

  pages.approvals = async (view, _arg, params) => {
    const status = params.has("status") ? params.get("status") : "pending";
    const canReview = hasRole("admin", "reviewer") && state.me.features.review;
    const seg = segmented(["pending", "approved", "denied", ""], status,
      (v) => { location.hash = `#/approvals${query({ status: v || "all" })}`; }, ["Pending", "Approved", "Denied", "All"]);
    // An empty status asks for every request (query() would drop it, and the API's default is pending).
    const data = await api(`/approvals?status=${status === "all" ? "" : encodeURIComponent(status)}`);
    const queue = h("div", { class: "queue" });
    for (const r of data.items) queue.append(requestCard(r, canReview));
    view.append(card("Approval requests", "Statements held until a reviewer decides",
      h("div", { class: "card-body" }, data.items.length ? queue : empty(status === "pending" ? "No requests are waiting" : "No requests", "Requests appear here when a policy rule requires approval.")),
      seg));
    if (state.me.features.access_requests) {
      const reqs = await api("/access-requests").catch(() => ({ items: [] }));
      const rows = reqs.items.map((r) => h("tr", {},
        h("td", { class: "time" }, fmtTime(isoOf(pick(r, "requested_at", "created_at", "time")), true)),
        h("td", {}, who(pick(r, "requester", "identity"), pick(r, "requester_kind", "identity_kind"))),
        h("td", {}, r.access_group ? `group ${r.access_group}` : `connection ${pick(r, "connection") || "–"}`,
          r.validity_seconds ? h("div", { class: "sub-line" }, `for ${Math.round(r.validity_seconds / 3600)} h`) : null),
        h("td", {}, pick(r, "reason", "justification") || "–"),
        h("td", {}, badge(pick(r, "status", "state"))),
        h("td", {}, pick(r, "status") === "pending" && hasRole("admin", "reviewer") && pick(r, "requester") !== state.me.identity
          ? h("a", { href: `#/approval/${encodeURIComponent(r.id)}` }, "Review →") : null)));
      view.append(card("Access requests", "Temporary access asked for",
        h("div", { class: "card-body flush" }, rows.length
          ? h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Requested"), h("th", {}, "Identity"), h("th", {}, "Asks for"), h("th", {}, "Reason"), h("th", {}, "Status"), h("th", {}, ""))), h("tbody", {}, rows)))
          : empty("No access requests"))));
    }
  };

  function requestCard(r, canReview) {
    const id = pick(r, "id", "approval_id", "request_id");
    const status = pick(r, "status", "state", "event", "decision") || "pending";
    const comment = h("textarea", { placeholder: "Comment for the audit trail (optional)", maxlength: "4000" });
    const decide = async (approve) => {
      buttons.forEach((b) => { b.disabled = true; });
      try {
        await api(`/approvals/${encodeURIComponent(id)}/${approve ? "approve" : "deny"}`, { method: "POST", body: { comment: comment.value || null } });
        toast(approve ? "Approved" : "Denied");
        refreshPending();
        navigate();
      } catch (err) {
        toast(err.message, true);
        buttons.forEach((b) => { b.disabled = false; });
      }
    };
    const buttons = [
      h("button", { class: "btn btn-allow", type: "button", onclick: () => decide(true) }, "Approve"),
      h("button", { class: "btn btn-deny", type: "button", onclick: () => decide(false) }, "Deny"),
    ];
    const pendingNow = status === "pending" || status === "requested";
    const requester = pick(r, "requester", "identity");
    const own = requester === state.me.identity;
    const reason = pick(r, "reason", "justification");
    const reviews = r.reviews || [];
    return h("article", { class: "card request", dataset: { id } },
      h("div", {},
        h("div", { class: "actions" }, badge(status), who(requester, pick(r, "requester_kind", "identity_kind")),
          h("span", { class: "muted" }, `requested ${fmtAgo(isoOf(pick(r, "requested_at", "created_at", "time")))}`)),
        h("div", { class: "meta" },
          h("span", {}, "Connection ", h("b", {}, pick(r, "connection") || "–")),
          h("span", {}, "Environment ", h("b", {}, pick(r, "environment") || "–")),
          r.kind !== "access" ? h("span", { class: "risk" }, "Risk ", h("b", { class: `risk-${r.risk || "unknown"}` }, r.risk || "unknown")) : null,
          r.kind !== "access" ? h("span", { class: "tables" }, "Tables ", (r.tables || []).length ? chips(r.tables) : h("b", {}, "none")) : null,
          pick(r, "approvers") ? h("span", {}, "Approvers ", h("b", {}, [].concat(pick(r, "approvers")).join(", "))) : null,
          pick(r, "expires_at") ? h("span", {}, "Expires ", h("b", {}, fmtTime(isoOf(pick(r, "expires_at")), true))) : null,
          r.min_approvals > 1 ? h("span", {}, "Needs ", h("b", {}, `${r.min_approvals} approvals`)) : null,
          (r.rules || []).length ? h("span", {}, "Rule ", h("b", {}, r.rules.join(", "))) : null,
          h("span", { class: "mono muted" }, id)),
        r.message ? h("p", { class: "why muted" }, r.message) : null,
        reason || r.kind === "access" ? h("p", { class: "reason" }, reason ? `Requester's reason: “${reason}”` : "The requester gave no reason.") : null,
        reviews.length ? h("ul", { class: "reviews" }, reviews.map((v) => h("li", {},
          h("span", { class: v.approve ? "approved" : "denied" }, v.approve ? "✓ approved" : "✗ denied"),
          " by ", h("b", {}, v.reviewer), ` ${fmtAgo(isoOf(v.time))}`,
          v.reason ? h("span", { class: "comment" }, `: “${v.reason}”`) : h("span", { class: "muted" }, " (no comment)")))) : null),
      pendingNow && canReview && !own
        ? h("div", { class: "decide" }, comment, h("div", { class: "actions" }, buttons))
        : pendingNow && canReview && own
          ? h("div", { class: "muted own" }, `Your own request: another member of ${[].concat(pick(r, "approvers") || []).join(" or ")} reviews it.`)
          : h("div", {}),
      r.kind === "access"
        ? h("pre", { class: "mono" }, `access to ${r.access_group ? `group ${r.access_group}` : `connection ${r.connection}`}`)
        : h("pre", { class: "mono statement" }, pick(r, "statement", "sql") || "(no statement)"));
  }

  pages.approval = async (view, id) => {
    const r = await api(`/approvals/${encodeURIComponent(id)}`);
    setTitle(`Request ${id}`);
    const canReview = hasRole("admin", "reviewer") && state.me.features.review;
    view.append(h("div", { class: "queue" }, requestCard(r, canReview)),
      h("a", { href: "#/approvals" }, "← All requests"));
  };

  // --- data access ------------------------------------------------------------------------

  // Reads of pg_catalog and information_schema (psql's \d, drivers) are left out unless asked for.
  function catalogToggle(route, params, hidden) {
    const on = params.get("catalog") === "1";
    const box = h("input", { type: "checkbox", id: "show-catalog", checked: on, onchange: () => {
      const q = new URLSearchParams(params);
      if (box.checked) q.set("catalog", "1"); else q.delete("catalog");
      location.hash = `#/${route}${q.toString() ? `?${q}` : ""}`;
    } });
    return h("div", { class: "field check catalog-toggle" }, box,
      h("label", { for: "show-catalog" }, on ? "Catalog queries shown" : `Show catalog queries${hidden ? ` (${fmtNum(hidden)} hidden)` : ""}`));
  }

  pages.data = async (view, _arg, params) => {
    const since = params.get("since") || "7d";
    const kind = params.get("kind") || "";
    const catalog = params.get("catalog") === "1" ? "1" : "";
    const go = (q) => { location.hash = `#/data${query({ since, kind, catalog, ...q })}`; };
    const d = await api(`/data-access${query({ since, kind, include_catalog: catalog ? "true" : "" })}`);
    const controls = h("div", { class: "actions" },
      catalogToggle("data", params, d.catalog_statements),
      segmented(["", "human", "agent"], kind, (v) => go({ kind: v }), ["Everyone", "People", "Agents"]),
      segmented(["24h", "7d", "30d", "90d"], since, (v) => go({ since: v })));
    const touched = d.classified_statements ?? d.classes.reduce((n, c) => n + c.statements, 0);
    const masked = d.masked_statements ?? d.classes.reduce((n, c) => n + c.masked, 0);
    view.append(h("div", { class: "stats" },
      stat("Statements", d.statements, "accent"),
      stat("Identities", d.identities.length),
      stat("Reads of classified data", touched, "mask"),
      stat("Of which masked", masked, "allow"),
      stat("Refused attempts", d.identities.reduce((n, i) => n + (i.refused || 0), 0), "deny")));
    view.append(card("Who touches which data", `Identity → data class, last ${since}${d.truncated ? " (truncated)" : ""}; dashed: refused attempts`,
      h("div", { class: "card-body" }, d.links.length ? flowChart(d) : empty("No classified data was touched", "Statements that read columns classified as personal or secret data appear here.")),
      controls));
    view.append(h("div", { class: "grid-2" },
      card("By data class", "Statements touching each class; the filled part was masked",
        h("div", { class: "card-body" }, d.classes.length ? classBars(d.classes) : empty("No classified data"))),
      card("By identity", "Statements per identity, coloured by decision",
        h("div", { class: "card-body" }, d.identities.length ? identityBars(d.identities) : empty("No statements")))));
    const trees = d.identities.map((i) => h("details", { class: "tree" },
      h("summary", {}, who(i.identity, i.kind), h("span", { class: "muted" }, `${fmtNum(i.statements)} statements`),
        h("span", { class: "spacer" }), chips(Object.keys(i.classes), "cls")),
      h("div", { class: "tree-body" }, i.connections.map((c) => [
        h("div", { class: "tree-conn" }, c.connection),
        c.tables.map((t) => h("div", { class: "tree-table" },
          h("div", {}, h("span", { class: "mono" }, t.table), h("div", { class: "sub-line" }, `${fmtNum(t.statements)} statements`)),
          h("div", {}, t.columns.length ? t.columns.map((col) => h("span", { class: "chip", title: `${col.reads} reads${col.masked ? `, ${col.masked} masked` : ""}` },
            col.column, col.classes.length ? ` · ${col.classes.join(", ")}` : "", col.masked ? " ▣" : "")) : h("span", { class: "muted" }, "no columns recorded"),
          t.classes.length ? h("div", {}, chips(t.classes, "cls")) : null))),
      ]))));
    view.append(card("Details", "Identity → connection → table → column (▣ masked)",
      h("div", { class: "card-body flush" }, trees.length ? trees : empty("Nothing recorded in this period"))));
  };

  // A two-column flow diagram: identities on the left, data classes on the right, bands as
  // wide as the number of statements linking them.
  function flowChart(d) {
    const links = d.links.filter((l) => l.statements > 0);
    const kinds = new Map(d.links.map((l) => [l.identity, l.kind]));
    const ids = [...new Set(d.links.map((l) => l.identity))];
    const classes = d.classes.map((c) => c.class);
    const idTotal = new Map(ids.map((i) => [i, 0]));
    const clsTotal = new Map(classes.map((c) => [c, 0]));
    for (const l of links) { idTotal.set(l.identity, idTotal.get(l.identity) + l.statements); clsTotal.set(l.class, clsTotal.get(l.class) + l.statements); }
    const total = [...idTotal.values()].reduce((a, b) => a + b, 0) || 1;
    const W = 920, gap = 12, nodeW = 12, left = 190, right = W - 190;
    const height = Math.max(220, Math.max(ids.length, classes.length) * 44);
    const usable = (n) => height - gap * (n - 1);
    const scaleL = usable(ids.length) / total;
    const scaleR = usable(classes.length) / total;
    const place = (names, totals, scale) => {
      const pos = new Map();
      let y = 0;
      for (const n of names) { const hgt = Math.max(3, totals.get(n) * scale); pos.set(n, { y, h: hgt, used: 0 }); y += hgt + gap; }
      return pos;
    };
    const L = place(ids, idTotal, scaleL);
    const R = place(classes, clsTotal, scaleR);
    const svgEl = s("svg", { viewBox: `0 0 ${W} ${height + 10}`, role: "img", "aria-label": "Flows from identities to data classes" });
    const sorted = [...links].sort((a, b) => ids.indexOf(a.identity) - ids.indexOf(b.identity) || classes.indexOf(a.class) - classes.indexOf(b.class));
    for (const l of sorted) {
      const a = L.get(l.identity), b = R.get(l.class);
      const wl = l.statements * scaleL, wr = l.statements * scaleR;
      const y0 = a.y + a.used + wl / 2, y1 = b.y + b.used + wr / 2;
      a.used += wl; b.used += wr;
      const x0 = left + nodeW, x1 = right, mid = (x0 + x1) / 2;
      const path = s("path", { class: "flow", d: `M${x0},${y0 + 5} C${mid},${y0 + 5} ${mid},${y1 + 5} ${x1},${y1 + 5}`,
        stroke: colorFor(l.class), "stroke-width": Math.max(1.5, (wl + wr) / 2) });
      path.append(s("title", {}, `${l.identity} → ${l.class}: ${l.statements} statements, ${l.masked} masked`));
      svgEl.append(path);
    }
    for (const l of d.links.filter((x) => x.refused > 0)) {
      const a = L.get(l.identity), b = R.get(l.class);
      const y0 = a.y + a.h / 2 + 5, y1 = b.y + b.h / 2 + 5, x0 = left + nodeW, x1 = right, mid = (x0 + x1) / 2;
      const path = s("path", { class: "flow refused", d: `M${x0},${y0} C${mid},${y0} ${mid},${y1} ${x1},${y1}` });
      path.append(s("title", {}, `${l.identity} → ${l.class}: ${l.refused} refused attempts`));
      svgEl.append(path);
    }
    for (const [name, p] of L) {
      const agent = kinds.get(name) === "agent";
      svgEl.append(s("rect", { x: left, y: p.y + 5, width: nodeW, height: p.h, rx: 3, class: agent ? "node-agent" : "node-id" }));
      svgEl.append(s("text", { x: left - 10, y: p.y + 5 + p.h / 2 + (agent ? -2 : 4), "text-anchor": "end", class: "strong" }, name));
      if (agent) svgEl.append(s("text", { x: left - 10, y: p.y + 5 + p.h / 2 + 12, "text-anchor": "end", class: "small agent-label" }, "AI agent"));
    }
    for (const [name, p] of R) {
      svgEl.append(s("rect", { x: right, y: p.y + 5, width: nodeW, height: p.h, rx: 3, fill: colorFor(name) }));
      const info = d.classes.find((c) => c.class === name) || {};
      svgEl.append(s("text", { x: right + nodeW + 10, y: p.y + 5 + p.h / 2 + 4, class: "strong" }, name,
        s("tspan", { class: "small", dx: 6 }, fmtNum(clsTotal.get(name))),
        info.refused ? s("tspan", { class: "small refused-label", dx: 6 }, `${fmtNum(info.refused)} refused`) : null));
    }
    return h("div", { class: "chart" }, svgEl);
  }

  function hbars(rows, segmentsOf, legend) {
    const W = 560, rowH = 30, labelW = 190, barW = W - labelW - 60;
    const max = Math.max(1, ...rows.map((r) => segmentsOf(r).reduce((a, x) => a + x.value, 0)));
    const svgEl = s("svg", { viewBox: `0 0 ${W} ${rows.length * rowH + 6}`, role: "img" });
    rows.forEach((r, i) => {
      const y = i * rowH + 4;
      const segs = segmentsOf(r);
      const sum = segs.reduce((a, x) => a + x.value, 0);
      const label = String(r.label);
      const shown = label.length > 24 ? `${label.slice(0, 23)}…` : label;
      svgEl.append(s("text", { x: labelW - 10, y: y + 15, "text-anchor": "end", class: "strong" }, shown, s("title", {}, label)));
      svgEl.append(s("rect", { x: labelW, y: y + 3, width: barW, height: 16, rx: 4, class: "bar-bg" }));
      let x = labelW;
      for (const seg of segs) {
        const w = (seg.value / max) * barW;
        if (w <= 0) continue;
        const rect = s("rect", { x, y: y + 3, width: w, height: 16, rx: 4, fill: seg.color, "fill-opacity": seg.opacity || 1 });
        rect.append(s("title", {}, `${r.label}: ${seg.label} ${seg.value}`));
        svgEl.append(rect);
        x += w;
      }
      svgEl.append(s("text", { x: labelW + barW + 8, y: y + 15, class: "small" }, fmtNum(sum)));
    });
    return h("div", {}, h("div", { class: "chart" }, svgEl),
      legend ? h("div", { class: "legend" }, legend.map(([label, color]) => h("span", {}, h("i", { class: "swatch", dataset: { color } }), label))) : null);
  }

  function paintSwatches(root) {
    for (const el of root.querySelectorAll("i.swatch")) el.style.background = el.dataset.color;
  }

  function classBars(classes) {
    return hbars(classes.map((c) => ({ label: c.class, c })), (r) => [
      { label: "masked", value: r.c.masked, color: colorFor(r.c.class) },
      { label: "not masked", value: r.c.statements - r.c.masked, color: colorFor(r.c.class), opacity: 0.35 },
    ]);
  }

  function identityBars(ids) {
    const css = getComputedStyle(document.documentElement);
    const col = (v) => css.getPropertyValue(v).trim();
    const seg = (i, keys) => keys.reduce((n, k) => n + (i.decisions[k] || 0), 0);
    return hbars(ids.slice(0, 12).map((i) => ({ label: i.identity, i })), (r) => [
      { label: "allowed", value: seg(r.i, ["allow", "approved"]) - (r.i.masked_statements || 0), color: col("--allow") },
      { label: "masked", value: seg(r.i, ["mask"]) + (r.i.masked_statements || 0), color: col("--mask") },
      { label: "approval", value: seg(r.i, ["require_approval", "pending_approval"]), color: col("--pending") },
      { label: "denied", value: seg(r.i, ["deny"]), color: col("--deny") },
    ], [["allowed", col("--allow")], ["masked", col("--mask")], ["approval", col("--pending")], ["denied", col("--deny")]]);
  }

  // --- agents ----------------------------------------------------------------------------

  pages.agents = async (view, _arg, params) => {
    const since = params.get("since") || "7d";
    const catalog = params.get("catalog") === "1" ? "1" : "";
    const data = await api(`/agents${query({ since, include_catalog: catalog ? "true" : "" })}`);
    const hidden = data.items.reduce((n, a) => n + (a.catalog_statements || 0), 0);
    const liveBy = new Set(data.live.map((s) => s.identity));
    view.append(h("div", { class: "notice" },
      "AI agents connect with identities of kind ", h("b", {}, "agent"),
      ". Their statements are judged by the same policy, plus the rules written for agents."));
    const cards = data.items.map((a) => h("section", { class: "card" },
      h("div", { class: "card-head" },
        h("div", {}, h("h2", {}, who(a.identity, "agent")), h("div", { class: "sub" }, `last seen ${fmtAgo(a.last_seen)}`)),
        liveBy.has(a.identity) ? h("span", { class: "badge allow" }, "connected") : h("span", { class: "badge plain" }, "idle")),
      h("div", { class: "card-body" },
        h("div", { class: "mini-stats" },
          h("div", {}, h("b", {}, fmtNum(a.statements)), h("span", {}, "statements")),
          h("div", { class: a.refused ? "bad" : "" }, h("b", {}, fmtNum(a.refused)), h("span", {}, "refused")),
          h("div", {}, h("b", {}, fmtNum(a.sessions)), h("span", {}, "sessions")),
          h("div", { class: a.errors ? "bad" : "" }, h("b", {}, fmtNum(a.errors)), h("span", {}, "errors"))),
        h("div", { class: "facet" }, h("h3", {}, "Decisions"), h("div", { class: "actions" }, Object.entries(a.decisions).map(([k, v]) => h("span", {}, badge(k), ` ${v}`)))),
        h("div", { class: "facet" }, h("h3", {}, "Tables"), Object.keys(a.tables).length ? chips(Object.keys(a.tables)) : h("span", { class: "muted" }, "none")),
        h("div", { class: "facet" }, h("h3", {}, "Data classes"), Object.keys(a.classes).length ? chips(Object.keys(a.classes), "cls") : h("span", { class: "muted" }, "none")),
        h("a", { href: `#/search${query({ identity: a.identity })}` }, "All statements →"))));
    view.append(card("Agents", `Activity in the last ${since}`,
      h("div", { class: "card-body" }, cards.length ? h("div", { class: "grid-3" }, cards) : empty("No agent activity", "Create an agent token with dbsentry token create --agent.")),
      h("div", { class: "actions" }, catalogToggle("agents", params, hidden),
        segmented(["24h", "7d", "30d"], since, (v) => { location.hash = `#/agents${query({ since: v, catalog })}`; }))));
    view.append(card("Recent agent statements", null, h("div", { class: "card-body flush" },
      pagedStatements((c) => `/statements${query({ kind: "agent", cursor: c, limit: 25 })}`, { withDate: true, emptyTitle: "No agent statements" }))));
  };

  // --- policy ----------------------------------------------------------------------------

  pages.policy = async (view) => {
    const p = await api("/policy");
    const own = p.rules.filter((r) => !r.baseline);
    view.append(h("div", { class: "stats" },
      stat("Rules", own.length, "accent"), stat("Baseline rules", p.rules.length - own.length),
      h("div", { class: "stat" }, h("div", { class: "label" }, "Default"), h("div", { class: "value" }, badge(p.default))),
      h("div", { class: "stat" }, h("div", { class: "label" }, "Version"), h("div", { class: "value mono" }, p.version))));

    const conn = h("select", { name: "connection" }, state.me.connections.map((c) => h("option", { value: c.name }, `${c.name} (${c.environment})`)));
    const sql = h("textarea", { name: "sql", placeholder: "DELETE FROM orders", required: true, spellcheck: "false" });
    const ident = h("input", { name: "identity", value: state.me.identity, required: true });
    const groups = h("input", { name: "groups", placeholder: "dba, analysts" });
    const agent = h("input", { type: "checkbox", id: "explain-agent" });
    const result = h("div");
    const form = h("form", {},
      h("div", { class: "field" }, h("label", {}, "SQL"), sql),
      h("div", { class: "filters" },
        h("div", { class: "field" }, h("label", {}, "Identity"), ident),
        h("div", { class: "field" }, h("label", {}, "Groups"), groups),
        h("div", { class: "field" }, h("label", {}, "Connection"), conn),
        h("div", { class: "field check" }, agent, h("label", { for: "explain-agent" }, "AI agent")),
        h("div", { class: "actions" }, h("button", { class: "btn btn-primary", type: "submit" }, "Explain"))),
      result);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      result.replaceChildren(h("div", { class: "loading" }, "Evaluating…"));
      try {
        const r = await api("/policy/explain", { method: "POST", body: {
          sql: sql.value, identity: ident.value, connection: conn.value, agent: agent.checked,
          groups: groups.value.split(",").map((g) => g.trim()).filter(Boolean) } });
        result.replaceChildren(explainResult(r));
      } catch (err) { result.replaceChildren(h("div", { class: "form-error" }, err.message)); }
    });
    view.append(h("div", { class: "grid-2" },
      card("Explain a statement", "What the policy would decide, and which rules decided", h("div", { class: "card-body" }, form)),
      card("Check a policy", "Validate a policy text before deploying it", h("div", { class: "card-body" }, checkForm(p.text)))));

    const rows = p.rules.map((r) => h("tr", {},
      h("td", { class: "mono nowrap" }, r.name, r.baseline ? h("div", { class: "sub-line" }, "baseline") : null),
      h("td", {}, badge(r.action)),
      h("td", {}, r.description || r.message || "", h("div", { class: "sub-line mono" }, matchText(r.match, r.unless))),
      h("td", {}, r.approvers ? r.approvers.join(", ") : "")));
    view.append(card("Rules", "In evaluation order; the baseline protects production by default",
      h("div", { class: "card-body flush" }, h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Rule"), h("th", {}, "Action"), h("th", {}, "What it matches"), h("th", {}, "Approvers"))),
        h("tbody", {}, rows))))));
    if (p.text !== null) view.append(card("Policy source", p.source, h("div", { class: "card-body flush" }, h("pre", { class: "source mono" }, p.text))));
  };

  function matchText(match, unless) {
    const part = (m) => Object.entries(m || {}).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(", ") : JSON.stringify(v)}`).join(" · ");
    const text = part(match) || "every statement";
    return unless && Object.keys(unless).length ? `${text}  unless ${part(unless)}` : text;
  }

  function explainResult(r) {
    const d = r.decision;
    const cls = (DECISIONS[d.action] || [""])[0];
    const facts = (r.statements || []).map((st) => h("dl", { class: "kv" },
      h("dt", {}, "Command"), h("dd", {}, `${st.facts.command} (${st.facts.class}), risk ${st.facts.risk}`),
      h("dt", {}, "Tables"), h("dd", {}, chips([...st.facts.tables_read, ...st.facts.tables_written])),
      st.facts.columns_read.length ? [h("dt", {}, "Columns"), h("dd", {}, chips(st.facts.columns_read))] : null,
      st.facts.flags.length ? [h("dt", {}, "Flags"), h("dd", {}, chips(st.facts.flags))] : null,
      h("dt", {}, "Decision"), h("dd", {}, badge(st.decision.action), " ", (st.decision.rules || []).join(", "))));
    return h("div", { class: "explain", style: null },
      h("div", { class: `verdict stacked ${cls}` },
        h("div", { class: "verdict-line" }, h("span", { class: "big" }, (DECISIONS[d.action] || ["", d.action])[1]),
          h("span", {}, d.rules.length ? `by ${d.rules.join(", ")}` : "no rule matched: the default applies")),
        d.message ? h("div", { class: "verdict-msg" }, d.message) : null),
      r.parse_error ? h("div", { class: "form-error" }, r.parse_error) : null,
      facts);
  }

  function checkForm(text) {
    const area = h("textarea", { rows: 10, spellcheck: "false" });
    area.value = text || "version: 1\nrules: []\n";
    const out = h("div");
    const form = h("form", {}, area, h("div", { class: "actions" }, h("button", { class: "btn", type: "submit" }, "Check")), out);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const r = await api("/policy/check", { method: "POST", body: { text: area.value } });
        out.replaceChildren(r.ok
          ? h("div", { class: "verdict allow" }, h("span", { class: "big" }, "Valid"), `${r.rules} rules, version ${r.version}`)
          : h("div", { class: "verdict deny" }, h("span", { class: "big" }, "Invalid"), r.line ? `line ${r.line}: ${r.reason}` : r.reason));
      } catch (err) { out.replaceChildren(h("div", { class: "form-error" }, err.message)); }
    });
    return form;
  }

  // --- audit chain ------------------------------------------------------------------------

  pages.audit = async (view, _arg, params) => {
    // One chain per node's log (and the store's own, from before the log, if it has one).
    const v = await api(`/audit/verify${query({ fresh: params.get("fresh") ? "true" : "" })}`);
    const status = await api("/audit/status");
    const n = v.chains.length;
    view.append(h("section", { class: `card chain ${v.ok ? "ok" : "bad"}` },
      h("div", { class: "seal" }, v.ok ? "✓" : "!"),
      h("div", {},
        h("div", { class: "title" }, v.ok ? "Chain intact" : "Chain broken"),
        h("div", { class: "muted", id: "chain-summary" }, `${fmtNum(v.records)} records verified in ${n} ${n === 1 ? "chain" : "chains"} · ${v.valid_checkpoints} of ${v.checkpoints} signed checkpoints valid · checked ${fmtAgo(v.checked_at)}`),
        v.unsigned_tail ? h("div", { class: "muted" }, `${fmtNum(v.unsigned_tail)} records after the last signed checkpoint (chained, signed at the next checkpoint)`) : null),
      h("span", { class: "spacer" }),
      h("button", { class: "btn", type: "button", onclick: () => { location.hash = `#/audit?fresh=${Date.now()}`; } }, "Verify now")));
    if (!v.ok) {
      view.append(card("Problems", "The first one is where tampering or loss begins",
        h("ul", { class: "problems" }, v.problems.map((p) => h("li", {}, `${p.kind}${p.node ? ` in node ${p.node}` : ""}${p.seq !== null ? ` at record ${p.seq}` : ""}: ${p.message}`)))));
    }
    const w = status.writer;
    view.append(h("div", { class: "grid-2" },
      card("Chains", null, h("div", { class: "card-body" }, h("dl", { class: "kv", id: "chains" },
        n ? v.chains.map((c) => [
          h("dt", {}, c.name),
          h("dd", { class: "mono chain-verified" }, c.last_seq !== null ? `#${c.first_seq} … #${c.last_seq} (${fmtNum(c.records)} records), last signed ${c.last_checkpoint_seq !== null ? `#${c.last_checkpoint_seq}` : "none yet"}${c.ok ? "" : " · BROKEN"}` : "no records"),
        ]) : [h("dt", {}, "Chains"), h("dd", {}, "no records yet")]))),
      card("Writer", null, h("div", { class: "card-body" }, w ? h("dl", { class: "kv" },
        h("dt", {}, "Status"), h("dd", {}, w.healthy ? h("span", { class: "badge allow" }, "healthy") : h("span", { class: "badge deny" }, "failing")),
        w.last_error ? [h("dt", {}, "Last error"), h("dd", {}, w.last_error)] : null,
        h("dt", {}, "Durability"), h("dd", {}, w.durability),
        h("dt", {}, "Written"), h("dd", {}, `${fmtNum(w.stats.records)} records in ${fmtNum(w.stats.batches)} writes, ${fmtNum(w.stats.fsyncs)} fsyncs`),
        h("dt", {}, "Refused"), h("dd", {}, fmtNum(w.stats.refused)),
        h("dt", {}, "Dropped"), h("dd", {}, fmtNum(w.stats.dropped))) : empty("No writer in this process")))));
  };

  // --- identities and tokens ----------------------------------------------------------------

  pages.identities = async (view) => {
    const ids = await api("/identities");
    view.append(card("Identities", "People and agents holding dbsentry tokens",
      h("div", { class: "card-body flush" }, ids.items.length ? h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Identity"), h("th", {}, "Groups"), h("th", { class: "num" }, "Active tokens"), h("th", {}, "Last used"))),
        h("tbody", {}, ids.items.map((i) => h("tr", {},
          h("td", {}, who(i.identity, i.kind)), h("td", {}, chips(i.groups)), h("td", { class: "num" }, i.active_tokens), h("td", { class: "time" }, fmtAgo(i.last_used_at))))))) : empty("No tokens yet"))));
    if (!hasRole("admin")) return;
    const out = h("div");
    const f = {
      identity: h("input", { required: true, placeholder: "alice@example.com" }),
      groups: h("input", { placeholder: "dba, analysts" }),
      kind: h("select", {}, h("option", { value: "human" }, "person"), h("option", { value: "agent" }, "AI agent")),
      ttl: h("input", { value: "30d", placeholder: "8h, 30d; empty: never" }),
    };
    const form = h("form", {}, h("div", { class: "filters" },
      h("div", { class: "field" }, h("label", {}, "Identity"), f.identity),
      h("div", { class: "field" }, h("label", {}, "Groups"), f.groups),
      h("div", { class: "field" }, h("label", {}, "Kind"), f.kind),
      h("div", { class: "field" }, h("label", {}, "Expires after"), f.ttl),
      h("div", { class: "actions" }, h("button", { class: "btn btn-primary", type: "submit" }, "Create token"))), out);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const r = await api("/tokens", { method: "POST", body: {
          identity: f.identity.value, kind: f.kind.value, ttl: f.ttl.value || null,
          groups: f.groups.value.split(",").map((g) => g.trim()).filter(Boolean) } });
        out.replaceChildren(h("p", {}, "Copy this token now; it is not shown again:"), h("div", { class: "secret" }, r.token));
        loadTokens();
      } catch (err) { out.replaceChildren(h("div", { class: "form-error" }, err.message)); }
    });
    view.append(card("Create a token", "Tokens prove an identity to the proxy and to this console", h("div", { class: "card-body" }, form)));
    const tokensBody = h("div", { class: "card-body flush" });
    view.append(card("Tokens", "Secrets are never stored; revoke a token to end its use", tokensBody));
    async function loadTokens() {
      const t = await api("/tokens?include_revoked=true");
      tokensBody.replaceChildren(h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Id"), h("th", {}, "Identity"), h("th", {}, "Groups"), h("th", {}, "Created"), h("th", {}, "Expires"), h("th", {}, "Last used"), h("th", {}, ""))),
        h("tbody", {}, t.items.map((tok) => h("tr", {},
          h("td", { class: "mono" }, tok.id), h("td", {}, who(tok.identity, tok.kind)), h("td", {}, chips(tok.groups)),
          h("td", { class: "time" }, fmtTime(tok.created_at, true)), h("td", { class: "time" }, tok.expires_at ? fmtTime(tok.expires_at, true) : "never"),
          h("td", { class: "time" }, fmtAgo(tok.last_used_at)),
          h("td", {}, tok.revoked_at ? h("span", { class: "badge plain" }, "revoked") : !tok.active ? h("span", { class: "badge plain" }, "expired")
            : h("button", { class: "btn btn-deny btn-sm", type: "button", onclick: async () => {
              if (!confirm(`Revoke token ${tok.id} of ${tok.identity}?`)) return;
              try { await api(`/tokens/${tok.id}`, { method: "DELETE" }); toast("Token revoked"); loadTokens(); } catch (err) { toast(err.message, true); }
            } }, "Revoke"))))))));
    }
    loadTokens();
  };

  pages.classification = async (view) => {
    const data = await api("/classification");
    view.append(card("Classified columns", "Sensitive columns found in each connection's schema, and why",
      h("div", { class: "card-body flush" }, data.columns.length ? h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Connection"), h("th", {}, "Column"), h("th", {}, "Class"), h("th", {}, "Evidence"))),
        h("tbody", {}, data.columns.map((c) => h("tr", {},
          h("td", {}, c.connection), h("td", { class: "mono" }, `${c.schema}.${c.table}.${c.column}`),
          h("td", {}, h("span", { class: "chip cls" }, c.data_class)), h("td", { class: "muted" }, `${c.source || ""} ${c.evidence || ""}`))))))
        : empty("No classified columns yet", "Columns are classified when a connection is first used."))));
  };

  // --- navigation -------------------------------------------------------------------------

  // 16px stroke icons, drawn here so the console needs no icon font or image.
  const ICONS = {
    live: "M1 8h3l2-5 4 10 2-5h3",
    sessions: "M2 5h10l-3-3M14 11H4l3 3",
    nodes: "M2 2.5h12v4H2zM2 9.5h12v4H2zM4.5 4.5h.01M4.5 11.5h.01",
    search: "M7 12A5 5 0 1 0 7 2a5 5 0 0 0 0 10zM10.5 10.5 14 14",
    blocked: "M8 14.5A6.5 6.5 0 1 0 8 1.5a6.5 6.5 0 0 0 0 13zM3.5 3.5l9 9",
    approvals: "M8 14.5A6.5 6.5 0 1 0 8 1.5a6.5 6.5 0 0 0 0 13zM5 8.2l2 2 4-4.2",
    policy: "M4 1.5h5.5L13 5v9.5H4zM9 1.5V5h4M6.5 8.5h4M6.5 11h4",
    data: "M2 14V2M2 14h12M5 11V8M8 11V5M11 11V7",
    agents: "M4 5h8v8H4zM8 2v3M6 8.5h.01M10 8.5h.01M6 11h4M2 8v3M14 8v3",
    classification: "M2 2h6l6 6-6 6-6-6zM5 5h.01",
    audit: "M6.5 9.5a3 3 0 0 0 4.2 0l2.3-2.3a3 3 0 0 0-4.2-4.2L7.7 4.1M9.5 6.5a3 3 0 0 0-4.2 0L3 8.8A3 3 0 0 0 7.2 13l1.1-1.1",
    identities: "M8 8a3 3 0 1 0 0-6 3 3 0 0 0 0 6zM2.5 14.5c.6-2.8 2.8-4.5 5.5-4.5s4.9 1.7 5.5 4.5",
  };
  const icon = (name) => s("svg", { viewBox: "0 0 16 16", width: 16, height: 16, class: "icon", "aria-hidden": "true" },
    s("path", { d: ICONS[name] || "", fill: "none", stroke: "currentColor", "stroke-width": 1.5, "stroke-linecap": "round", "stroke-linejoin": "round" }));

  const NAV = [
    { group: "Monitor" },
    { route: "live", label: "Live activity", icon: "◉", roles: ["admin", "auditor", "reviewer"] },
    { route: "sessions", label: "Sessions", icon: "⇄", roles: ["admin", "auditor", "reviewer"] },
    { route: "nodes", label: "Nodes", icon: "▤", roles: ["admin", "auditor", "reviewer"], feature: "nodes" },
    { route: "search", label: "Search", icon: "⌕", roles: ["admin", "auditor", "reviewer"] },
    { route: "blocked", label: "Blocked attempts", icon: "⊘", roles: ["admin", "auditor", "reviewer"] },
    { group: "Govern" },
    { route: "approvals", label: "Approvals", icon: "✓", roles: ["admin", "auditor", "reviewer"], feature: "approvals" },
    { route: "policy", label: "Policy", icon: "§", roles: ["admin", "auditor", "reviewer"], feature: "policy" },
    { group: "Data" },
    { route: "data", label: "Data access", icon: "▦", roles: ["admin", "auditor"] },
    { route: "agents", label: "Agents", icon: "◈", roles: ["admin", "auditor"] },
    { route: "classification", label: "Classification", icon: "◧", roles: ["admin", "auditor"], feature: "classification" },
    { group: "Trust" },
    { route: "audit", label: "Audit chain", icon: "⛓", roles: ["admin", "auditor"] },
    { route: "identities", label: "Identities", icon: "☺", roles: ["admin", "auditor"] },
  ];
  const TITLES = Object.fromEntries(NAV.filter((n) => n.route).map((n) => [n.route, n.label]));
  TITLES.session = "Session";
  TITLES.approval = "Approval request";
  const ROUTE_ALIASES = { session: "sessions", approval: "approvals" };

  const allowed = (item) => hasRole(...item.roles) && (!item.feature || state.me.features[item.feature]);

  function renderNav() {
    const nav = $("nav");
    nav.replaceChildren();
    let pendingGroup = null;
    for (const item of NAV) {
      if (item.group) { pendingGroup = h("div", { class: "nav-group" }, item.group); continue; }
      if (!allowed(item)) continue;
      if (pendingGroup) { nav.append(pendingGroup); pendingGroup = null; }
      const link = h("a", { href: `#/${item.route}`, dataset: { route: item.route } },
        icon(item.route), item.label);
      if (item.route === "approvals") { state.pendingBadge = h("span", { class: "count", hidden: true }); link.append(state.pendingBadge); }
      nav.append(link);
    }
  }

  async function refreshPending() {
    if (!state.pendingBadge || !state.me.features.approvals) return;
    try {
      const data = await api("/approvals?status=pending");
      state.pending = data.items.length;
      state.pendingBadge.textContent = state.pending;
      state.pendingBadge.hidden = state.pending === 0;
      for (const fn of state.pendingListeners) fn(state.pending);
    } catch { /* the badge stays as it was */ }
  }

  // Signed in, but no console role: say which groups give which role.
  function noRole() {
    const groups = state.me.role_groups || {};
    const what = { admin: "everything, tokens included", reviewer: "approvals; sessions, statements, policy", auditor: "the audit trail, data access, agents" };
    return h("div", { class: "empty", id: "no-role" },
      h("strong", {}, "Your identity has no console role"),
      h("p", {}, `${state.me.identity} is in ${state.me.groups.length ? `the groups ${state.me.groups.join(", ")}` : "no group"}; roles come from these groups (web.roles in the configuration):`),
      h("ul", { class: "role-groups" }, Object.entries(groups).map(([role, names]) => h("li", {},
        h("b", {}, role), ` (${what[role] || role}): `, names.length ? names.join(", ") : "no group"))),
      h("p", {}, "Ask an admin for a token with one of these groups."));
  }

  function setTitle(text) { $("page-title").textContent = text; document.title = `${text} · dbsentry`; }

  async function navigate() {
    for (const fn of state.cleanups.splice(0)) fn();
    refreshPending(); // every page and the badge see the same queue
    const hash = location.hash.replace(/^#\/?/, "");
    const [path, qs] = hash.split("?");
    const [route, ...rest] = path.split("/");
    const first = NAV.find((n) => n.route && allowed(n));
    const name = route || (first && first.route);
    const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.route === (ROUTE_ALIASES[name] || name));
    const view = $("view");
    view.replaceChildren();
    const page = pages[name];
    const item = NAV.find((n) => n.route === (ROUTE_ALIASES[name] || name));
    if (!page || (item && !allowed(item))) {
      setTitle(state.me.roles.length ? "Not available" : "No console role");
      view.append(state.me.roles.length
        ? empty("This page is not available", "Your roles do not include it, or the feature is not configured.")
        : noRole());
      return;
    }
    setTitle(TITLES[name] || name);
    const params = new URLSearchParams(qs || "");
    try {
      await page(view, arg, params);
      paintSwatches(view);
    } catch (err) {
      view.append(h("div", { class: "form-error" }, err.message));
    }
  }

  // --- sign in / out ----------------------------------------------------------------------

  async function signIn(token) {
    state.token = token;
    const me = await api("/me");
    state.me = me;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login").hidden = true;
    $("shell").hidden = false;
    $("who-name").textContent = me.identity;
    $("who-roles").textContent = me.roles.length ? me.roles.join(" · ") : "no console role";
    $("policy-version").textContent = me.policy_version ? `policy ${me.policy_version}` : "";
    renderNav();
    const timer = setInterval(refreshPending, 30000);
    state.signOutHooks = [() => clearInterval(timer)];
    await navigate();
  }

  function signOut(message) {
    for (const fn of state.cleanups.splice(0)) fn();
    for (const fn of state.signOutHooks || []) fn();
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.me = null;
    $("shell").hidden = true;
    $("login").hidden = false;
    const err = $("login-error");
    err.hidden = !message;
    err.textContent = message || "";
    $("token-input").value = "";
    $("token-input").focus();
  }

  function applyTheme(theme) {
    const t = theme || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
    document.documentElement.dataset.theme = t;
  }

  document.addEventListener("DOMContentLoaded", () => {
    // Notifications link to /approvals/<id>: show that request.
    const direct = location.pathname.match(/^\/approvals\/([^/]+)$/);
    if (direct) history.replaceState(null, "", `/#/approval/${direct[1]}`);
    applyTheme(localStorage.getItem(THEME_KEY));
    $("theme-toggle").addEventListener("click", () => {
      const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
      localStorage.setItem(THEME_KEY, next);
      applyTheme(next);
      navigate();
    });
    $("logout").addEventListener("click", () => signOut());
    $("login-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const token = $("token-input").value.trim();
      const btn = e.target.querySelector("button");
      btn.disabled = true;
      try { await signIn(token); } catch (err) {
        state.me = null;
        signOut(err.status === 401 ? "That token is not valid, or it has expired or been revoked." : err.message);
      } finally { btn.disabled = false; }
    });
    window.addEventListener("hashchange", () => { if (state.me) navigate(); });
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved).catch(() => signOut()); else signOut();
  });
})();
