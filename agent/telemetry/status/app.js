// edgeloop status page: polls /status/live once a second and draws with canvas; no library.
// The agent serves this file inlined into index.html (agent/telemetry/statuspage.py).
"use strict";
(() => {
  const SPARK_S = 300, TREND_S = 600, MAX_ROWS = 200, POLL_MS = 1000;
  const QUALITY = ["good", "bad", "stale", "comm lost", "uncertain"];
  const FLAGS = [[1, "invalid"], [2, "out of range"], [4, "spike"], [8, "stuck"], [16, "drift"],
    [32, "rate limited"], [64, "anomalous"], [128, "group alarm"]];
  const MODES = ["off", "manual", "shadow", "auto"];
  const $ = (sel, el) => (el || document).querySelector(sel);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  let token = sessionStorage.getItem("edgeloop-token") || "";
  let meta = null, live = null, busy = false, started = false;
  const spark = new Map();       // tag index -> {t: [], v: []}
  const backfilled = new Set();  // tag indices whose history was fetched
  const trends = {};             // loop -> [[t_ms, sp, pv, mv, fallback]]
  const stored = new Map();      // event key -> event (from SQLite via /status/trend)
  const loopEls = {}, groupEls = {}, devRows = {};
  let visible = [], rowEls = new Map();

  // ---- fetching ------------------------------------------------------------------------
  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }
  async function getJSON(path) {
    const r = await fetch(path, { headers: headers(), cache: "no-store" });
    if (r.status === 401) { const e = new Error("the access token is missing or wrong"); e.status = 401; throw e; }
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }

  async function start() {
    try {
      meta = await getJSON("/status/meta");
    } catch (e) {
      setConn(false, e.message);
      if (e.status === 401) {
        showAccess("needs token");
        banner(token ? "The access token was refused. Enter this gateway's HTTP token to see it."
          : "This gateway needs its HTTP access token to show its data. Enter it above.");
        $("#token").focus();
      } else {
        setTimeout(start, 3000);
      }
      return;
    }
    started = true;
    $("#site").textContent = meta.site;
    document.title = "edgeloop · " + meta.site;
    if (!meta.token) {
      showAccess("read-only");
      banner("Read-only: this gateway has no HTTP token configured, so setpoints and modes " +
        "cannot be changed from here (http.bearer_token_file, docs/operations.md).");
      $("#tokenform").hidden = true;
    } else if (token) {
      showAccess("operator");
      banner("");
      $("#forget").hidden = false;
    }
    buildLoops();
    applyFilter();
    loadTrend();
    poll();
    setInterval(() => { if (!document.hidden) poll(); }, POLL_MS);
  }

  async function poll() {
    if (busy) return;
    busy = true;
    try {
      live = await getJSON("/status/live");
      if (live.v.length !== meta.tags.name.length) { location.reload(); return; }  // a reload changed the tags
      setConn(true);
      render();
    } catch (e) {
      setConn(false, e.message);
    } finally {
      busy = false;
    }
  }

  async function loadTrend() {
    if (!meta.store) return;
    try {
      const d = await getJSON("/status/trend?s=" + TREND_S);
      for (const [name, pts] of Object.entries(d.loops)) {
        const cur = trends[name] || [];
        const first = cur.length ? cur[0][0] : Infinity;
        trends[name] = pts.filter((p) => p[0] < first).concat(cur);
      }
      for (const e of d.events) stored.set(e.t + "|" + e.kind + "|" + e.source, e);
    } catch (e) { /* the live view goes on without the past */ }
  }

  async function backfill(indices) {
    if (!meta.store) return;
    const want = indices.filter((i) => !backfilled.has(i) && !meta.tags.text.includes(i));
    for (let k = 0; k < want.length; k += 100) {
      const chunk = want.slice(k, k + 100);
      chunk.forEach((i) => backfilled.add(i));
      const names = chunk.map((i) => meta.tags.name[i]).join(",");
      try {
        const d = await getJSON("/status/history?s=" + SPARK_S + "&tags=" + encodeURIComponent(names));
        for (const [name, [ts, vs]] of Object.entries(d.tags)) {
          const i = meta.tags.name.indexOf(name);
          const s = spark.get(i) || { t: [], v: [] };
          const first = s.t.length ? s.t[0] : Infinity;
          const keep = ts.map((t, j) => [t, vs[j]]).filter((p) => p[0] < first);
          s.t = keep.map((p) => p[0]).concat(s.t);
          s.v = keep.map((p) => p[1]).concat(s.v);
          spark.set(i, s);
        }
      } catch (e) { chunk.forEach((i) => backfilled.delete(i)); }
    }
  }

  // ---- header ----------------------------------------------------------------------------
  function setConn(ok, why) {
    const c = $("#conn");
    c.textContent = ok ? "live" : "disconnected" + (why ? ": " + why : "");
    c.className = "pill " + (ok ? "good" : "bad");
  }
  function showAccess(what) {
    const a = $("#access");
    a.textContent = what;
    a.className = "pill " + (what === "operator" ? "good" : "warn");
  }
  function banner(text) {
    const b = $("#banner");
    b.textContent = text;
    b.hidden = !text;
  }
  $("#tokenform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("#token").value.trim();
    sessionStorage.setItem("edgeloop-token", token);
    location.reload();
  });
  $("#forget").addEventListener("click", () => {
    sessionStorage.removeItem("edgeloop-token");
    location.reload();
  });

  // ---- formatting --------------------------------------------------------------------------
  const num = (v, p) => (v === null || v === undefined || Number.isNaN(v)) ? "–"
    : String(Number(v.toPrecision(p || 5)));
  function age(ms) {
    if (ms < 0) return "never";
    if (ms < 10000) return (ms / 1000).toFixed(1) + " s";
    if (ms < 120000) return Math.round(ms / 1000) + " s";
    if (ms < 7200000) return Math.round(ms / 60000) + " min";
    return Math.round(ms / 3600000) + " h";
  }
  function localTime(ms) {
    const d = new Date(ms), now = new Date();
    const t = d.toLocaleTimeString();
    return d.toDateString() === now.toDateString() ? t : d.toLocaleDateString() + " " + t;
  }
  const flagWords = (f) => FLAGS.filter(([b]) => f & b).map(([, n]) => n).join(", ");

  // ---- render ------------------------------------------------------------------------------
  function render() {
    $("#clock").textContent = localTime(live.t);
    renderDevices();
    renderTags();
    renderLoops();
    renderGroups();
    renderEvents();
  }

  function renderDevices() {
    const body = $("#devices tbody");
    for (const [name, d] of Object.entries(live.devices)) {
      let r = devRows[name];
      if (!r) {
        r = devRows[name] = el("tr");
        r.dataset.device = name;
        for (const c of ["name", "state", "since", "error", "reqs num", "rate num", "overruns num"]) r.append(el("td", c));
        r.cells[0].textContent = name;
        body.append(r);
      }
      const up = d.state === "up";
      r.cells[1].textContent = d.state;
      r.cells[1].className = "state " + (up ? "good" : "bad");
      r.cells[2].textContent = d.since ? localTime(d.since * 1000) : "–";
      r.cells[3].textContent = up ? "" : (d.last_error || "");
      r.cells[3].title = d.last_error || "";
      r.cells[4].textContent = num(d.requests_per_s, 3);
      r.cells[4].title = "reads sent per second (a subscription's pushed values are not counted)";
      r.cells[5].textContent = num(d.polls_per_s, 3);
      r.cells[6].textContent = d.overruns;
    }
  }

  function applyFilter() {
    const words = $("#filter").value.toLowerCase().split(/\s+/).filter(Boolean);
    const t = meta.tags, out = [];
    let total = 0;
    for (let i = 0; i < t.name.length; i++) {
      const hay = (t.device[i] + " " + t.group[i] + " " + t.name[i]).toLowerCase();
      if (words.every((w) => hay.includes(w))) {
        total++;
        if (out.length < MAX_ROWS) out.push(i);
      }
    }
    const shown = new Set(out);
    for (const i of visible) if (!shown.has(i)) { backfilled.delete(i); spark.delete(i); }
    visible = out;
    $("#tagcount").textContent = total > out.length
      ? `showing ${out.length} of ${total} matching (${t.name.length} in all): refine the filter`
      : `${total} of ${t.name.length}`;
    const body = $("#tags tbody");
    body.textContent = "";
    rowEls = new Map();
    for (const i of out) {
      const r = el("tr");
      r.dataset.tag = t.name[i];
      r.append(el("td", "dev", t.device[i]), el("td", "grp", t.group[i]), el("td", "name", t.name[i]),
        el("td", "value num"), el("td", "q"), el("td", "age num"), el("td", "flags"), el("td", "score num"));
      const c = el("canvas", "spark");
      const td = el("td");
      td.append(c);
      r.append(td);
      body.append(r);
      rowEls.set(i, { r, c, cells: r.cells });
    }
    backfill(out);
    if (live) renderTags();
  }
  let filterTimer = 0;
  $("#filter").addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(applyFilter, 200);
  });

  function renderTags() {
    const t = meta.tags, now = live.t;
    for (const [i, { r, c, cells }] of rowEls) {
      const text = live.texts[i];
      const v = live.v[i], q = live.q[i];
      cells[3].textContent = text !== undefined ? text : (v === null ? "–" : num(v) + (t.unit[i] ? " " + t.unit[i] : ""));
      const why = live.reasons[i];
      cells[4].textContent = (QUALITY[q] || "q" + q) + (q && why ? ": " + why : "");
      r.classList.toggle("badq", q !== 0);
      cells[5].textContent = age(live.age[i]);
      cells[6].textContent = flagWords(live.f[i]);
      cells[7].textContent = live.s[i] === null ? "–" : live.s[i].toFixed(2);
      if (text === undefined) {
        const s = spark.get(i) || { t: [], v: [] };
        if (live.age[i] >= 0 && (!s.t.length || s.t[s.t.length - 1] < now)) { s.t.push(now); s.v.push(q === 0 ? v : null); }
        while (s.t.length && s.t[0] < now - SPARK_S * 1000) { s.t.shift(); s.v.shift(); }
        spark.set(i, s);
        drawSpark(c, s, now, q !== 0);
      }
    }
  }

  function sizeCanvas(c) {
    const dpr = window.devicePixelRatio || 1, w = c.clientWidth, h = c.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    return [g, w, h];
  }
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  function drawSpark(c, s, now, bad) {
    const [g, w, h] = sizeCanvas(c);
    let lo = Infinity, hi = -Infinity;
    for (const v of s.v) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (lo === Infinity) return;
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const t0 = now - SPARK_S * 1000;
    g.strokeStyle = bad ? css("--bad") : css("--pv");
    g.lineWidth = 1;
    g.beginPath();
    let pen = false;
    for (let k = 0; k < s.t.length; k++) {
      const v = s.v[k];
      if (v === null) { pen = false; continue; }
      const x = (s.t[k] - t0) / (SPARK_S * 1000) * w, y = h - 2 - (v - lo) / (hi - lo) * (h - 4);
      if (pen) g.lineTo(x, y); else g.moveTo(x, y);
      pen = true;
    }
    g.stroke();
  }

  // ---- loops -------------------------------------------------------------------------------
  function buildLoops() {
    const box = $("#loops");
    const names = Object.keys(meta.loops);
    if (!names.length) { box.append(el("p", "mute", "No control loops configured.")); return; }
    const operator = meta.token && token;
    for (const name of names) {
      const m = meta.loops[name];
      const d = el("div", "loop");
      d.dataset.loop = name;
      d.append(el("h3", "", name));
      const kv = el("div", "kv");
      const fields = {};
      for (const [k, label] of [["mode", "mode"], ["active", "in charge"], ["why", "why"],
        ["sp", "SP"], ["pv", "PV"], ["mv", "MV " + (m.output || "")], ["shadow", "shadow"],
        ["heartbeat", "heartbeat"]]) {
        const span = el("span", "", label + " ");
        const b = el("b", k);
        span.append(b);
        kv.append(span);
        fields[k] = b;
      }
      d.append(kv);
      const legend = el("div", "legend");
      legend.append(el("span", "sp", "— setpoint"), el("span", "pv", "— measurement"),
        el("span", "mv", "— output (right axis, %)"), el("span", "fb", "fallback"));
      d.append(legend);
      const canvas = el("canvas", "trend");
      d.append(canvas);
      const ops = el("div", "ops");
      const msg = el("span", "msg");
      if (operator) {
        const sp = el("input", "sp-input");
        sp.type = "number";
        sp.step = "any";
        if (m.sp_min !== null) sp.min = m.sp_min;
        if (m.sp_max !== null) sp.max = m.sp_max;
        sp.setAttribute("aria-label", "new setpoint");
        const spb = el("button", "sp-set", "Set setpoint");
        spb.type = "button";
        spb.addEventListener("click", () => command(name, "setpoint", { value: Number(sp.value) }, msg));
        const mode = el("select", "mode-select");
        for (const md of MODES) { const o = el("option", "", md); o.value = md; mode.append(o); }
        mode.addEventListener("change", () => { mode.dataset.touched = "1"; });
        const mb = el("button", "mode-set", "Set mode");
        mb.type = "button";
        mb.addEventListener("click", () => command(name, "mode", { mode: mode.value }, msg));
        const range = (m.sp_min !== null || m.sp_max !== null) ? ` (${m.sp_min ?? "–"} .. ${m.sp_max ?? "–"})` : "";
        ops.append(el("span", "", "setpoint" + range), sp, spb, mode, mb, msg);
      } else {
        ops.append(el("span", "mute readonly", meta.token ? "Read-only: enter the access token to operate."
          : "Read-only: no HTTP token configured on this gateway."), msg);
      }
      d.append(ops);
      box.append(d);
      loopEls[name] = { fields, canvas, msg, select: $(".mode-select", d) };
    }
  }

  async function command(loop, what, body, msg) {
    msg.textContent = "sending…";
    msg.className = "msg mute";
    try {
      const r = await fetch(`/control/${encodeURIComponent(loop)}/${what}`, {
        method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
      });
      const d = await r.json().catch(() => ({}));
      if (r.ok) {
        msg.textContent = what === "setpoint" ? `setpoint set to ${body.value}` : `mode set to ${body.mode}`;
        msg.className = "msg good";
      } else {
        msg.textContent = `refused (${r.status}): ${d.error || r.statusText}`;
        msg.className = "msg bad";
      }
    } catch (e) {
      msg.textContent = "not sent: " + e.message;
      msg.className = "msg bad";
    }
  }
  window.edgeloopCommand = (loop, what, body) => command(loop, what, body,
    (loopEls[loop] || {}).msg || el("span"));

  function renderLoops() {
    for (const [name, st] of Object.entries(live.loops)) {
      const e = loopEls[name];
      if (!e) continue;
      const f = e.fields;
      f.mode.textContent = st.mode;
      const sel = e.select;
      if (sel && !sel.dataset.touched) sel.value = st.mode;  // until the operator picks one
      f.active.textContent = st.active || "–";
      f.active.className = "active " + (st.active === "model" ? "good" : st.active === "fallback" ? "warn" : "");
      const reasons = (st.reasons || []).join(", ");
      f.why.textContent = reasons || (st.active === "model" ? "model healthy" : st.active === "manual" ? "manual mode"
        : st.active === "off" ? "loop off" : st.mode === "shadow" ? "shadow: model only compared" : "–");
      f.sp.textContent = num(st.setpoint, 4);
      f.pv.textContent = num(st.pv, 4);
      f.mv.textContent = num(st.output, 4);
      const sh = st.shadow || {};
      f.shadow.textContent = Object.keys(sh).length
        ? Object.entries(sh).map(([k, v]) => `${k} ${typeof v === "number" ? num(v, 3) : v}`).join(", ") : "–";
      f.heartbeat.textContent = st.heartbeat || "–";
      const tr = trends[name] = trends[name] || [];
      if (!tr.length || tr[tr.length - 1][0] < live.t) {
        tr.push([live.t, st.setpoint, st.pv, st.output, st.active === "fallback" || st.in_fallback ? 1 : 0]);
      }
      while (tr.length && tr[0][0] < live.t - TREND_S * 1000) tr.shift();
      drawTrend(e.canvas, tr, live.t);
    }
  }

  function drawTrend(c, pts, now) {
    const [g, w, h] = sizeCanvas(c);
    const L = 44, R = 36, T = 6, B = 18, pw = w - L - R, ph = h - T - B;
    const t0 = now - TREND_S * 1000, X = (t) => L + (t - t0) / (TREND_S * 1000) * pw;
    let lo = Infinity, hi = -Infinity, mlo = 0, mhi = 100;
    for (const p of pts) for (const v of [p[1], p[2]]) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    for (const p of pts) if (p[3] !== null) { mlo = Math.min(mlo, p[3]); mhi = Math.max(mhi, p[3]); }
    if (lo === Infinity) { lo = 0; hi = 1; }
    const pad = Math.max((hi - lo) * 0.08, 0.5);
    lo -= pad; hi += pad;
    const Y = (v) => T + ph - (v - lo) / (hi - lo) * ph, Ym = (v) => T + ph - (v - mlo) / (mhi - mlo) * ph;
    g.fillStyle = css("--fb");  // fallback spans first, under the lines
    for (let k = 0; k < pts.length; k++) {
      if (!pts[k][4]) continue;
      const x1 = X(pts[k][0]), x2 = k + 1 < pts.length ? X(pts[k + 1][0]) : X(now);
      g.fillRect(x1, T, Math.max(1, x2 - x1), ph);
    }
    g.strokeStyle = css("--line");
    g.fillStyle = css("--mute");
    g.font = "11px system-ui, sans-serif";
    g.lineWidth = 1;
    for (let k = 0; k <= 4; k++) {
      const v = lo + (hi - lo) * k / 4, y = Y(v);
      g.beginPath(); g.moveTo(L, y); g.lineTo(L + pw, y); g.stroke();
      g.textAlign = "right"; g.fillText(num(v, 3), L - 4, y + 4);
      g.textAlign = "left"; g.fillText(num(mlo + (mhi - mlo) * k / 4, 3), L + pw + 4, y + 4);
    }
    g.textAlign = "center";
    for (let m = 0; m <= TREND_S / 60; m += 2) {
      const x = X(now - m * 60000);
      g.fillText(m ? `-${m} min` : "now", x, h - 4);
    }
    const line = (idx, color, ys) => {
      g.strokeStyle = css(color); g.lineWidth = 1.5; g.beginPath();
      let pen = false;
      for (const p of pts) {
        if (p[idx] === null) { pen = false; continue; }
        const x = X(p[0]), y = ys(p[idx]);
        if (pen) g.lineTo(x, y); else g.moveTo(x, y);
        pen = true;
      }
      g.stroke();
    };
    line(3, "--mv", Ym);
    line(1, "--sp", Y);
    line(2, "--pv", Y);
  }

  // ---- anomaly groups and events -------------------------------------------------------------
  function renderGroups() {
    const box = $("#groups");
    const names = Object.keys(meta.groups);
    if (!names.length && !box.childElementCount) box.append(el("p", "mute", "No multivariate groups configured."));
    for (const name of names) {
      const g = live.groups[name] || {};
      let e = groupEls[name];
      if (!e) {
        const d = el("div", "group");
        d.dataset.group = name;
        const head = el("div", "kv");
        const title = el("b", "", name), state = el("span", "gstate"), score = el("span", "gscore");
        head.append(title, state, score);
        const bar = el("div", "bar"), fill = el("div");
        bar.append(fill);
        const clabel = el("div", "mute clabel", "");
        const contrib = el("ol", "contrib");
        d.append(head, bar, clabel, contrib, el("div", "mute members", "tags: " + meta.groups[name].join(", ")));
        box.append(d);
        e = groupEls[name] = { state, score, bar, fill, contrib, clabel };
      }
      const st = g.state || "unknown";
      e.state.textContent = st === "learning" ? `learning ${g.collected || ""}` : st + (g.error ? ": " + g.error : "");
      e.state.className = "gstate " + (st === "alarm" || st === "failed" ? "bad" : st === "ok" ? "good" : "mute");
      const s = typeof g.score === "number" ? g.score : null;
      e.score.textContent = s === null ? "" : `score ${s.toFixed(2)} / limit 1.00` + (g.budget ? ` (${g.budget})` : "");
      e.fill.style.width = (s === null ? 0 : Math.min(1, s / 2) * 100) + "%";  // the limit sits mid-bar
      e.bar.classList.toggle("alarm", st === "alarm");
      const c = g.contributions || {};
      const entries = Object.entries(c);
      e.clabel.textContent = entries.length ? (st === "alarm" ? "top contributing tags (this alarm):" : "top contributing tags (last alarm):") : "";
      const text = entries.map(([k, v]) => k + " " + Math.round(v * 100) + " %").join("|");
      if (e.contrib.dataset.text !== text) {
        e.contrib.dataset.text = text;
        e.contrib.textContent = "";
        for (const [k, v] of entries) {
          const li = el("li", "", `${k} ${Math.round(v * 100)} %`);
          li.dataset.tag = k;
          e.contrib.append(li);
        }
      }
    }
  }

  function renderEvents() {
    // stored (SQLite) and live (since the agent started) events overlap: the same event has
    // the same kind, source and text, and times a few ms apart
    const all = [...stored.values()], seen = new Map();
    for (const e of all) {
      const k = e.kind + "|" + e.source + "|" + e.text;
      (seen.get(k) || seen.set(k, []).get(k)).push(e.t);
    }
    for (const e of live.events) {
      const ts = seen.get(e.kind + "|" + e.source + "|" + e.text) || [];
      if (!ts.some((t) => Math.abs(t - e.t) < 1000)) all.push(e);
    }
    const list = all.sort((a, b) => b.t - a.t).slice(0, 100);
    const key = list.length ? list[0].t + "|" + list.length : "";
    const body = $("#events tbody");
    if (body.dataset.key === key) return;
    body.dataset.key = key;
    body.textContent = "";
    for (const e of list) {
      const r = el("tr");
      r.dataset.kind = e.kind;
      r.dataset.t = e.t;
      const bad = /anomaly_on|down|fallback/.test(e.kind);
      r.append(el("td", "", localTime(e.t)), el("td", bad ? "bad" : "", e.kind.replace(/_/g, " ")),
        el("td", "", e.source), el("td", "", e.text));
      body.append(r);
    }
  }

  if (token) $("#token").value = token;
  start();
})();
