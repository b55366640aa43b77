"use strict";
// pixelrelay dashboard. Every value from the API is put into the page with textContent or
// setAttribute on SVG geometry, never as markup: subjects, user agents and client names are
// chosen by whoever sends or opens mail.
//
// The admin token is asked once and kept in this tab's sessionStorage. A link may carry it in
// its fragment (#token=...): the page stores it and removes it from the address bar at once.
(function () {
  const KEY = "pixelrelay-admin-token";
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const PAGE = 50;
  const state = {
    messages: new Map(), devices: new Map(), links: new Map(), cursor: null, stats: null, stream: null,
    // The message list: its filters, the cursors of the pages before this one, the next page's.
    filters: {}, pages: [null], next: null, detail: null,
  };

  // The fragment's parameters: `token` (taken out at once) and `message` (the message view
  // open, so that a link can show one message).
  function fragment() {
    return new URLSearchParams(location.hash.replace(/^#/, ""));
  }

  function setFragment(params) {
    const h = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (h ? "#" + h : ""));
  }

  function takeFragmentToken() {
    const f = fragment();
    if (f.has("token")) {
      try { sessionStorage.setItem(KEY, f.get("token")); } catch (e) { /* storage off */ }
      f.delete("token");
      setFragment(f);
    }
  }

  function token() {
    try { return sessionStorage.getItem(KEY); } catch (e) { return null; }
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function fmtTime(s) {
    if (!s) return "–";
    return String(s).replace("T", " ").replace(/\.\d+Z$/, "").replace(/Z$/, "");
  }

  class AuthError extends Error {}

  async function api(path) {
    const r = await fetch(path, { headers: { Authorization: "Bearer " + token() }, cache: "no-store" });
    if (r.status === 401) throw new AuthError("token refused");
    if (!r.ok) throw new Error(path + ": " + r.status);
    return r.json();
  }

  // Device icons: small inline SVG drawings, one per device kind.
  const ICONS = {
    desktop: [["rect", { x: 3, y: 4, width: 18, height: 12, rx: 1 }], ["path", { d: "M8 20h8M12 16v4" }]],
    mobile: [["rect", { x: 7, y: 2, width: 10, height: 20, rx: 2 }], ["path", { d: "M11 18h2" }]],
    webmail: [["circle", { cx: 12, cy: 12, r: 9 }], ["path", { d: "M3 12h18M12 3c3 3 3 15 0 18M12 3c-3 3-3 15 0 18" }]],
    proxy: [["path", { d: "M12 3l8 3v6c0 5-4 8-8 9-4-1-8-4-8-9V6z" }]],
    unknown: [["circle", { cx: 12, cy: 12, r: 9 }], ["path", { d: "M9.5 9.5a2.5 2.5 0 1 1 3 2.4c-.6.2-.5.8-.5 1.6M12 17h.01" }]],
  };

  function icon(device, machine) {
    const kind = Object.prototype.hasOwnProperty.call(ICONS, device) ? device : "unknown";
    const s = document.createElementNS(SVG, "svg");
    s.setAttribute("viewBox", "0 0 24 24");
    s.setAttribute("class", "icon device-" + kind + (machine ? " is-machine" : ""));
    const t = document.createElementNS(SVG, "title");
    t.textContent = kind + (machine ? " (machine)" : "");
    s.appendChild(t);
    for (const [tag, attrs] of ICONS[kind]) {
      const p = document.createElementNS(SVG, tag);
      for (const k of Object.keys(attrs)) p.setAttribute(k, String(attrs[k]));
      s.appendChild(p);
    }
    return s;
  }

  function deviceKey(e) { return e.device + (e.machine ? ":m" : ""); }

  function noteDevice(e) {
    let set = state.devices.get(e.message);
    if (!set) { set = new Map(); state.devices.set(e.message, set); }
    set.set(deviceKey(e), [e.device, !!e.machine]);
  }

  function renderDevices(td, id) {
    td.replaceChildren();
    const set = state.devices.get(id);
    if (!set) return;
    for (const [device, machine] of set.values()) td.appendChild(icon(device, machine));
  }

  function messageRow(m) {
    const tr = el("tr", "msg" + (m.tracked ? "" : " untracked"));
    tr.dataset.id = m.id;
    const machine = m.opens.count - m.opens.human;
    tr.tabIndex = 0;
    if (state.detail && state.detail.id === m.id) tr.classList.add("selected");
    const cells = [
      ["received", fmtTime(m.at)],
      ["sender", m.sender || "<>"],
      ["rcpt", (m.recipients || []).join(", ")],
      ["subject", m.subject === null || m.subject === undefined ? "–" : m.subject],
      ["tracking", m.tracked ? "tracked" : "skipped: " + (m.skip_reason || "unknown")],
      ["opens num", m.opens.count],
      ["people num", m.opens.human],
      ["machine num", machine],
      ["first", fmtTime(m.opens.first_at)],
      ["last", fmtTime(m.opens.last_at)],
    ];
    for (const [cls, v] of cells) {
      const td = el("td", cls, v);
      if (cls === "subject") td.title = String(v);
      tr.appendChild(td);
    }
    const dev = el("td", "devices");
    renderDevices(dev, m.id);
    tr.appendChild(dev);
    const k = m.clicks || { count: 0, human: 0, links: [] };
    tr.appendChild(el("td", "clicks num", k.count ? k.count + " (" + k.human + " people)" : "0"));
    tr.appendChild(el("td", "links num", (k.links || []).length));
    tr.appendChild(el("td", "first-click", fmtTime(k.first_human_at)));
    return tr;
  }

  // Top links: clicks per URL over the clicks loaded and followed since.
  function noteClick(e) {
    const t = state.links.get(e.url) || { clicks: 0, people: 0, messages: new Set() };
    t.clicks += 1;
    if (!e.machine) t.people += 1;
    t.messages.add(e.message);
    state.links.set(e.url, t);
  }

  function renderLinks() {
    const body = $("links").tBodies[0];
    body.replaceChildren();
    const rows = [...state.links.entries()].sort((a, b) => b[1].people - a[1].people || b[1].clicks - a[1].clicks);
    for (const [url, t] of rows.slice(0, 20)) {
      const tr = el("tr", "row");
      const td = el("td", "url", url);
      td.title = url;
      tr.appendChild(td);
      tr.appendChild(el("td", "clicks num", t.clicks));
      tr.appendChild(el("td", "people num", t.people));
      tr.appendChild(el("td", "messages num", t.messages.size));
      body.appendChild(tr);
    }
  }

  function renderMessages() {
    const body = $("messages").tBodies[0];
    body.replaceChildren();
    for (const m of state.messages.values()) body.appendChild(messageRow(m));
    const n = state.pages.length;
    $("newer").disabled = n <= 1;
    $("older").disabled = !state.next;
    $("page-info").textContent = "page " + n + " · " + state.messages.size + " message" + (state.messages.size === 1 ? "" : "s");
  }

  // The filter form as API parameters (dates: whole days, "to" inclusive).
  function readFilters() {
    const f = {};
    const v = (id) => $(id).value.trim();
    if (v("f-rcpt")) f.rcpt = v("f-rcpt");
    if (v("f-sender")) f.sender = v("f-sender");
    if (v("f-since")) f.since = v("f-since");
    if (v("f-until")) {
      const d = new Date(v("f-until") + "T00:00:00Z");
      if (!isNaN(d)) { d.setUTCDate(d.getUTCDate() + 1); f.until = d.toISOString().slice(0, 10); }
    }
    if (v("f-opened")) f.opened = v("f-opened");
    if ($("f-people").checked) f.people = "true";
    return f;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const k of Object.keys(params)) if (params[k] !== null && params[k] !== undefined) q.set(k, params[k]);
    return q.toString();
  }

  function exportUrl() {
    return "/api/v1/messages?" + query(Object.assign({ format: "csv" }, state.filters));
  }

  // Loads the page of the list whose cursor is last in state.pages.
  async function loadMessages() {
    const cursor = state.pages[state.pages.length - 1];
    const page = await api("/api/v1/messages?" + query(Object.assign({ limit: PAGE, cursor: cursor }, state.filters)));
    state.messages = new Map();
    for (const m of page.items) state.messages.set(m.id, m);
    state.next = page.next_cursor || null;
    $("export").dataset.href = exportUrl();
    renderMessages();
  }

  // New messages appear on the first page as they are relayed (the stream carries events only).
  async function pollMessages() {
    if (state.pages.length !== 1 || document.hidden) return;
    const page = await api("/api/v1/messages?" + query(Object.assign({ limit: PAGE }, state.filters)));
    const first = page.items.length ? page.items[0].id : null;
    const ours = state.messages.size ? state.messages.keys().next().value : null;
    if (first === ours) return;
    const known = state.messages;
    state.messages = new Map();
    for (const m of page.items) state.messages.set(m.id, known.get(m.id) || m);
    state.next = page.next_cursor || null;
    renderMessages();
  }

  async function exportCsv() {
    const r = await fetch(exportUrl(), { headers: { Authorization: "Bearer " + token() }, cache: "no-store" });
    if (r.status === 401) throw new AuthError("token refused");
    if (!r.ok) throw new Error("export: " + r.status);
    const url = URL.createObjectURL(await r.blob());
    const a = el("a");
    a.href = url;
    a.download = "pixelrelay-messages.csv";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // The message view: what was relayed, and every open and click on one timeline.
  function meta(dl, name, value) {
    dl.appendChild(el("dt", null, name));
    dl.appendChild(el("dd", null, value === null || value === undefined || value === "" ? "–" : value));
  }

  function after(t0, t) {
    const s = Math.max(0, Math.round((Date.parse(t) - Date.parse(t0)) / 1000));
    if (isNaN(s)) return "";
    if (s < 120) return "+" + s + " s";
    if (s < 7200) return "+" + Math.round(s / 60) + " min";
    if (s < 172800) return "+" + Math.round(s / 3600) + " h";
    return "+" + Math.round(s / 86400) + " d";
  }

  function timelineItem(m, e) {
    const click = e.type === "click";
    const li = el("li", (click ? "t-click" : "t-open") + (e.machine ? " is-machine" : ""));
    li.dataset.id = e.id;
    li.appendChild(el("span", "time", fmtTime(e.at)));
    li.appendChild(el("span", "after", after(m.at, e.at)));
    li.appendChild(el("span", "kind", click ? "click" : "open"));
    li.appendChild(icon(e.device, e.machine));
    li.appendChild(el("span", "client", e.client));
    li.appendChild(el("span", "device", " · " + e.device));
    li.appendChild(el("span", "ip", " · " + e.ip));
    if (e.machine) li.appendChild(el("span", "machine", " · machine (" + (e.machine_reason || "?") + ")"));
    else if (e.proxy) li.appendChild(el("span", "proxy", " · via " + e.proxy));
    if (click) li.appendChild(el("span", "url", " → " + (e.link !== undefined ? "link " + e.link + ": " : "") + e.url));
    return li;
  }

  function renderTimeline() {
    const d = state.detail;
    const list = $("timeline");
    list.replaceChildren();
    list.classList.toggle("people-only", $("f-people").checked);
    const events = d.events.slice().sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : a.id < b.id ? -1 : 1));
    for (const e of events) list.appendChild(timelineItem(d.message, e));
    const machine = events.filter((e) => e.machine).length;
    $("timeline-note").textContent = "(" + events.length + " events, " + machine + " by machines" +
      ($("f-people").checked && machine ? ", hidden" : "") + ")";
  }

  async function showDetail(id) {
    const m = await api("/api/v1/messages/" + encodeURIComponent(id));
    state.detail = { id: id, message: m, events: (m.open_events || []).concat(m.click_events || []) };
    const dl = $("detail-meta");
    dl.replaceChildren();
    meta(dl, "received", fmtTime(m.at));
    meta(dl, "sender", m.sender || "<>");
    meta(dl, "recipients", (m.recipients || []).join(", "));
    meta(dl, "subject", m.subject);
    meta(dl, "Message-ID", m.message_id);
    meta(dl, "queue id", m.queue_id);
    meta(dl, "tracking", m.tracked ? "tracked" : "skipped: " + (m.skip_reason || "unknown"));
    meta(dl, "delivery", m.delivery ? m.delivery.reply : "in flight");
    meta(dl, "opens", m.opens.count + " (" + m.opens.human + " by people)");
    const k = m.clicks || { count: 0, human: 0 };
    meta(dl, "clicks", k.count + " (" + k.human + " by people)");
    renderTimeline();
    $("detail").hidden = false;
    const f = fragment();
    f.set("message", id);
    setFragment(f);
    for (const tr of document.querySelectorAll("tr.msg.selected")) tr.classList.remove("selected");
    const row = document.querySelector('tr.msg[data-id="' + CSS.escape(id) + '"]');
    if (row) row.classList.add("selected");
    $("detail").scrollIntoView({ block: "nearest" });
  }

  function renderBreakdown(id, map) {
    const body = $(id).tBodies[0];
    body.replaceChildren();
    const rows = Object.entries(map || {}).sort((a, b) => b[1].opens - a[1].opens || (a[0] < b[0] ? -1 : 1));
    for (const [name, c] of rows) {
      const tr = el("tr", "row");
      const first = el("td", "name");
      if (id === "devices") first.appendChild(icon(name, false));
      first.appendChild(document.createTextNode(name));
      tr.appendChild(first);
      tr.appendChild(el("td", "opens num", c.opens));
      tr.appendChild(el("td", "machine num", c.machine));
      body.appendChild(tr);
    }
  }

  function renderReasons(counts, shares) {
    const body = $("reasons").tBodies[0];
    body.replaceChildren();
    const rows = Object.entries(counts || {}).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
    for (const [reason, n] of rows) {
      const tr = el("tr", "row");
      tr.appendChild(el("td", "name", reason));
      tr.appendChild(el("td", "opens num", n));
      tr.appendChild(el("td", "share num", (((shares || {})[reason] || 0) * 100).toFixed(1) + "%"));
      body.appendChild(tr);
    }
  }

  function renderChart(byDay) {
    const days = [];
    const today = new Date();
    for (let i = 13; i >= 0; i--) {
      const d = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i));
      days.push(d.toISOString().slice(0, 10));
    }
    const W = 700, H = 180, pad = 24, bw = (W - pad) / days.length;
    const vals = days.map((d) => (byDay && byDay[d]) || { opens: 0, machine: 0 });
    const max = Math.max(1, ...vals.map((v) => v.opens));
    const s = document.createElementNS(SVG, "svg");
    s.setAttribute("viewBox", "0 0 " + W + " " + H);
    s.setAttribute("preserveAspectRatio", "none");
    s.setAttribute("role", "img");
    const t = document.createElementNS(SVG, "title");
    t.textContent = "opens per day, last 14 days";
    s.appendChild(t);
    const rect = (cls, x, y, w, h, day, n) => {
      const r = document.createElementNS(SVG, "rect");
      r.setAttribute("class", cls);
      r.setAttribute("x", x); r.setAttribute("y", y);
      r.setAttribute("width", Math.max(0, w)); r.setAttribute("height", Math.max(0, h));
      r.dataset.day = day; r.dataset.count = n;
      const tt = document.createElementNS(SVG, "title");
      tt.textContent = day + ": " + n + " " + cls;
      r.appendChild(tt);
      s.appendChild(r);
    };
    days.forEach((day, i) => {
      const v = vals[i];
      const people = v.opens - v.machine;
      const scale = (H - pad - 8) / max;
      const x = pad + i * bw + 2, w = bw - 4;
      const hp = people * scale, hm = v.machine * scale;
      rect("people", x, H - pad - hp, w, hp, day, people);
      rect("machine", x, H - pad - hp - hm, w, hm, day, v.machine);
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", x);
      label.setAttribute("y", H - 8);
      label.textContent = day.slice(5);
      s.appendChild(label);
    });
    const top = document.createElementNS(SVG, "text");
    top.setAttribute("x", 2); top.setAttribute("y", 12);
    top.textContent = String(max);
    s.appendChild(top);
    $("chart").replaceChildren(s);
  }

  function renderStats(st) {
    state.stats = st;
    $("stat-relayed").textContent = st.relayed;
    $("stat-tracked").textContent = st.tracked;
    $("stat-skipped").textContent = st.skipped_total;
    $("stat-opens").textContent = st.opens;
    $("stat-human").textContent = st.human_opens;
    $("stat-machine").textContent = st.machine_opens;
    $("stat-unique").textContent = st.unique_opens;
    $("stat-direct").textContent = st.direct_opens;
    $("stat-proxied").textContent = st.proxied_opens;
    $("stat-rate").textContent = (st.human_open_rate * 100).toFixed(1) + "%";
    $("stat-raw-rate").textContent = (st.open_rate * 100).toFixed(1) + "%";
    $("stat-clicks").textContent = st.clicks || 0;
    $("stat-human-clicks").textContent = st.human_clicks || 0;
    $("stat-machine-clicks").textContent = st.machine_clicks || 0;
    $("stat-click-rate").textContent = ((st.human_click_rate || 0) * 100).toFixed(1) + "%";
    renderBreakdown("clients", st.by_client);
    renderBreakdown("devices", st.by_device);
    renderBreakdown("proxies", st.by_proxy);
    renderReasons(st.by_reason, st.machine_share_by_reason);
    renderChart(st.by_day);
  }

  let refreshTimer = null;
  function refreshSoon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      api("/api/v1/stats").then(renderStats).catch(failed);
    }, 500);
  }

  function addLive(e) {
    const click = e.type === "click";
    const li = el("li", (click ? "live-click" : "live-open") + (e.machine ? " is-machine" : ""));
    li.dataset.id = e.id;
    li.appendChild(el("span", "time", fmtTime(e.at)));
    li.appendChild(el("span", "kind", click ? "click" : "open"));
    li.appendChild(icon(e.device, e.machine));
    li.appendChild(el("span", "rcpt", e.recipient));
    li.appendChild(document.createTextNode(" · "));
    li.appendChild(el("span", "subject", e.subject === null || e.subject === undefined ? "–" : e.subject));
    li.appendChild(document.createTextNode(" · "));
    li.appendChild(el("span", "client", e.client));
    if (e.machine) li.appendChild(el("span", "machine", " · machine (" + (e.machine_reason || "?") + ")"));
    else if (e.proxy) li.appendChild(el("span", "proxy", " · via " + e.proxy));
    li.appendChild(el("span", "ip", " · " + e.ip));
    if (click) li.appendChild(el("span", "url", " → " + e.url));
    const list = $("live");
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 200) list.removeChild(list.lastChild);
  }

  function onOpen(e) {
    if (state.cursor !== null && e.id <= state.cursor) return;
    state.cursor = e.id;
    addLive(e);
    if (state.detail && state.detail.id === e.message && !$("detail").hidden) {
      state.detail.events.push(e);
      renderTimeline();
    }
    const m = state.messages.get(e.message);
    if (e.type === "click") {
      noteClick(e);
      renderLinks();
      if (m) {
        const k = m.clicks || (m.clicks = { count: 0, human: 0, links: [] });
        k.count = e.count;
        if (!e.machine) {
          k.human += 1;
          if (!k.first_human_at) k.first_human_at = e.at;
        }
        if (!k.links.includes(e.link)) k.links.push(e.link);
        const old = document.querySelector('tr.msg[data-id="' + CSS.escape(e.message) + '"]');
        if (old) old.replaceWith(messageRow(m));
      }
      refreshSoon();
      return;
    }
    noteDevice(e);
    if (m) {
      m.opens.count = e.count;
      if (!e.machine) m.opens.human += 1;
      if (!m.opens.first_at) m.opens.first_at = e.at;
      m.opens.last_at = e.at;
      const old = document.querySelector('tr.msg[data-id="' + CSS.escape(e.message) + '"]');
      if (old) old.replaceWith(messageRow(m));
    }
    refreshSoon();
  }

  function setStatus(on, text) {
    const s = $("status");
    s.className = "status " + (on ? "on" : "off");
    s.textContent = text;
  }

  async function follow() {
    const since = state.cursor || "0000000000000000";
    const ctl = new AbortController();
    state.stream = ctl;
    const r = await fetch("/api/v1/opens?follow=1&since=" + encodeURIComponent(since), {
      headers: { Authorization: "Bearer " + token() },
      cache: "no-store",
      signal: ctl.signal,
    });
    if (r.status === 401) throw new AuthError("token refused");
    if (!r.ok || !r.body) throw new Error("follow: " + r.status);
    setStatus(true, "live");
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line) continue;
        let v;
        try { v = JSON.parse(line); } catch (e) { continue; }
        if (v.heartbeat !== undefined || v.end !== undefined) continue;
        onOpen(v);
      }
    }
  }

  async function followForever() {
    let delay = 500;
    for (;;) {
      try {
        await follow();
        delay = 500;
      } catch (e) {
        if (e instanceof AuthError) return failed(e);
      }
      setStatus(false, "reconnecting…");
      await new Promise((res) => setTimeout(res, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }

  function failed(e) {
    if (e instanceof AuthError) {
      try { sessionStorage.removeItem(KEY); } catch (x) { /* ignore */ }
      showLogin("The relay refused this token.");
    } else {
      setStatus(false, "error: " + (e && e.message ? e.message : String(e)));
    }
  }

  function showLogin(msg) {
    if (state.stream) state.stream.abort();
    $("app").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = msg || "";
    setStatus(false, "not connected");
  }

  async function load() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
    try {
      state.filters = readFilters();
      state.pages = [null];
      const [, opens, clicks, stats] = await Promise.all([
        loadMessages(),
        api("/api/v1/opens?limit=1000"),
        api("/api/v1/clicks?limit=1000"),
        api("/api/v1/stats"),
      ]);
      state.devices = new Map();
      for (const e of opens.items.slice().reverse()) noteDevice(e);
      state.links = new Map();
      for (const e of clicks.items) noteClick(e);
      const recent = opens.items.slice(0, 20).concat(clicks.items.slice(0, 20));
      recent.sort((a, b) => (a.id < b.id ? -1 : 1));
      for (const e of recent.slice(-20)) addLive(e);
      const newest = [opens.items[0], clicks.items[0]].filter(Boolean).map((e) => e.id).sort();
      state.cursor = newest.length ? newest[newest.length - 1] : "0000000000000000";
      renderMessages();
      renderLinks();
      renderStats(stats);
      if (!state.poll) state.poll = setInterval(() => pollMessages().catch(failed), 5000);
      const linked = fragment().get("message");
      if (linked) showDetail(linked).catch(failed);
      document.body.dataset.loaded = "1";
    } catch (e) {
      return failed(e);
    }
    followForever();
  }

  takeFragmentToken();
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("token-input").value.trim();
    if (!v) return;
    try { sessionStorage.setItem(KEY, v); } catch (e) { /* storage off */ }
    $("token-input").value = "";
    load();
  });
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.filters = readFilters();
    state.pages = [null];
    loadMessages().catch(failed);
    if (state.detail && !$("detail").hidden) renderTimeline();
  });
  $("f-clear").addEventListener("click", () => {
    $("filters").reset();
    $("filters").requestSubmit();
  });
  $("export").addEventListener("click", () => { exportCsv().catch(failed); });
  $("older").addEventListener("click", () => {
    if (!state.next) return;
    state.pages.push(state.next);
    loadMessages().catch(failed);
  });
  $("newer").addEventListener("click", () => {
    if (state.pages.length <= 1) return;
    state.pages.pop();
    loadMessages().catch(failed);
  });
  const pick = (ev) => {
    const tr = ev.target.closest("tr.msg");
    if (tr) showDetail(tr.dataset.id).catch(failed);
  };
  $("messages").tBodies[0].addEventListener("click", pick);
  $("messages").tBodies[0].addEventListener("keydown", (ev) => { if (ev.key === "Enter") pick(ev); });
  $("detail-close").addEventListener("click", () => {
    $("detail").hidden = true;
    state.detail = null;
    const f = fragment();
    f.delete("message");
    setFragment(f);
    for (const tr of document.querySelectorAll("tr.msg.selected")) tr.classList.remove("selected");
  });
  $("logout").addEventListener("click", () => {
    try { sessionStorage.removeItem(KEY); } catch (e) { /* ignore */ }
    showLogin("");
  });
  if (token()) load(); else showLogin("");
})();
