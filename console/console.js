// RootStream review console: makes the server-rendered page live.
//
// One EventSource (/console/events, every instance's inspection stream merged by the
// server) drives it: a snapshot updates the actor's cell in the instances × actors matrix
// and, when that actor's chart is the one drawn, toggles the `active` class on the chart's
// `[data-state]` nodes; transitions are added to the timeline. Anything the page has no
// element for yet (a new instance, a new actor) is re-fetched as a server-rendered
// fragment. Clicking a cell fetches that actor's chart in place; the filter form filters
// in place. Values from events are only ever set with textContent.
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
    return [...document.querySelectorAll("tr[data-instance]")];
  }

  /** The matrix's column paths, in order. */
  function columnPaths() {
    return [...document.querySelectorAll("[data-matrix] thead th[data-path]")]
      .map((th) => th.dataset.path);
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
          const q = new URLSearchParams({ id: instance, columns: columnPaths().join(",") });
          const frag = await fetchHtml("/console/fragments/instance?" + q);
          const fresh = frag.querySelector("tr[data-instance]");
          const old = sectionOf(instance);
          if (fresh && "newColumns" in fresh.dataset) {
            refreshAll(); // it runs an actor the matrix has no column for
          } else if (fresh) {
            if (old) old.replaceWith(fresh);
            else placeSection(fresh);
            applyFilter();
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

  function placeSection(section) {
    const host = document.querySelector("[data-instances]");
    if (!host) return;
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
    const host = document.querySelector("[data-matrix-host]");
    if (!host) return;
    try {
      host.replaceChildren(
        await fetchHtml("/console/fragments/instances" + location.search),
      );
      wireFilters();
      for (const s of sections()) showConnection(s.dataset.instance);
    } catch { /* the next event tries again */ }
    refreshMessages();
  }

  // --- the matrix: filters and the chart of the picked cell ----------------------------

  function filterValues() {
    const form = document.querySelector("[data-filters]");
    if (!form) return { concern: "", state: "" };
    return {
      concern: form.elements.concern.value,
      state: form.elements.state.value.trim().toLowerCase(),
    };
  }

  /** The server's filter, in place: columns by concern, rows by state text. */
  function applyFilter() {
    const { concern, state } = filterValues();
    const heads = [...document.querySelectorAll("[data-matrix] thead th[data-path]")];
    const shownCols = new Set();
    for (const th of heads) {
      th.hidden = !!concern && th.dataset.concern !== concern;
      if (!th.hidden) shownCols.add(th.dataset.path);
    }
    const table = document.querySelector("[data-matrix]");
    if (table) table.classList.toggle("few", shownCols.size <= Number(table.dataset.fewColumns));
    let shown = 0;
    for (const row of sections()) {
      let any = false;
      for (const td of row.querySelectorAll("td[data-path]")) {
        td.hidden = !shownCols.has(td.dataset.path);
        const text = (td.dataset.stateText || "").toLowerCase();
        const match = !!state && !td.hidden && "stateText" in td.dataset && text.includes(state);
        td.classList.toggle("match", match);
        if (match) any = true;
      }
      row.hidden = !!state && !any;
      if (!row.hidden) shown++;
    }
    const count = document.querySelector("[data-shown]");
    if (count) count.textContent = shown + " instance" + (shown === 1 ? "" : "s") + " shown";
  }

  function wireFilters() {
    const form = document.querySelector("[data-filters]");
    if (!form || form.dataset.wired) return;
    form.dataset.wired = "1";
    const update = () => {
      applyFilter();
      const q = new URLSearchParams(location.search);
      const { concern } = filterValues();
      const state = form.elements.state.value.trim();
      if (concern) q.set("concern", concern);
      else q.delete("concern");
      if (state) q.set("state", state);
      else q.delete("state");
      const search = q.toString();
      history.replaceState(null, "", search ? "?" + search : location.pathname);
    };
    form.addEventListener("input", update);
    form.addEventListener("change", update);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      update();
    });
  }

  async function openChart(link) {
    const url = new URL(link.href);
    const host = document.querySelector("[data-chart-panel]");
    if (!host) return false;
    try {
      const frag = await fetchHtml("/console/fragments/chart" + url.search);
      const fresh = frag.querySelector("[data-chart-panel]");
      if (!fresh) return false;
      host.replaceWith(fresh);
      for (const a of document.querySelectorAll("[data-open-chart][aria-current]")) {
        a.removeAttribute("aria-current");
      }
      link.setAttribute("aria-current", "true");
      history.pushState(null, "", url.pathname + url.search + "#chart");
      document.getElementById("chart")?.scrollIntoView({ block: "start" });
      return true;
    } catch {
      return false;
    }
  }

  document.addEventListener("click", (ev) => {
    const link = ev.target instanceof Element && ev.target.closest("a[data-open-chart]");
    if (!link || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey) return;
    // A recorded moment is drawn by the server: the plain link keeps the moment.
    if (document.body.dataset.mode === "history") return;
    ev.preventDefault();
    openChart(link).then((ok) => {
      if (!ok) location.assign(link.href); // the plain link still works
    });
  });

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
    const row = sectionOf(instance);
    if (!row) return refreshInstance(instance);
    if (view.path === "supervisor") {
      const state = row.querySelector("[data-supervisor-state]");
      if (state) state.textContent = formatState(view.state).split(".").pop();
    }
    const panel = document.querySelector("[data-chart-panel][data-path]");
    if (panel && panel.dataset.instance === instance && panel.dataset.path === view.path) {
      const figure = panel.querySelector("figure.actor");
      if (figure) {
        const out = figure.querySelector("[data-actor-state]");
        if (out) out.textContent = formatState(view.state);
        setStatus(figure.querySelector("[data-status]"), view.status);
        setSummary(figure.querySelector("[data-summary]"), view.summary);
        highlight(figure, view);
      }
    }
    const cell = byPath(row, "td[data-path]", view.path);
    if (cell) {
      const text = formatState(view.state);
      cell.dataset.stateText = text;
      const out = cell.querySelector("[data-actor-state]");
      // One line, as the server draws it: the first active path and how many more.
      const paths = text.split(", ");
      if (out) out.textContent = paths.length > 1 ? paths[0] + " +" + (paths.length - 1) : text;
      else return refreshInstance(instance); // the actor was not there when drawn
      const link = cell.querySelector("a");
      if (link) {
        link.title = instance + " / " + view.path + ": " + view.status + ", " + text +
          ". Open its chart.";
      }
      setStatus(cell.querySelector("[data-status]"), view.status);
      const known = ["active", "done", "error", "stopped"].includes(view.status)
        ? view.status
        : "other";
      cell.className = cell.className.replace(/\bstatus-\S+/, "status-" + known);
      if (filterValues().state) applyFilter();
      return;
    }
    // Nested actors (a login's MFA challenge) have no column; a new top-level one does.
    if (view.path.split("/").length <= 2) refreshInstance(instance);
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

  wireFilters();
  // A recorded moment is not live: nothing may move it.
  if (document.body.dataset.mode === "history") {
    setLive("Recorded history: not live.", "off");
    return;
  }
  connect();
  setInterval(refreshPanels, PANELS_EVERY_MS);
  document.addEventListener("visibilitychange", refreshPanels);
})();
