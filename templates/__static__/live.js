// gogeta's live view: fetches /__gogeta/live every 2 s and redraws the figures in place.
// Everything from the JSON goes in as text (textContent), never as markup.
"use strict";

(function () {
  const body = document.body;
  const source = body.dataset.source || "/__gogeta/live";
  const every = Number(body.dataset.refreshMs) || 2000;
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const state = { q: params.get("q") || "", page: Math.max(1, Number(params.get("page")) || 1), pages: 1, paused: false };
  let timer = null;
  let inflight = null;

  // ------------------------------------------------------------------ formatting
  const pad = (n) => String(n).padStart(2, "0");
  function clock(epoch) {
    const d = new Date(epoch * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function stamp(epoch) {
    const d = new Date(epoch * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(epoch)}`;
  }
  function duration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return `${seconds} s`;
    const m = Math.floor(seconds / 60);
    if (m < 60) return `${m} min ${pad(seconds % 60)} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${pad(m % 60)} min`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }
  function ms(v) {
    if (v === null || v === undefined) return "–";
    if (v < 1) return `${v.toFixed(2)} ms`;
    return v < 10 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`;
  }
  const rate = (v) => (v === null || v === undefined ? "–" : v >= 100 ? String(Math.round(v)) : String(v));
  // lastAccess as etcd holds it: the writer's local time, "YYYY-MM-DD HH:MM:SS".
  function ago(text, now) {
    const t = Date.parse(String(text).replace(" ", "T"));
    return Number.isNaN(t) ? "" : `${duration(now - t / 1000)} ago`;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  const badge = (kind, text) => el("span", { class: `badge ${kind}`, text: text || kind });

  // ------------------------------------------------------------------ sections
  function fact(dl, term, value, detail, tone) {
    const dd = el("dd", tone ? { class: tone } : {}, value);
    if (detail) dd.append(el("span", { class: "detail", text: detail }));
    dl.append(el("div", {}, el("dt", { text: term }), dd));
  }

  function drawProcess(data) {
    const p = data.process;
    const dl = $("process");
    dl.replaceChildren();
    fact(dl, "Resolver", `${p.resolver || "?"}${p.source ? " · " + p.source : ""}`);
    fact(dl, "Endpoint", p.endpoint || "–");
    if (p.unreachable_since) {
      fact(dl, "etcd", badge("error", "unreachable"), `since ${clock(p.unreachable_since)} (${duration(data.generated - p.unreachable_since)})${p.last_error ? " · " + p.last_error : ""}`);
    } else if (p.loaded) {
      fact(dl, "etcd", badge("started", "reachable"));
    } else {
      fact(dl, "etcd", badge("starting", "loading"));
    }
    fact(dl, "Index", p.etcd_index === null || p.etcd_index === undefined ? "–" : String(p.etcd_index));
    fact(dl, "Watch lag", p.watch_lag_events === null || p.watch_lag_events === undefined ? "–" : `${p.watch_lag_events} events`);
    const reload = p.last_reload;
    fact(dl, "Last reload", reload ? stamp(reload.at) : "–", reload ? reload.reason : null);
    fact(dl, "Uptime", duration(p.uptime_seconds), `since ${stamp(p.started)}`);
    fact(dl, "PID", String(p.pid), data.mode === "gunicorn" ? "the worker that answered" : null);

    const workers = data.workers || [];
    $("workers-block").hidden = data.mode !== "gunicorn";
    if (data.mode === "gunicorn") {
      $("workers-note").textContent = `${workers.length} worker${workers.length === 1 ? "" : "s"}. ` +
        `Totals add them all up; the domain and instance figures below are worker ${data.answered_by}'s only (each worker has its own traffic).`;
      const tbody = $("workers").tBodies[0];
      tbody.replaceChildren(...workers.map((w) => el("tr", {},
        el("th", { scope: "row", text: String(w.pid) + (w.pid === data.answered_by ? " (this)" : "") }),
        el("td", { text: duration(w.uptime_seconds) }),
        el("td", {}, w.unreachable_since ? badge("error", "unreachable") : badge(w.loaded ? "started" : "starting", w.loaded ? "ok" : "loading")),
        el("td", { class: "num", text: String(w.etcd_index ?? "–") }),
        el("td", { class: "num", text: String(w.watch_lag_events ?? "–") }),
        el("td", { class: "num", text: String(w.open_connections ?? "–") }),
        el("td", { class: "num", text: rate(w.requests_per_second) }),
        el("td", { class: "num", text: rate(w["5xx_per_second"]) }),
      )));
    }
  }

  function drawTotals(data) {
    const t = data.totals;
    const dl = $("totals");
    dl.replaceChildren();
    const tile = (term, value, tone) => dl.append(el("div", { class: tone ? `tile ${tone}` : "tile" }, el("dt", { text: term }), el("dd", { text: value })));
    tile("Requests/s", rate(t.requests_per_second));
    tile("4xx/s", rate(t["4xx_per_second"]), t["4xx_per_second"] > 0 ? "warn" : null);
    tile("5xx/s", rate(t["5xx_per_second"]), t["5xx_per_second"] > 0 ? "bad" : null);
    tile("Upstream p50", ms(t.upstream_p50_ms));
    tile("Upstream p99", ms(t.upstream_p99_ms));
    tile("Connections", String(t.open_connections));
    tile("Tunnels", String(t.open_tunnels));

    const svg = $("spark");
    const series = t.per_second || [];
    const top = Math.max(1, ...series);
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const w = 600 / Math.max(1, series.length);
    series.forEach((v, i) => {
      const h = v ? Math.max(2, (v / top) * 56) : 0;
      const bar = document.createElementNS(ns, "rect");
      bar.setAttribute("x", (i * w + 1).toFixed(1));
      bar.setAttribute("y", (60 - h).toFixed(1));
      bar.setAttribute("width", Math.max(1, w - 2).toFixed(1));
      bar.setAttribute("height", h.toFixed(1));
      svg.append(bar);
    });
    $("spark-caption").textContent = `Requests per second over the last 60 seconds (peak ${top === 1 && !series.some(Boolean) ? 0 : top})`;
  }

  function trafficCells(traffic) {
    const t = traffic || {};
    return [
      el("td", { class: "num", "data-label": "Req/min", text: String(t.requests ?? 0) }),
      el("td", { class: t.errors ? "num bad" : "num", "data-label": "Errors", text: String(t.errors ?? 0) }),
      el("td", { class: "num", "data-label": "p99", text: ms(t.p99_ms) }),
    ];
  }

  function instanceRow(domainCell, instance, now) {
    const status = el("td", { "data-label": "Status" }, badge(instance.status));
    if (instance.ejected_until) status.append(" ", badge("ejected"));
    else if (!instance.routable) status.append(" ", el("span", { class: "visually-hidden", text: "not routable" }));
    const loc = instance.location ? `${instance.location.host}:${instance.location.port}` : "–";
    const why = el("td", { "data-label": "Why not routable", class: instance.reasons.length ? "why" : "why none" });
    if (!instance.reasons.length) why.textContent = "–";
    for (const reason of instance.reasons) {
      const text = reason.startsWith("ejected") && instance.ejected_until
        ? `ejected until ${clock(instance.ejected_until)} (${duration(instance.ejected_until - now)} left): a recent exchange failed`
        : reason;
      why.append(el("span", { class: "reason", text }));
    }
    const access = instance.last_access
      ? el("td", { "data-label": "lastAccess" }, el("time", { text: instance.last_access }), el("span", { class: "detail", text: ago(instance.last_access, now) }))
      : el("td", { "data-label": "lastAccess", text: "–" });
    return el("tr", { class: instance.routable ? "" : "down" },
      domainCell,
      el("td", { "data-label": "Instance", class: "mono", text: instance.index }),
      status,
      el("td", { "data-label": "Location", class: "mono", text: loc }),
      why,
      access,
      ...trafficCells(instance.traffic),
    );
  }

  function domainCell(domain, rows) {
    const target = domain.type === "service" ? `service ${domain.value}` : domain.value;
    const t = domain.traffic || {};
    return el("th", { scope: "rowgroup", rowspan: rows > 1 ? String(rows) : null, class: "domain" },
      el("span", { class: "host", text: domain.host }),
      el("span", { class: "target", text: `→ ${target}` }),
      el("span", { class: "detail", text: `${t.requests || 0} req · ${t.errors || 0} err · p99 ${ms(t.p99_ms)}` }),
    );
  }

  // Written only when it changes, so that screen readers announce changes, not every poll.
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  // Someone selecting text in the table (a hostname to copy) keeps it until they are done.
  function selecting(node) {
    const selection = window.getSelection();
    return selection !== null && !selection.isCollapsed && node.contains(selection.anchorNode);
  }

  function drawDomains(data) {
    const table = $("routes");
    if (selecting(table)) return;
    for (const old of Array.from(table.tBodies)) old.remove();
    const now = data.generated;
    for (const domain of data.domains) {
      const tbody = el("tbody", { class: "group" });
      if (domain.type === "service" && domain.instances.length) {
        domain.instances.forEach((instance, i) => {
          tbody.append(instanceRow(i === 0 ? domainCell(domain, domain.instances.length) : null, instance, now));
        });
      } else if (domain.type === "service") {
        tbody.append(el("tr", { class: "down" }, domainCell(domain, 1),
          el("td", { "data-label": "Instance", text: "–" }),
          el("td", { "data-label": "Status" }, badge("error", "no instance")),
          el("td", { "data-label": "Location", text: "–" }),
          el("td", { "data-label": "Why not routable", class: "why" }, el("span", { class: "reason", text: domain.service_exists ? `service ${domain.value} has no instance` : `service ${domain.value} does not exist` })),
          el("td", { "data-label": "lastAccess", text: "–" }),
          ...trafficCells(null)));
      } else {
        tbody.append(el("tr", {}, domainCell(domain, 1),
          el("td", { "data-label": "Instance", text: "URL" }),
          el("td", { "data-label": "Status" }, badge("url", "url")),
          el("td", { "data-label": "Location", class: "mono", text: domain.upstream || domain.value }),
          el("td", { "data-label": "Why not routable", class: "why none", text: "–" }),
          el("td", { "data-label": "lastAccess", text: "–" }),
          ...trafficCells(domain.upstream_traffic)));
      }
      table.append(tbody);
    }
    if (!data.domains.length) {
      table.append(el("tbody", {}, el("tr", {}, el("td", { colspan: "9", class: "empty", text: state.q ? `No domain contains “${state.q}”.` : "No domain is routed yet." }))));
    }
    // Kept as a table for assistive technology when phones lay the rows out as cards.
    table.setAttribute("role", "table");
    for (const node of table.querySelectorAll("thead, tbody")) node.setAttribute("role", "rowgroup");
    for (const node of table.querySelectorAll("tr")) node.setAttribute("role", "row");
    for (const node of table.querySelectorAll("td")) node.setAttribute("role", "cell");
    for (const node of table.querySelectorAll("thead th")) node.setAttribute("role", "columnheader");
    for (const node of table.querySelectorAll("tbody th")) node.setAttribute("role", "rowheader");
    const page = data.page || { number: 1, pages: 1, total: data.domains.length, per_page: 200 };
    state.page = page.number;
    state.pages = page.pages;
    const first = page.total ? (page.number - 1) * page.per_page + 1 : 0;
    const last = Math.min(page.total, page.number * page.per_page);
    setText($("count"), `${page.total.toLocaleString("en")} domain${page.total === 1 ? "" : "s"}${state.q ? ` containing “${state.q}”` : ""}` +
      (page.total ? `, showing ${first.toLocaleString("en")}–${last.toLocaleString("en")}` : "") +
      (data.scope === "answering worker" ? ` · traffic: worker ${data.answered_by}` : ""));
    setText($("pageinfo"), `Page ${page.number} of ${page.pages}`);
    $("prev").disabled = page.number <= 1;
    $("next").disabled = page.number >= page.pages;
    document.querySelector(".pager").hidden = page.pages <= 1;
  }

  // ------------------------------------------------------------------ the loop
  function remember() {
    const query = new URLSearchParams();
    if (state.q) query.set("q", state.q);
    if (state.page > 1) query.set("page", String(state.page));
    const search = query.toString();
    history.replaceState(null, "", search ? `?${search}` : location.pathname);
  }

  async function refresh() {
    clearTimeout(timer);
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    const wait = setTimeout(() => controller.abort(), 8000);
    const query = new URLSearchParams({ q: state.q, page: String(state.page) });
    try {
      const answer = await fetch(`${source}?${query}`, { headers: { Accept: "application/json" }, cache: "no-store", signal: controller.signal });
      if (!answer.ok) throw new Error(`gogeta answered ${answer.status}`);
      const data = await answer.json();
      if (controller !== inflight) return;
      drawProcess(data);
      drawTotals(data);
      drawDomains(data);
      $("alert").hidden = true;
      $("updated").textContent = `Updated ${clock(data.generated)}${state.paused ? " · paused" : ""}`;
    } catch (error) {
      if (controller !== inflight) return;  // replaced by a newer request
      $("alert").hidden = false;
      $("alert").textContent = `Cannot update: ${error.name === "AbortError" ? "no answer within 8 s" : error.message}. Retrying.`;
    } finally {
      clearTimeout(wait);
      if (controller === inflight) {
        inflight = null;
        schedule();
      }
    }
  }

  function schedule() {
    clearTimeout(timer);
    if (!state.paused && !document.hidden) timer = setTimeout(refresh, every);
  }

  let typing = null;
  $("q").value = state.q;
  $("q").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.q = $("q").value.trim();
      state.page = 1;
      remember();
      refresh();
    }, 250);
  });
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(typing);
    state.q = $("q").value.trim();
    state.page = 1;
    remember();
    refresh();
  });
  $("prev").addEventListener("click", () => { if (state.page > 1) { state.page -= 1; remember(); refresh(); } });
  $("next").addEventListener("click", () => { if (state.page < state.pages) { state.page += 1; remember(); refresh(); } });
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").setAttribute("aria-pressed", String(state.paused));
    $("pause").textContent = state.paused ? "Resume updates" : "Pause updates";
    if (state.paused) { clearTimeout(timer); $("updated").textContent += " · paused"; } else refresh();
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && !state.paused) refresh(); });
  refresh();
})();
