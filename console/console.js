// RootStream review console: makes the server-rendered page live.
//
// One EventSource (/console/events, every instance's inspection stream merged by the
// server) drives it: a snapshot toggles the `active` class on the chart's `[data-state]`
// nodes and updates the state text; transitions are added to the timeline. Anything the
// page has no element for yet (a new instance, a new actor) is re-fetched as a
// server-rendered fragment. Values from events are only ever set with textContent.
"use strict";

(function () {
  const PANELS_EVERY_MS = 5000;
  const TIMELINE_ROWS = 60;
  const live = document.querySelector("[data-live]");
  const connections = new Map();

  function setLive(text, state) {
    if (!live) return;
    live.textContent = text;
    live.dataset.state = state;
  }

  /** Active key paths of an XState state value (same rules as lib/charts.ts). */
  function activePaths(value) {
    const out = [];
    (function walk(v, prefix) {
      if (typeof v === "string") out.push(prefix ? prefix + "." + v : v);
      else if (v && typeof v === "object") {
        const entries = Object.entries(v);
        if (entries.length === 0 && prefix) out.push(prefix);
        for (const [key, inner] of entries) {
          const path = prefix ? prefix + "." + key : key;
          if (inner === undefined || inner === null) out.push(path);
          else walk(inner, path);
        }
      }
    })(value, "");
    return [...new Set(out)].sort();
  }

  function formatState(value) {
    if (value === undefined || value === null) return "—";
    if (typeof value === "string") return value;
    const paths = activePaths(value);
    return paths.length ? paths.join(", ") : JSON.stringify(value);
  }

  function formatValue(value) {
    let text = typeof value === "string" ? value : JSON.stringify(value);
    if (text === undefined) text = String(value);
    return text.length > 120 ? text.slice(0, 119) + "…" : text;
  }

  function timeEl(ms) {
    const el = document.createElement("time");
    const iso = new Date(ms).toISOString();
    el.dateTime = iso;
    el.textContent = iso.slice(11, 23);
    return el;
  }

  function sections() {
    return [...document.querySelectorAll("section[data-instance]")];
  }

  function sectionOf(instance) {
    return sections().find((s) => s.dataset.instance === instance) || null;
  }

  function byPath(root, selector, path) {
    return [...root.querySelectorAll(selector)].find((el) => el.dataset.path === path) || null;
  }

  function showConnection(instance) {
    const section = sectionOf(instance);
    const conn = section && section.querySelector("[data-conn]");
    if (!conn) return;
    const c = connections.get(instance);
    conn.textContent = !c ? "connecting" : c.connected ? "live" : "reconnecting: " + c.reason;
    conn.dataset.state = !c ? "connecting" : c.connected ? "live" : "down";
  }

  async function fetchHtml(url) {
    const res = await fetch(url, { headers: { accept: "text/html" } });
    if (res.status === 401) {
      // The session ended (expired, revoked, signed out elsewhere): sign in again.
      location.assign("/login?next=" + encodeURIComponent(location.pathname));
      throw new Error("signed out");
    }
    if (!res.ok) throw new Error(url + " answered " + res.status);
    const tpl = document.createElement("template");
    tpl.innerHTML = await res.text(); // server-rendered, every value escaped there
    return tpl.content;
  }

  // --- fragments --------------------------------------------------------------------

  const pendingInstances = new Map();
  function refreshInstance(instance, delay = 800) {
    if (pendingInstances.has(instance)) return;
    pendingInstances.set(
      instance,
      setTimeout(async () => {
        try {
          const frag = await fetchHtml(
            "/console/fragments/instance?id=" + encodeURIComponent(instance),
          );
          const fresh = frag.querySelector("section[data-instance]");
          const old = sectionOf(instance);
          if (fresh) {
            // Keep what the reader folded or unfolded.
            const open = old?.querySelector("details.actors-box")?.open;
            if (open === false) fresh.querySelector("details.actors-box")?.removeAttribute("open");
            if (old) old.replaceWith(fresh);
            else placeSection(fresh);
            rebuildNav();
          }
        } catch {
          // The instance may just have left; the next cluster event says so.
        } finally {
          pendingInstances.delete(instance);
          showConnection(instance);
        }
      }, delay),
    );
  }

  /** The header's links to each instance, after sections came or went. */
  function rebuildNav() {
    const nav = document.querySelector("[data-nav]");
    if (!nav) return;
    nav.replaceChildren(
      ...sections().map((s) => {
        const a = document.createElement("a");
        a.href = "#" + s.id;
        a.textContent = s.dataset.instance;
        return a;
      }),
    );
  }

  function placeSection(section) {
    const host = document.querySelector("[data-instances]");
    if (!host) return;
    host.querySelector(":scope > p.error")?.remove();
    // The serving instance comes first, the others by id, as the server orders them.
    const next = sections().find((s) =>
      !("self" in s.dataset) && s.dataset.instance > section.dataset.instance
    );
    if (next && next.parentNode === host) host.insertBefore(section, next);
    else host.appendChild(section);
  }

  let messagesTimer = null;
  function refreshMessages() {
    if (messagesTimer) return;
    messagesTimer = setTimeout(async () => {
      messagesTimer = null;
      const host = document.querySelector("[data-messages]");
      if (!host) return;
      try {
        host.replaceChildren(await fetchHtml("/console/fragments/messages"));
      } catch { /* kept as it was; retried on the next correlated transition */ }
    }, 600);
  }

  async function refreshPanels() {
    if (document.visibilityState === "hidden") return;
    const host = document.getElementById("panels");
    if (!host) return;
    try {
      host.replaceChildren(await fetchHtml("/console/fragments/panels"));
    } catch { /* kept as it was until the next round */ }
  }

  async function refreshAll() {
    const host = document.querySelector("[data-instances]");
    if (!host) return;
    try {
      host.replaceChildren(await fetchHtml("/console/fragments/instances"));
      for (const s of sections()) showConnection(s.dataset.instance);
    } catch { /* the next event tries again */ }
    refreshMessages();
  }

  // --- live state ---------------------------------------------------------------------

  function highlight(figure, view) {
    const active = view.status === "active" || view.status === "done"
      ? activePaths(view.state)
      : [];
    const on = new Set(active);
    const above = new Set();
    for (const p of active) {
      const keys = p.split(".");
      for (let i = 1; i < keys.length; i++) above.add(keys.slice(0, i).join("."));
    }
    for (const node of figure.querySelectorAll("[data-state]")) {
      const s = node.getAttribute("data-state");
      node.classList.toggle("active", on.has(s));
      node.classList.toggle("active-ancestor", !on.has(s) && above.has(s));
    }
    const svg = figure.querySelector(".chart svg");
    if (svg) {
      svg.setAttribute(
        "aria-label",
        "Statechart of " + view.id + ", current state " + formatState(view.state),
      );
    }
  }

  function setStatus(badge, status) {
    if (!badge) return;
    badge.textContent = status;
    const known = ["active", "done", "error", "stopped"].includes(status) ? status : "other";
    badge.className = "badge status-" + known;
  }

  function setSummary(list, summary) {
    if (!list) return;
    const entries = Object.entries(summary || {}).filter(([k]) => k !== "state").slice(0, 8);
    list.replaceChildren(...entries.map(([k, v]) => {
      const row = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = formatValue(v);
      dd.title = typeof v === "string" ? v : JSON.stringify(v);
      row.append(dt, dd);
      return row;
    }));
    list.hidden = entries.length === 0;
  }

  function applyView(instance, view) {
    const section = sectionOf(instance);
    if (!section) return refreshInstance(instance);
    if (view.path === "supervisor") {
      const state = section.querySelector("[data-supervisor-state]");
      const reason = section.querySelector("[data-supervisor-reason]");
      if (state) state.textContent = formatState(view.state).split(".").pop();
      if (reason && typeof view.summary?.reason === "string") {
        reason.textContent = view.summary.reason;
      }
    }
    const figure = byPath(section, "figure.actor", view.path);
    if (figure) {
      const text = formatState(view.state);
      const out = figure.querySelector("[data-actor-state]");
      if (out) out.textContent = text;
      setStatus(figure.querySelector("[data-status]"), view.status);
      setSummary(figure.querySelector("[data-summary]"), view.summary);
      highlight(figure, view);
      return;
    }
    const row = byPath(section, "tr[data-path]", view.path);
    if (row) {
      const cell = row.querySelector("[data-actor-state]");
      if (cell) cell.textContent = formatState(view.state);
      setStatus(row.querySelector("[data-status]"), view.status);
      return;
    }
    refreshInstance(instance); // an actor the page has not drawn yet
  }

  function reconcile(instance, actors) {
    for (const view of actors) applyView(instance, view);
  }

  function addTransition(instance, t) {
    const body = document.querySelector("[data-timeline]");
    if (!body) return;
    const key = instance + " " + t.seq;
    if ([...body.rows].some((r) => r.dataset.key === key)) return;
    // Identical transitions (periodic ones, like heartbeats) fold into the newest row.
    const sig = JSON.stringify([instance, t.path, t.event, t.state]);
    const same = [...body.rows].find((r) => r.dataset.sig === sig);
    if (same && Number(same.dataset.at) > t.at) return; // older than what is shown
    const count = same ? Number(same.dataset.count || 1) + 1 : 1;
    const since = same ? Number(same.dataset.since || same.dataset.at) : t.at;
    same?.remove();
    const row = document.createElement("tr");
    row.dataset.key = key;
    row.dataset.sig = sig;
    row.dataset.at = String(t.at);
    row.dataset.count = String(count);
    row.dataset.since = String(since);
    const cells = [timeEl(t.at), instance, t.path, null, formatState(t.state)];
    for (const content of cells) {
      const td = document.createElement("td");
      if (content === null) {
        const code = document.createElement("code");
        code.textContent = t.event;
        td.append(code);
        if (t.origin) {
          const from = document.createElement("span");
          from.className = "muted";
          from.textContent = " " + t.origin.kind + " from " + t.origin.from.instance + "/" +
            t.origin.from.actor;
          td.append(from);
        }
        if (count > 1) {
          const repeat = document.createElement("span");
          repeat.className = "repeat";
          repeat.title = "identical transitions folded into this row";
          repeat.append("×" + count + " since ", timeEl(since));
          td.append(" ", repeat);
        }
      } else if (typeof content === "string") td.textContent = content;
      else td.append(content);
      row.append(td);
    }
    if (!same) row.className = "fresh";
    const before = [...body.rows].find((r) => Number(r.dataset.at) <= t.at);
    body.insertBefore(row, before || null);
    while (body.rows.length > TIMELINE_ROWS) body.deleteRow(-1);
    document.querySelector("[data-timeline-empty]")?.remove();
    if (t.origin) refreshMessages();
  }

  function onCluster(data) {
    if (!data.members) return;
    const ids = data.members.map((m) => m.id);
    for (const s of sections()) {
      if (!ids.includes(s.dataset.instance)) {
        connections.delete(s.dataset.instance);
        s.remove();
      }
    }
    rebuildNav();
    for (const m of data.members) {
      const s = sectionOf(m.id);
      const roles = JSON.stringify(m.roles);
      if (!s) refreshInstance(m.id, 0);
      else if (s.dataset.roles !== undefined && s.dataset.roles !== roles) refreshInstance(m.id);
      if (s) s.dataset.roles = roles;
    }
    const count = document.querySelector("[data-instance-count]");
    if (count) {
      count.textContent = ids.length + " live instance" + (ids.length === 1 ? "" : "s");
    }
  }

  // --- wiring -------------------------------------------------------------------------

  function on(source, event, fn) {
    source.addEventListener(event, (e) => {
      let data;
      try {
        data = JSON.parse(e.data);
      } catch {
        return;
      }
      fn(data);
    });
  }

  function connect() {
    if (!("EventSource" in globalThis)) {
      return setLive("Static snapshot: no live updates here.", "off");
    }
    setLive("Connecting…", "connecting");
    const source = new EventSource("/console/events");
    source.onopen = () => setLive("Live: states update as they change.", "live");
    source.onerror = () => setLive("Connection lost; reconnecting…", "down");
    on(source, "upstream", (d) => {
      const was = connections.get(d.instance);
      connections.set(d.instance, { connected: d.connected, reason: d.reason || "" });
      showConnection(d.instance);
      // After a reconnect the instance's page section may be stale in more than states.
      if (d.connected && was && !was.connected) refreshInstance(d.instance);
    });
    on(source, "hello", (d) => {
      reconcile(d.instance, d.actors);
      for (const t of d.transitions.slice(-TIMELINE_ROWS)) addTransition(d.instance, t);
    });
    on(source, "snapshot", (d) => {
      applyView(d.instance, d.view);
      if (d.transition) addTransition(d.instance, d.transition);
    });
    on(source, "missed", (d) => reconcile(d.instance, d.actors));
    on(source, "cluster", onCluster);
    on(source, "resync", refreshAll);
  }

  connect();
  setInterval(refreshPanels, PANELS_EVERY_MS);
  document.addEventListener("visibilitychange", refreshPanels);
})();
