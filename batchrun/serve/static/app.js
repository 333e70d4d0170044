// batchrun serve: the list of runs (index.html) and one run's live page (run.html).
// No build step, no library: DOM built with textContent (run data is never parsed as HTML),
// charts drawn as inline SVG. The run page listens to /api/runs/NAME/events (Server-Sent
// Events); the list polls /api/runs. A ?token=... in the page's URL is passed on to every call.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fd6", "#c77c02", "#2e8b57", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d"];

function withToken(url) {
  if (!TOKEN) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}

// Model and ticket text is data: what a terminal would act on or what reorders a line (control
// characters, bidirectional overrides) is shown as an escape, as the command line shows it
// (analysis/textfmt.terminal_safe): every text this page sets goes through shown().
const ACTIVE = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

function shown(text) {
  return String(text).replace(ACTIVE, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? "\\x" + code.toString(16).padStart(2, "0") : "\\u" + code.toString(16).padStart(4, "0");
  });
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = shown(value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(shown(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

const fmt = {
  int: (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US")),
  num: (v, d = 1) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US", {minimumFractionDigits: d, maximumFractionDigits: d})),
  usd: (v) => (v === null || v === undefined ? "–" : "$" + Number(v).toLocaleString("en-US", {minimumFractionDigits: 4, maximumFractionDigits: 6})),
  pct: (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + "%"),
  ms: (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US") + " ms"),
  time: (v) => (v ? String(v).replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC").replace("+00:00", " UTC") : "–"),
  pts: (v) => (v === null || v === undefined ? "–" : (v >= 0 ? "+" : "") + v.toFixed(1) + " pts"),
};

function stateClass(state) { return "badge " + String(state || "unknown").replace(/ /g, "-"); }

function progressBar(done, failed, total, big) {
  const bar = el("div", {class: big ? "bar big" : "bar", role: "img",
                         "aria-label": `${done} done, ${failed} failed of ${total}`});
  if (total > 0) {
    const ok = el("span", {class: "ok"}); ok.style.width = (100 * done / total) + "%";
    const bad = el("span", {class: "fail"}); bad.style.width = (100 * failed / total) + "%";
    bar.append(ok, bad);
  }
  return bar;
}

function metric(label, value, sub, id) {
  return el("div", {class: "card metric"}, el("div", {class: "label", text: label}),
            el("div", {class: "value", id: id || null, text: value}), sub ? el("div", {class: "sub", text: sub}) : null);
}

function setConn(text) { const c = document.getElementById("conn"); if (c) c.textContent = text; }

// ------------------------------------------------------------------------------- the list

async function loadIndex() {
  try {
    const response = await fetch(withToken("/api/runs"));
    if (!response.ok) throw new Error(response.status + " " + (await response.text()));
    renderIndex(await response.json());
    setConn("updated " + new Date().toLocaleTimeString());
  } catch (error) {
    setConn("cannot reach the server: " + error.message);
  }
  setTimeout(loadIndex, 3000);
}

function renderIndex(data) {
  document.getElementById("root").textContent = shown(data.root);
  const main = document.getElementById("runs");
  const byName = Object.fromEntries(data.runs.map((r) => [r.name, r]));
  const blocks = data.jobs.map(({job, runs}) => {
    const rows = runs.map((name) => {
      const r = byName[name];
      const link = el("a", {class: "run", href: withToken("/runs/" + encodeURIComponent(r.name)), text: r.name});
      return el("tr", {"data-run": r.name},
        el("td", {}, link, r.kind === "compare" ? el("div", {class: "muted", text: r.models.length + " models: " + r.models.join(", ")}) : null),
        el("td", {}, el("span", {class: stateClass(r.state), text: r.state})),
        el("td", {}, progressBar(r.done, r.failed, r.tickets, false),
           el("div", {class: "muted", text: `${fmt.int(r.done)} done · ${fmt.int(r.failed)} failed · ${fmt.int(r.pending)} to do`})),
        el("td", {class: "num", text: r.progress === null ? "–" : fmt.pct(r.progress)}),
        el("td", {class: "num", text: fmt.usd(r.cost_usd) + (r.unpriced_results ? " *" : "")}),
        el("td", {class: "num accuracy", text: r.accuracy === null ? "–" : fmt.pct(r.accuracy)}),
        el("td", {text: fmt.time(r.started_at)}),
        el("td", {text: fmt.time(r.finished_at)}));
    });
    return el("div", {class: "job"}, el("h2", {text: job}),
      el("table", {}, el("thead", {}, el("tr", {}, ["run", "state", "progress", "", "cost", "accuracy", "started", "finished"]
        .map((h, i) => el("th", {class: [3, 4, 5].includes(i) ? "num" : null, text: h})))), el("tbody", {}, rows)));
  });
  main.replaceChildren(...(blocks.length ? blocks : [el("p", {class: "muted", text: "No run directories here yet."})]));
}

// ------------------------------------------------------------------------------- one run

function runName() { return decodeURIComponent(location.pathname.replace(/^\/runs\//, "")); }

const STOPPED = new Set(["finished", "failed", "interrupted", "budget exhausted", "stopped unexpectedly"]);

function startRun() {
  const name = runName();
  document.getElementById("title").textContent = shown(name);
  document.getElementById("back").setAttribute("href", withToken("/"));
  const source = new EventSource(withToken("/api/runs/" + encodeURIComponent(name) + "/events"));
  let last = null;  // the state of the latest snapshot
  source.addEventListener("open", () => setConn("live"));
  source.addEventListener("snapshot", (event) => {
    const run = JSON.parse(event.data);
    last = run.state;
    renderRun(run);
    setConn((STOPPED.has(run.state) ? "final state · " : "live · ") + "updated " + new Date().toLocaleTimeString());
  });
  source.addEventListener("error", () => {
    if (last !== null && STOPPED.has(last)) {  // the run ended and its server went away: keep the last page
      source.close();
      setConn("final state (the server has stopped)");
    } else {
      setConn("reconnecting…");
    }
  });
}

function recentRate(series, key, running) {
  const values = series[key] || [];
  if (!values.length) return null;
  // the last few buckets (the last one is rated over the part of it that has passed)
  const window = running ? values.slice(-3) : values;
  return window.reduce((a, b) => a + b, 0) / window.length;
}

function sumUnits(units, pick) { return units.reduce((total, u) => total + (pick(u) || 0), 0); }

// A stopped run's rate: everything its models did over the time from the first start to the last finish
// (a compare run's models may have run one after another: their averages do not add up).
function overallRate(units, key) {
  const drawn = units.filter((u) => u.series.t.length);
  if (!drawn.length) return null;
  const start = Math.min(...drawn.map((u) => u.series.origin));
  const end = Math.max(...drawn.map((u) => u.series.origin + u.series.t[u.series.t.length - 1] + u.series.width_s));
  const total = drawn.reduce((sum, u) => sum + u.series[key].reduce((a, b) => a + b, 0) * u.series.width_s, 0);
  return end > start ? total / (end - start) : null;
}

function renderRun(run) {
  document.title = shown(`${run.name} · ${run.state} · batchrun`);
  const badge = document.getElementById("state");
  badge.className = stateClass(run.state);
  badge.textContent = shown(run.state);
  const units = run.units;
  const running = run.state === "running";
  const single = units.length === 1 ? units[0] : null;

  const ov = document.getElementById("overview");
  const info = el("div", {class: "muted"},
    `job ${run.job || "?"}`, single && single.model ? ` · model ${single.model}` : "",
    run.kind === "compare" ? ` · ${units.length} models` : "",
    ` · started ${fmt.time(run.started_at)}`, run.finished_at ? ` · finished ${fmt.time(run.finished_at)}` : "",
    single && single.status.run ? ` · run ${single.status.run}` : "");
  const counts = el("div", {class: "counts"},
    el("span", {class: "ok"}, el("b", {id: "done-count", text: fmt.int(run.done)}), " done"),
    el("span", {class: "fail"}, el("b", {id: "failed-count", text: fmt.int(run.failed)}), " failed"),
    el("span", {}, el("b", {id: "todo-count", text: fmt.int(run.pending)}), " to do"),
    el("span", {class: "muted"}, el("b", {text: run.progress === null ? "–" : fmt.pct(run.progress)}), ` of ${fmt.int(run.tickets)} tickets`));
  const reqs = running ? sumUnits(units, (u) => recentRate(u.series, "requests_per_s", true))
    : overallRate(units, "requests_per_s");
  const toks = running ? sumUnits(units, (u) => recentRate(u.series, "output_tokens_per_s", true))
    : overallRate(units, "output_tokens_per_s");
  const budget = single ? single.max_cost_usd : null;
  const cards = [
    metric("requests/s", fmt.num(reqs), running ? "last seconds" : "over the last run"),
    metric("output tokens/s", fmt.num(toks), running ? "last seconds" : "over the last run"),
  ];
  if (single) {
    cards.push(metric("latency p50 / p95", `${fmt.int(single.latency_ms.p50)} / ${fmt.ms(single.latency_ms.p95)}`,
                      single.ttft_ms ? `TTFT p50 ${fmt.ms(single.ttft_ms.p50)}` : `${fmt.int(single.latency_ms.n)} results`));
    const conc = single.concurrency_settled ? String(single.concurrency_settled)
      : fmt.num(recentRate(single.series, "concurrency", running), 1);
    cards.push(metric(single.concurrency_settled ? "concurrency settled (auto)" : "concurrency observed", conc,
                      single.concurrency_settled ? "where AIMD settled" : "time in requests / wall time"));
    // requests batchrun sent, and those the endpoint (a LiteLLM proxy) reported it made upstream
    cards.push(metric("requests", fmt.int(single.requests),
                      single.upstream_requests === null || single.upstream_requests === undefined
                        ? "sent by batchrun (all runs)"
                        : `sent by batchrun; ${fmt.int(single.upstream_requests)} made upstream by the proxy`, "requests"));
  }
  const costCard = metric("cost", fmt.usd(run.cost_usd),
    budget ? `of ${fmt.usd(budget)} budget (${fmt.pct(run.cost_usd / budget)})` : (run.unpriced_results ? `${run.unpriced_results} result(s) unpriced` : "no budget set"), "cost");
  if (budget) {
    const bar = el("div", {class: "bar"}); const spent = el("span", {class: "spent"});
    spent.style.width = Math.min(100, 100 * run.cost_usd / budget) + "%"; bar.append(spent); costCard.append(bar);
  }
  cards.push(costCard);
  const st = single ? single.status : null;
  if (st && (st.cached_share !== null && st.cached_share !== undefined || st.cache_write_tokens)) {
    cards.push(metric("prompt cache", st.cached_share === null ? fmt.int(st.cached_tokens) : fmt.pct(st.cached_share),
                      `of input tokens cached · ${fmt.usd(st.prompt_cache_saved_usd)} saved`, "prompt-cache"));
  }
  if (run.accuracy !== null && run.accuracy !== undefined) cards.push(metric("accuracy", fmt.pct(run.accuracy), "on graded results", "accuracy"));
  const statusError = single && single.status.error ? el("p", {class: "message", text: "error: " + single.status.error}) : null;
  ov.replaceChildren(el("div", {class: "card"}, info, counts, progressBar(run.done, run.failed, run.tickets, true), statusError),
                     el("div", {class: "cards"}, cards));

  const charts = document.getElementById("charts");
  charts.replaceChildren(
    chartCard("requests/s", units, "requests_per_s"),
    chartCard("output tokens/s", units, "output_tokens_per_s"));

  renderModels(run);
  renderGrading(run);
  renderFailures(units);
  renderFailedTickets(run.name, units);
  renderBatches(units);
  renderAnswers(units);
}

function chartCard(title, units, key) {
  const drawn = units.filter((u) => u.series.t.length);
  const start = Math.min(...drawn.map((u) => u.series.origin));  // one time axis for every model
  const lines = drawn.map((u, i) => ({
    name: u.key || u.model || "run", color: COLORS[units.indexOf(u) % COLORS.length],
    xs: u.series.t.map((t) => t + u.series.origin - start), ys: u.series[key], width: u.series.width_s}));
  const note = units[0] && units[0].series.width_s > 1 ? ` (${units[0].series.width_s} s buckets)` : "";
  return el("div", {class: "card"}, el("h3", {text: title + " over time" + note}), lineChart(lines));
}

function lineChart(lines) {
  const W = 560, H = 170, L = 44, R = 8, T = 8, B = 22;
  const root = svg("svg", {class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none"});
  if (!lines.length) {
    root.append(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, document.createTextNode("no results yet")));
    return root;
  }
  const xmax = Math.max(1, ...lines.map((l) => l.xs[l.xs.length - 1] + l.width));
  const ymax = Math.max(1e-9, ...lines.flatMap((l) => l.ys));
  const nice = niceMax(ymax);
  const x = (v) => L + (W - L - R) * v / xmax;
  const y = (v) => T + (H - T - B) * (1 - v / nice);
  for (const f of [0, 0.5, 1]) {
    root.append(svg("line", {class: "axis", x1: L, x2: W - R, y1: y(nice * f), y2: y(nice * f)}));
    root.append(svg("text", {x: L - 4, y: y(nice * f) + 3, "text-anchor": "end"}, document.createTextNode(compact(nice * f))));
  }
  root.append(svg("text", {x: L, y: H - 6}, document.createTextNode("0 s")));
  root.append(svg("text", {x: W - R, y: H - 6, "text-anchor": "end"}, document.createTextNode(Math.round(xmax) + " s")));
  lines.forEach((l, i) => {
    const pts = l.xs.map((t, k) => `${x(t + l.width / 2).toFixed(1)},${y(l.ys[k]).toFixed(1)}`);
    if (lines.length === 1 && pts.length > 1) {
      const area = `M${x(l.xs[0] + l.width / 2)},${y(0)} L${pts.join(" L")} L${x(l.xs[l.xs.length - 1] + l.width / 2)},${y(0)} Z`;
      root.append(svg("path", {class: "area", d: area, fill: l.color}));
    }
    root.append(svg("polyline", {class: "line", points: pts.join(" "), stroke: l.color}));
    if (pts.length <= 3) {  // a line needs two points: show the few there are
      for (const p of pts) { const [cx, cy] = p.split(","); root.append(svg("circle", {cx, cy, r: 3, fill: l.color})); }
    }
    if (lines.length > 1) {
      const label = svg("text", {x: L + 6 + i * 90, y: T + 10}, document.createTextNode(shown(l.name)));
      label.style.fill = l.color;
      root.append(label);
    }
  });
  return root;
}

function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const s of [1, 2, 2.5, 5, 10]) if (v <= s * p) return s * p;
  return 10 * p;
}

function compact(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return v >= 10 ? Math.round(v).toString() : v.toFixed(1);
}

function gradeOf(run, key) {
  if (!run.grading) return null;
  return run.grading.models.find((m) => m.key === key) || (run.grading.models.length === 1 ? run.grading.models[0] : null);
}

function renderModels(run) {
  const section = document.getElementById("models");
  if (run.kind !== "compare") { section.replaceChildren(); return; }
  const running = run.state === "running";
  const rows = run.units.map((u) => {
    const g = gradeOf(run, u.key);
    const s = u.status;
    return el("tr", {"data-model": u.key},
      el("td", {}, el("b", {text: u.key}), el("div", {class: "muted", text: u.model || ""})),
      el("td", {}, el("span", {class: stateClass(u.state), text: u.state})),
      el("td", {}, progressBar(s.done, s.failed, s.tickets, false)),
      el("td", {class: "num", text: fmt.int(s.done)}), el("td", {class: "num", text: fmt.int(s.failed)}),
      el("td", {class: "num", text: fmt.int(s.pending)}),
      el("td", {class: "num", text: fmt.num(recentRate(u.series, "requests_per_s", running))}),
      el("td", {class: "num", text: fmt.ms(u.latency_ms.p50)}), el("td", {class: "num", text: fmt.ms(u.latency_ms.p95)}),
      el("td", {class: "num", text: fmt.usd(s.cost_usd)}),
      el("td", {class: "num", text: g && g.accuracy !== null ? fmt.pct(g.accuracy) : "–"}));
  });
  const heads = ["model", "state", "progress", "done", "failed", "to do", "req/s", "p50", "p95", "cost", "accuracy"];
  section.replaceChildren(el("h2", {text: "models"}), el("table", {},
    el("thead", {}, el("tr", {}, heads.map((h, i) => el("th", {class: i > 2 && i !== 1 ? "num" : null, text: h})))),
    el("tbody", {}, rows)));
}

function renderGrading(run) {
  const section = document.getElementById("grading");
  const g = run.grading;
  if (!g) {
    section.replaceChildren(run.state === "running" ? el("p", {class: "muted", text: "Accuracy and the comparison with the previous run appear when the run stops."}) : "");
    return;
  }
  const blocks = [el("h2", {text: "grading"})];
  if (g.note) blocks.push(el("p", {class: "muted", text: g.note}));
  const cards = el("div", {class: "grading"});
  blocks.push(cards);
  for (const m of g.models) {
    if (m.accuracy === null || !m.confusion) {
      blocks.push(el("p", {class: "muted", text: `${m.key}: no gold labels` + (m.gold_note ? ` (${m.gold_note})` : "")}));
      continue;
    }
    cards.append(el("div", {class: "card"},
      el("h3", {text: `${g.models.length > 1 ? m.key + ": " : ""}accuracy ${fmt.pct(m.accuracy)} (${fmt.int(m.correct)} of ${fmt.int(m.graded)}), macro F1 ${fmt.num(m.macro_f1, 3)}`}),
      confusionTable(m.confusion)));
  }
  if (g.diff && g.diff.length) {
    const rows = g.diff.map((p) => {
      const a = p.accuracy, c = p.changed;
      const delta = a.delta_points;
      const common = a.on_common ? el("div", {class: "muted",
        text: `${fmt.pts(a.on_common.delta_points)} on the ${fmt.int(a.on_common.tickets)} tickets graded in both`}) : null;
      return el("tr", {},
        el("td", {text: p.b.key}),
        el("td", {class: "num", text: `${fmt.pct(a.a)} → ${fmt.pct(a.b)}`}),
        el("td", {class: "num delta " + (delta > 0 ? "up" : delta < 0 ? "down" : "")}, fmt.pts(delta), common),
        el("td", {class: "num", text: `${fmt.int(c.count)} (${fmt.int(c.fixed)} fixed, ${fmt.int(c.broken)} broken)`}),
        el("td", {class: "num", text: `${fmt.usd(p.cost_usd.a)} → ${fmt.usd(p.cost_usd.b)}`}),
        el("td", {class: "num", text: `${fmt.ms(p.latency_p50_ms.a)} → ${fmt.ms(p.latency_p50_ms.b)}`}));
    });
    blocks.push(el("h2", {text: `change against the previous run of ${run.job}: ${g.previous}`}),
      el("table", {id: "diff"}, el("thead", {}, el("tr", {}, ["model", "accuracy", "change", "answers changed", "cost", "latency p50"]
        .map((h, i) => el("th", {class: i ? "num" : null, text: h})))), el("tbody", {}, rows)));
    const examples = g.diff.flatMap((p) => p.changed.examples || []);
    if (examples.length) {
      blocks.push(el("table", {}, el("thead", {}, el("tr", {}, ["ticket", "before → now", "gold"].map((h) => el("th", {text: h})))),
        el("tbody", {}, examples.map((e) => el("tr", {}, el("td", {text: e.id}), el("td", {text: `${e.a} → ${e.b}`}), el("td", {text: e.gold || "–"}))))));
    }
  } else if (g.previous === null) {
    blocks.push(el("p", {class: "muted", text: "No earlier run of this job to compare with."}));
  }
  section.replaceChildren(...blocks);
}

function confusionTable(conf) {
  const peak = Math.max(1, ...conf.matrix.flat());
  const head = el("tr", {}, el("th", {text: "gold \\ predicted"}), conf.columns.map((c) => el("th", {class: "num", text: c})));
  const rows = conf.rows.map((label, i) => el("tr", {}, el("th", {text: label}), conf.matrix[i].map((n, j) => {
    const cell = el("td", {class: "cell", text: fmt.int(n)});
    const strength = n / peak;
    cell.style.background = conf.columns[j] === label ? `rgba(46,139,87,${0.1 + 0.5 * strength})` : (n ? `rgba(192,57,43,${0.08 + 0.45 * strength})` : "");
    return cell;
  })));
  return el("table", {class: "confusion"}, el("thead", {}, head), el("tbody", {}, rows));
}

function renderFailures(units) {
  const section = document.getElementById("failures");
  const rows = [];
  for (const u of units) {
    for (const f of u.failures) {
      const latest = el("div", {}, f.latest.map((m) => el("div", {class: "message",
        text: `${m.id}${m.status_code ? " · " + m.status_code : ""}: ${m.message || ""}`})));
      rows.push(el("tr", {}, units.length > 1 ? el("td", {text: u.key}) : null, el("td", {text: f.kind}),
        el("td", {class: "num", text: fmt.int(f.tickets)}), el("td", {}, latest)));
    }
  }
  if (!rows.length) { section.replaceChildren(); return; }
  const heads = [...(units.length > 1 ? ["model"] : []), "kind", "tickets", "latest messages"];
  section.replaceChildren(el("h2", {text: "failures by kind"}), el("table", {},
    el("thead", {}, el("tr", {}, heads.map((h) => el("th", {class: h === "tickets" ? "num" : null, text: h})))),
    el("tbody", {}, rows)));
}

function renderFailedTickets(name, units) {
  const section = document.getElementById("failed-tickets");
  const rows = [];
  for (const u of units) {
    for (const t of u.failed_tickets || []) {
      const open = el("button", {type: "button", class: "ticket-link", text: t.id});
      open.addEventListener("click", () => showTicket(name, t.id));
      rows.push(el("tr", {}, units.length > 1 ? el("td", {text: u.key}) : null, el("td", {}, open),
        el("td", {text: t.kind}), el("td", {text: t.permanent ? "permanent" : "transient"}),
        el("td", {class: "num", text: t.status_code ? String(t.status_code) : "–"}),
        el("td", {class: "message", text: t.message || ""})));
    }
  }
  if (!rows.length) { section.replaceChildren(); return; }
  const heads = [...(units.length > 1 ? ["model"] : []), "ticket", "kind", "class", "status", "message"];
  section.replaceChildren(el("h2", {text: "failed tickets (latest first; click one for its attempts)"}),
    el("table", {id: "failed-table"}, el("thead", {}, el("tr", {}, heads.map((h) => el("th", {text: h})))),
      el("tbody", {}, rows)));
}

async function showTicket(name, id) {
  const section = document.getElementById("ticket");
  section.replaceChildren(el("h2", {text: `ticket ${id}`}), el("p", {class: "muted", text: "loading…"}));
  let detail;
  try {
    const response = await fetch(withToken(`/api/runs/${encodeURIComponent(name)}/tickets/${encodeURIComponent(id)}`));
    detail = await response.json();
    if (!response.ok) throw new Error(detail.error || response.statusText);
  } catch (err) {
    section.replaceChildren(el("h2", {text: `ticket ${id}`}), el("p", {class: "message", text: String(err.message || err)}));
    return;
  }
  const blocks = [el("h2", {text: `ticket ${detail.id}`})];
  for (const [key, part] of Object.entries(detail.models)) {
    const card = el("div", {class: "card", id: "ticket-detail"});
    if (key) card.append(el("h3", {text: `model ${key}`}));
    card.append(el("p", {}, el("b", {class: "verdict", text: part.verdict})));
    const attempts = [];
    for (const run of part.runs) {
      for (const a of run.attempts) {
        attempts.push(el("tr", {}, el("td", {text: String(run.run)}), el("td", {text: String(a.attempt ?? "–")}),
          el("td", {text: fmt.time(a.at || a.finished_at)}), el("td", {text: a.kind + (a.status_code ? " " + a.status_code : "")}),
          el("td", {class: "num", text: fmt.ms(a.latency_ms)}),
          el("td", {class: "num", text: a.tokens ? `${a.tokens[0]}+${a.tokens[1]}` : "–"}),
          el("td", {class: "num", text: a.cost_usd === null || a.cost_usd === undefined ? "–" : fmt.usd(a.cost_usd)}),
          el("td", {text: a.model_key || a.model || ""}), el("td", {class: "message", text: a.message || ""})));
      }
    }
    card.append(el("table", {class: "attempts"}, el("thead", {}, el("tr", {},
      ["run", "attempt", "time", "kind", "latency", "tokens", "cost", "model", "message"].map((h) => el("th", {text: h})))),
      el("tbody", {}, attempts)));
    if (part.messages) {
      card.append(el("h3", {text: "messages"}),
        ...part.messages.map((m) => el("div", {class: "message", text: `[${m.role}] ${m.content}`})));
    } else {
      card.append(el("p", {class: "muted", text: "messages: " + (part.messages_note || "–")}));
    }
    if (part.answer) card.append(el("h3", {text: "answer"}), el("div", {class: "message", text: String(part.answer.output ?? "")}));
    blocks.push(card);
  }
  section.replaceChildren(...blocks);
}

function renderBatches(units) {
  const section = document.getElementById("batches");
  const rows = [];
  for (const u of units) for (const p of u.batches || []) {
    rows.push(el("tr", {}, el("td", {text: String(p.part)}), el("td", {text: p.model || u.key || ""}),
      el("td", {}, el("span", {class: stateClass(p.state), text: p.state})),
      el("td", {class: "num", text: fmt.int(p.requests)}), el("td", {class: "num", text: fmt.int(p.completed)}),
      el("td", {class: "num", text: fmt.int(p.failed)})));
  }
  if (!rows.length) { section.replaceChildren(); return; }
  section.replaceChildren(el("h2", {text: "batch parts"}), el("table", {},
    el("thead", {}, el("tr", {}, ["part", "model", "state", "requests", "completed", "failed"].map((h) => el("th", {text: h})))),
    el("tbody", {}, rows)));
}

function renderAnswers(units) {
  const section = document.getElementById("answers");
  const answers = units.flatMap((u) => u.recent_answers || []);
  if (!answers.length) { section.replaceChildren(); return; }
  section.replaceChildren(el("h2", {text: "latest answers"}), el("table", {},
    el("tbody", {}, answers.slice(0, 10).map((a) => el("tr", {}, el("td", {text: a.id}), el("td", {class: "message", text: a.answer || ""}))))));
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.page === "run") startRun(); else loadIndex();
});
