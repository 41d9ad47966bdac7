"use strict";
// mpdistill view: draws the page from the JSON in #page-data. Per-sample metadata comes as columns
// (one array per field, -1 where a value is missing); filters are one pass over them as typed
// arrays and only the visible page of rows is drawn, so a run of 100,000 samples stays responsive.
// Word diffs are computed only when a sample is opened.

const DATA = JSON.parse(document.getElementById("page-data").textContent);
const MISSING = -1;
const PAGE_SIZE = 50;
const KIND_NAMES = { run: "Training run", eval: "Evaluation", comparison: "Comparison" };
const PALETTE = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83", "#e16f24", "#6e7781",
  "#d63384", "#4d2d8c", "#57606a", "#2da44e"];
const GOOD = "#2da44e";
const BAD = "#cf222e";
// A diff is an edit script of at most DIFF_MAX_EDITS insertions and deletions over at most
// DIFF_MAX_TOKENS tokens: Myers' algorithm costs (tokens × edits), so this bounds the time one
// opened sample can take. Past it, lines are compared instead of words; past that, nothing is marked.
const DIFF_MAX_TOKENS = 20000;
const DIFF_MAX_EDITS = 2000;

/* ---------------------------------------------------------------------------------------------
 * DOM and number helpers. */

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  return appendTo(node, children);
}

// Appends each child (element or text), skipping null, undefined and false.
function appendTo(node, ...children) {
  for (const child of children.flat(2)) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function escapeHtml(text) {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

function fmtInt(n) {
  return n.toLocaleString("en-US");
}

function fmtPct(x, digits = 1) {
  return x === null || x === undefined ? "–" : `${(100 * x).toFixed(digits)}%`;
}

// An axis label: as short as the number allows.
function fmtTick(x) {
  const size = Math.abs(x);
  if (size >= 1000) return fmtInt(x);
  if (size >= 0.01 || size === 0) return String(Number(x.toPrecision(4)));
  return x.toExponential().replace(/\.?0+e/, "e");
}

function fmtNum(x) {
  if (x === null || x === undefined) return "–";
  const size = Math.abs(x);
  if (size >= 1000) return x.toLocaleString("en-US", { maximumFractionDigits: 0 });
  if (size >= 10) return x.toFixed(1);
  if (size === 0) return "0";
  return size >= 0.01 ? x.toFixed(3) : x.toExponential(2);
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function badge(text, tone) {
  return h("span", { class: `badge ${tone}`, text });
}

function countValues(codes, size) {
  const counts = new Array(size).fill(0);
  for (const code of codes) if (code >= 0) counts[code]++;
  return counts;
}

function anyPresent(values) {
  return values.some((v) => v !== MISSING);
}

function warningsList(warnings) {
  return warnings.length ? h("div", { class: "warning" }, warnings.map((w) => h("div", { text: w }))) : null;
}

function facts(pairs) {
  return h("ul", { class: "facts" },
    pairs.filter(([, value]) => value !== null && value !== undefined && value !== "")
      .map(([name, value]) => h("li", {}, h("b", { text: `${name}: ` }), String(value))));
}

/* ---------------------------------------------------------------------------------------------
 * Filter controls: each calls `onchange` when the user changes it. */

function selectControl(label, options, onchange) {
  const select = h("select", { onchange },
    options.map(([value, text]) => h("option", { value, text })));
  return { element: h("label", {}, label, select), get value() { return select.value; } };
}

function numberControl(label, value, onchange) {
  const input = h("input", { type: "number", value, step: 1, oninput: debounce(onchange, 250) });
  return { element: h("label", {}, label, input), get value() { return input.value === "" ? null : Number(input.value); } };
}

function searchControl(label, placeholder, onchange) {
  const input = h("input", { type: "search", placeholder, oninput: debounce(onchange, 250) });
  return { element: h("label", {}, label, input), get value() { return input.value.trim().toLowerCase(); } };
}

function checkboxControl(label, checked, onchange) {
  const input = h("input", { type: "checkbox", checked, onchange });
  return { element: h("label", {}, input, label), get value() { return input.checked; } };
}

/* ---------------------------------------------------------------------------------------------
 * A paginated table of rows: `filter(test)` keeps the indices for which test(i) is true (one pass),
 * and only the current page is drawn. Clicking a row opens its detail below it. */

function createBrowser({ total, noun, headers, row, detail }) {
  const matches = new Int32Array(total);
  let count = 0;
  let page = 0;
  let reversed = false;
  const countLine = h("p", { class: "count" });
  const tbody = h("tbody");
  const pagers = [pagerElement(), pagerElement()];
  const table = h("table", { class: "rows" },
    h("thead", {}, h("tr", {}, headers.map(([label, numeric]) => h("th", { class: numeric ? "num" : null, text: label })))),
    tbody);

  function pagerElement() {
    const prev = h("button", { class: "prev", text: "‹ Previous", onclick: () => turn(page - 1) });
    const next = h("button", { class: "next", text: "Next ›", onclick: () => turn(page + 1) });
    const where = h("span", { class: "where muted" });
    return { element: h("div", { class: "pager" }, prev, where, next), prev, next, where };
  }

  function pages() {
    return Math.max(1, Math.ceil(count / PAGE_SIZE));
  }

  function turn(to) {
    page = Math.min(Math.max(0, to), pages() - 1);
    draw();
  }

  function indexAt(position) {
    return matches[reversed ? count - 1 - position : position];
  }

  function draw() {
    countLine.replaceChildren(h("b", { text: fmtInt(count) }), ` of ${fmtInt(total)} ${noun}`);
    countLine.dataset.count = String(count);
    for (const p of pagers) {
      p.prev.disabled = page === 0;
      p.next.disabled = page >= pages() - 1;
      p.where.textContent = `page ${fmtInt(page + 1)} of ${fmtInt(pages())}`;
    }
    const rows = [];
    for (let position = page * PAGE_SIZE; position < Math.min(count, (page + 1) * PAGE_SIZE); position++) {
      rows.push(rowElement(indexAt(position)));
    }
    tbody.replaceChildren(...rows);
  }

  function rowElement(i) {
    const { cells, attrs } = row(i);
    const tr = h("tr", { class: "row", ...attrs },
      cells.map(([content, numeric]) => h("td", { class: numeric ? "num" : null }, content)));
    tr.addEventListener("click", () => toggle(tr, i));
    return tr;
  }

  function toggle(tr, i) {
    const open = tr.classList.contains("open");
    for (const other of tbody.querySelectorAll("tr.open")) other.classList.remove("open");
    for (const shown of tbody.querySelectorAll("tr.detail")) shown.remove();
    if (open) return;
    tr.classList.add("open");
    tr.after(h("tr", { class: "detail" }, h("td", { colspan: headers.length }, detail(i))));
  }

  function filter(test, newestFirst = false) {
    count = 0;
    for (let i = 0; i < total; i++) if (test(i)) matches[count++] = i;
    reversed = newestFirst;
    page = 0;
    draw();
  }

  return { element: h("div", {}, countLine, pagers[0].element, table, pagers[1].element), filter };
}

/* ---------------------------------------------------------------------------------------------
 * Charts: inline SVG. Each series is a polyline with one point per step that has a value. */

const BOX = { width: 480, height: 220, left: 54, right: 14, top: 12, bottom: 28 };

function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  const f = raw / power;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * power;
}

function niceTicks(lo, hi, count) {
  const step = niceStep((hi - lo) / count || 1);
  const ticks = [];
  for (let t = Math.floor(lo / step) * step; t <= hi + step / 2; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks.filter((t) => t >= lo - step / 2);
}

function linear(domain, range) {
  const span = domain[1] - domain[0] || 1;
  return (v) => range[0] + ((v - domain[0]) / span) * (range[1] - range[0]);
}

function valueRange(seriesValues) {
  let lo = 0;
  let hi = -Infinity;
  for (const values of seriesValues) {
    for (const v of values) {
      if (v === null) continue;
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
  }
  if (!(hi > lo)) hi = lo + 1;
  const ticks = niceTicks(lo, hi, 4);
  return [ticks[0], Math.max(ticks[ticks.length - 1], hi)];
}

function stepRange(xs) {
  const lo = xs[0];
  const hi = xs[xs.length - 1];
  return lo === hi ? [lo - 1, hi + 1] : [lo, hi];
}

function chartFrame(xDomain, yDomain, tickFormat) {
  const root = svg("svg", { viewBox: `0 0 ${BOX.width} ${BOX.height}`, role: "img" });
  const x = linear(xDomain, [BOX.left, BOX.width - BOX.right]);
  const y = linear(yDomain, [BOX.height - BOX.bottom, BOX.top]);
  const grid = svg("g", { class: "grid" });
  const axis = svg("g", { class: "axis" });
  for (const t of niceTicks(yDomain[0], yDomain[1], 4)) {
    if (t < yDomain[0] || t > yDomain[1]) continue;
    grid.append(svg("line", { x1: BOX.left, x2: BOX.width - BOX.right, y1: y(t), y2: y(t) }));
    const label = svg("text", { x: BOX.left - 6, y: y(t) + 3, "text-anchor": "end" });
    label.textContent = tickFormat(t);
    axis.append(label);
  }
  for (const t of niceTicks(xDomain[0], xDomain[1], 6)) {
    if (t < xDomain[0] || t > xDomain[1] || !Number.isInteger(t)) continue;
    const label = svg("text", { x: x(t), y: BOX.height - BOX.bottom + 14, "text-anchor": "middle" });
    label.textContent = fmtInt(t);
    axis.append(label);
  }
  const bottom = BOX.height - BOX.bottom;
  axis.append(svg("line", { x1: BOX.left, x2: BOX.width - BOX.right, y1: bottom, y2: bottom }));
  root.append(grid, axis);
  return { root, x, y };
}

// A legend where the title does not already name the one series.
function figure(title, note, legendSeries, body, extra = null) {
  const named = legendSeries.length > 1 || (legendSeries.length === 1 && legendSeries[0].name !== title.toLowerCase());
  const legend = named
    ? h("div", { class: "legend" },
      legendSeries.map((s) => h("span", {}, h("i", { style: `background:${s.color}` }), s.name)))
    : null;
  return h("figure", { class: "chart", "data-title": title },
    h("figcaption", {}, title, extra, note ? h("div", { class: "note", text: note }) : null), legend, body);
}

function lineChart({ title, note, ...plot }) {
  return figure(title, note, plot.series, linePlot(plot));
}

// percent: values are shares, drawn from 0 to 100%.
function linePlot({ xs, series, percent = false, xLabel = "step" }) {
  const yFormat = percent ? fmtPct : fmtNum;
  const yRange = percent ? [0, 1] : valueRange(series.map((s) => s.values));
  const frame = chartFrame(stepRange(xs), yRange, percent ? (t) => fmtPct(t, 0) : fmtTick);
  for (const s of series) {
    let points = [];
    const flush = () => {
      if (points.length) {
        frame.root.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: s.color,
          "stroke-width": 1.6, "data-series": s.name }));
      }
      points = [];
    };
    s.values.forEach((v, i) => {
      if (v === null) flush();
      else points.push(`${frame.x(xs[i]).toFixed(1)},${frame.y(v).toFixed(1)}`);
    });
    flush();
  }
  addHover(frame, xs, series, yFormat, xLabel);
  return frame.root;
}

// Shares stacked: each series' values are drawn on top of the ones before.
function stackedChart({ title, note, xs, series }) {
  const totals = xs.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const frame = chartFrame(stepRange(xs), [0, Math.min(1, valueRange([totals])[1])], (t) => fmtPct(t, 0));
  const below = xs.map(() => 0);
  for (const s of series) {
    const top = below.map((b, i) => b + (s.values[i] || 0));
    const upper = xs.map((x, i) => `${frame.x(x).toFixed(1)},${frame.y(top[i]).toFixed(1)}`);
    const lower = xs.map((x, i) => `${frame.x(x).toFixed(1)},${frame.y(below[i]).toFixed(1)}`).reverse();
    frame.root.append(svg("polygon", { points: upper.concat(lower).join(" "), fill: s.color, "fill-opacity": 0.75,
      stroke: s.color, "stroke-width": 0.5, "data-series": s.name }));
    top.forEach((v, i) => { below[i] = v; });
  }
  addHover(frame, xs, series, fmtPct, "step");
  return figure(title, note, series, frame.root);
}

function histogramChart({ title, note, edges, series }) {
  const totals = edges.slice(1).map((_, b) => series.reduce((sum, s) => sum + s.counts[b], 0));
  const frame = chartFrame([edges[0], edges[edges.length - 1]], valueRange([totals]), fmtTick);
  const below = totals.map(() => 0);
  for (const s of series) {
    s.counts.forEach((c, b) => {
      if (!c) return;
      const x0 = frame.x(edges[b]);
      const x1 = frame.x(edges[b + 1]);
      frame.root.append(svg("rect", { x: x0 + 0.5, width: Math.max(0.5, x1 - x0 - 1), y: frame.y(below[b] + c),
        height: frame.y(below[b]) - frame.y(below[b] + c), fill: s.color, "data-series": s.name }));
      below[b] += c;
    });
  }
  return figure(title, note, series, frame.root);
}

function nearestIndex(xs, x) {
  let lo = 0;
  let hi = xs.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo > 0 && x - xs[lo - 1] < xs[lo] - x ? lo - 1 : lo;
}

// A dashed line at the step under the pointer and each series' value there.
function addHover(frame, xs, series, yFormat, xLabel) {
  const root = frame.root;
  const line = svg("line", { class: "hover-line", y1: BOX.top, y2: BOX.height - BOX.bottom, visibility: "hidden" });
  const tip = svg("g", { visibility: "hidden" });
  const background = svg("rect", { class: "tooltip-bg", rx: 4 });
  const text = svg("text", { class: "tooltip" });
  tip.append(background, text);
  root.append(line, tip);
  const invert = linear([BOX.left, BOX.width - BOX.right], [xs[0], xs[xs.length - 1]]);
  root.addEventListener("mousemove", (event) => {
    const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(root.getScreenCTM().inverse());
    const i = nearestIndex(xs, invert(point.x));
    const at = frame.x(xs[i]);
    line.setAttribute("x1", at);
    line.setAttribute("x2", at);
    const value = (v) => (v === null ? "–" : yFormat(v));
    const lines = [`${xLabel} ${fmtInt(xs[i])}`, ...series.map((s) => `${s.name}: ${value(s.values[i])}`)];
    text.replaceChildren(...lines.map((content, k) => {
      const span = svg("tspan", { x: 0, dy: k ? 13 : 0 });
      span.textContent = content;
      return span;
    }));
    const width = 8 + 6.2 * Math.max(...lines.map((l) => l.length));
    const left = at + width + 12 > BOX.width ? at - width - 8 : at + 8;
    text.setAttribute("transform", `translate(${left + 4},${BOX.top + 12})`);
    background.setAttribute("x", left);
    background.setAttribute("y", BOX.top);
    background.setAttribute("width", width);
    background.setAttribute("height", 6 + 13 * lines.length);
    line.setAttribute("visibility", "visible");
    tip.setAttribute("visibility", "visible");
  });
  root.addEventListener("mouseleave", () => {
    line.setAttribute("visibility", "hidden");
    tip.setAttribute("visibility", "hidden");
  });
}

/* ---------------------------------------------------------------------------------------------
 * Word diff (Myers' O(ND) algorithm) between a student's trace and its rewrite. */

const SAME = 0;
const DELETE = 1;
const INSERT = 2;

function tokenize(text, level) {
  const pattern = level === "word" ? /\S+\s*|\s+/g : /[^\n]*\n|[^\n]+/g;
  return text.match(pattern) || [];
}

// Tokens as integers, equal when they are equal up to surrounding whitespace.
function tokenIds(tokens, ids) {
  return Int32Array.from(tokens, (token) => {
    const key = token.trim();
    if (!ids.has(key)) ids.set(key, ids.size);
    return ids.get(key);
  });
}

// The edit script turning a into b (SAME / DELETE / INSERT per step), or null past DIFF_MAX_EDITS.
function editScript(a, b) {
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA--;
    endB--;
  }
  const middle = myers(a.subarray(start, endA), b.subarray(start, endB));
  if (middle === null) return null;
  const script = new Array(start).fill(SAME);
  for (const op of middle) script.push(op);
  for (let k = endA; k < a.length; k++) script.push(SAME);
  return script;
}

function myers(a, b) {
  const n = a.length;
  const m = b.length;
  const maxEdits = Math.min(n + m, DIFF_MAX_EDITS);
  const offset = maxEdits + 1;
  const v = new Int32Array(2 * maxEdits + 3); // furthest x on each diagonal k = x - y, at v[offset + k]
  const trace = []; // trace[d]: v before round d, for k in [-d-1, d+1]
  for (let d = 0; d <= maxEdits; d++) {
    trace.push(v.slice(offset - d - 1, offset + d + 2));
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[offset + k - 1] < v[offset + k + 1]) ? v[offset + k + 1] : v[offset + k - 1] + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) {
        x++;
        y++;
      }
      v[offset + k] = x;
      if (x >= n && y >= m) return backtrack(trace, n, m);
    }
  }
  return null;
}

function backtrack(trace, n, m) {
  const script = [];
  let x = n;
  let y = m;
  for (let d = trace.length - 1; d >= 0; d--) {
    const v = trace[d];
    const at = (k) => v[k + d + 1];
    const k = x - y;
    const previousK = k === -d || (k !== d && at(k - 1) < at(k + 1)) ? k + 1 : k - 1;
    const previousX = at(previousK);
    const previousY = previousX - previousK;
    while (x > previousX && y > previousY) {
      script.push(SAME);
      x--;
      y--;
    }
    if (d > 0) script.push(x === previousX ? INSERT : DELETE);
    x = previousX;
    y = previousY;
  }
  return script.reverse();
}

// {level, before, after, removed, total}: each side as HTML with what the rewrite removed (before)
// and added (after) marked, and how many of the `total` words (or lines) were removed; null when the
// texts are too long or too different to diff in time.
function diffTexts(before, after) {
  for (const level of ["word", "line"]) {
    const a = tokenize(before, level);
    const b = tokenize(after, level);
    if (a.length + b.length > DIFF_MAX_TOKENS) continue;
    const ids = new Map();
    const script = editScript(tokenIds(a, ids), tokenIds(b, ids));
    if (script !== null) return { level, ...markEdits(script, a, b) };
  }
  return null;
}

function markEdits(script, a, b) {
  const left = [];
  const right = [];
  let i = 0;
  let j = 0;
  let removed = 0;
  for (const op of script) {
    if (op === SAME) {
      left.push(["", a[i++]]);
      right.push(["", b[j++]]);
    } else if (op === DELETE) {
      if (a[i].trim()) removed++;
      left.push(["del", a[i++]]);
    } else {
      right.push(["ins", b[j++]]);
    }
  }
  return { before: spans(left), after: spans(right), removed, total: a.filter((t) => t.trim()).length };
}

// Consecutive tokens of one kind in one span.
function spans(parts) {
  const out = [];
  let kind = null;
  let run = [];
  const flush = () => {
    if (!run.length) return;
    const text = escapeHtml(run.join(""));
    out.push(kind ? `<span class="${kind}">${text}</span>` : text);
    run = [];
  };
  for (const [k, text] of parts) {
    if (k !== kind) {
      flush();
      kind = k;
    }
    run.push(text);
  }
  flush();
  return out.join("");
}

function tracePane(title, body) {
  const pre = h("pre", { class: "trace" });
  if (typeof body === "string") pre.textContent = body;
  else pre.innerHTML = body.html;
  return h("div", { class: "pane" }, h("h4", { text: title }), pre);
}

// " (N tokens)", or nothing where the count is missing.
function tokenCount(n) {
  return n === MISSING ? "" : ` (${fmtInt(n)} tokens)`;
}

function studentAndRewrite(student, rewrite, studentTokens, rewriteTokens) {
  const diff = diffTexts(student, rewrite);
  const note = diff === null
    ? "The two texts are too long and too different to mark what the rewrite removed."
    : `${diff.level === "word" ? "Word" : "Line"} diff: struck through in red is what the rewrite removed ` +
      `(${fmtInt(diff.removed)} of ${fmtInt(diff.total)} ${diff.level}s), in green what it added.` +
      (diff.level === "line" ? " (The texts are too long, or too different, for a word diff.)" : "");
  return [
    h("p", { class: "diff-note", text: note }),
    h("div", { class: "side-by-side" },
      tracePane(`Student trace${tokenCount(studentTokens)}`, diff ? { html: diff.before } : student),
      tracePane(`Teacher rewrite${tokenCount(rewriteTokens)}`, diff ? { html: diff.after } : rewrite)),
  ];
}

/* ---------------------------------------------------------------------------------------------
 * The page: one tab per section, each drawn the first time it is shown. */

function main() {
  const tabs = document.getElementById("tabs");
  const container = document.getElementById("sections");
  const draw = { run: drawRun, eval: drawEval, comparison: drawComparison };
  const shown = DATA.sections.map((section, i) => {
    const panel = h("section", { class: "section", id: `section-${i}`, role: "tabpanel", hidden: true,
      "data-kind": section.kind });
    const button = h("button", { class: "tab", role: "tab", "aria-selected": "false", "data-section": i,
      onclick: () => show(i) }, h("span", { class: "kind", text: KIND_NAMES[section.kind] }), " ", section.label);
    container.append(panel);
    tabs.append(button);
    return { section, panel, button, drawn: false };
  });

  function show(i) {
    shown.forEach((s, j) => {
      s.panel.hidden = i !== j;
      s.button.setAttribute("aria-selected", String(i === j));
    });
    const target = shown[i];
    if (!target.drawn) {
      draw[target.section.kind](target.section, target.panel);
      target.drawn = true;
    }
  }

  show(0);
}

function textsNote(included, total, searchWhat) {
  if (included === total) return `Texts of all ${fmtInt(total)} samples are on this page.`;
  return `Texts for ${fmtInt(included)} of ${fmtInt(total)} samples are on this page (drawn reproducibly, spread ` +
    `over the file and its groups); rerun mpdistill view with --max-texts N for more. The text search looks in ` +
    `${searchWhat} of those samples only; every other filter and count covers all ${fmtInt(total)}.`;
}

// A sample list: the note on which texts are on the page, the filters, the table (drawn filtered).
function samplesPanel(note, controls, browser, update) {
  const element = h("div", {},
    h("p", { class: "muted", text: note }),
    h("div", { class: "filters" }, Object.values(controls).filter(Boolean).map((control) => control.element)),
    browser.element);
  update();
  return element;
}

/* ---------------------------------------------------------------------------------------------
 * A training run: its curves and its samples. */

function drawRun(section, panel) {
  const recipe = Object.entries(section.recipe);
  appendTo(panel,
    h("h2", { text: `Training run ${section.label}` }),
    facts([["folder", section.path], ["status", section.status], ...recipe]),
    warningsList(section.warnings),
    h("h2", { text: "Curves" }),
    runCharts(section));
  appendTo(panel, h("h2", { text: "Samples" }), section.rollouts
    ? rolloutBrowser(section.rollouts)
    : h("p", { class: "muted",
      text: "No rollouts.jsonl: this method does not record its samples, or none is written yet." }));
}

function logSeries(log, pairs) {
  return pairs
    .filter(([key]) => log.metrics[key] && log.metrics[key].some((v) => v !== null))
    .map(([key, name], k) => ({ name, values: log.metrics[key], color: PALETTE[k % PALETTE.length] }));
}

function runCharts(section) {
  const grid = h("div", { class: "charts" });
  const log = section.log;
  const add = (chart) => appendTo(grid, chart);
  if (log) {
    const line = (title, note, pairs, options = {}) => {
      const series = logSeries(log, pairs);
      if (series.length) add(lineChart({ title, note, xs: log.steps, series, ...options }));
    };
    line("Acceptance rate", "share of each logged step's samples (train_log.jsonl)",
      [["mpd/acceptance_rate", "rewrites accepted"], ["kd/kept_rate", "teacher samples kept"]], { percent: true });
    line("Compression ratio", "rewrite ÷ student tokens of the accepted rewrites; lower is shorter",
      [["mpd/compression_ratio", "compression ratio"]]);
    const lengths = log.metrics["mpd/student_tokens"]
      ? [["mpd/student_tokens", "student samples"], ["mpd/trained_tokens", "trained on"],
        ["mpd/rewrite_tokens", "accepted rewrites"]]
      : [["completions/mean_length", "samples"]];
    line("Tokens per sample", "mean over each logged step", lengths);
    const reasons = Object.keys(log.metrics).filter((k) => k.startsWith("mpd/reject/") && log.metrics[k].some((v) => v));
    if (reasons.length) {
      add(stackedChart({ title: "Rejection reasons", note: "share of each logged step's samples, by reason",
        xs: log.steps, series: logSeries(log, reasons.map((k) => [k, k.slice("mpd/reject/".length)])) }));
    }
    line("Loss", null, [["loss", "loss"]]);
    add(metricPicker(log));
  }
  const accuracy = section.rollouts && section.rollouts.accuracy;
  if (accuracy && accuracy.steps.length) {
    add(lineChart({ title: "Student accuracy",
      note: "share of each step's student samples whose answer is right (rollouts.jsonl, steps from 0)",
      xs: accuracy.steps, percent: true,
      series: [{ name: "correct", color: GOOD, values: accuracy.correct.map((c, i) => c / accuracy.graded[i]) }] }));
  }
  return grid.children.length ? grid : h("p", { class: "muted", text: "No train_log.jsonl yet: no step is logged." });
}

// Any logged metric, chosen from a list (none when nothing is logged but the step).
function metricPicker(log) {
  const names = Object.keys(log.metrics).filter((k) => log.metrics[k].some((v) => v !== null));
  if (!names.length) return null;
  const holder = h("div");
  const select = h("select", { onchange: () => drawMetric() },
    names.map((name) => h("option", { value: name, text: name })));
  select.value = names.includes("learning_rate") ? "learning_rate" : names[0];
  function drawMetric() {
    holder.replaceChildren(linePlot({ xs: log.steps, series: logSeries(log, [[select.value, select.value]]) }));
  }
  drawMetric();
  return figure("Any logged metric", null, [], holder, select);
}

function typedColumns(columns, names) {
  const typed = {};
  for (const name of names) typed[name] = Int32Array.from(columns[name]);
  return typed;
}

function rolloutBrowser(r) {
  const c = typedColumns(r.columns, ["line", "step", "reason", "accepted", "student_tokens", "rewrite_tokens",
    "teacher_tokens", "trained_on", "correct", "text"]);
  const reasonCounts = countValues(c.reason, r.reasons.length);
  const trainedCounts = countValues(c.trained_on, r.trained_on_names.length);
  const graded = anyPresent(c.correct);
  const capped = r.texts.length < r.n;
  let firstStep = Infinity;
  let lastStep = -Infinity;
  for (const s of c.step) {
    firstStep = Math.min(firstStep, s);
    lastStep = Math.max(lastStep, s);
  }
  const haystacks = new Map(); // text index -> its texts, lower-cased, built on the first search
  const searchable = (t) => {
    if (!haystacks.has(t)) {
      const x = r.texts[t];
      haystacks.set(t, [r.prompts[x.prompt], x.student, x.rewrite, x.teacher].filter(Boolean).join("\n").toLowerCase());
    }
    return haystacks.get(t);
  };
  const apply = () => update();
  const byCount = (names, counts) => names.map((name, code) => [code, name, counts[code]])
    .filter(([, , n]) => n).sort((p, q) => q[2] - p[2]).map(([code, name, n]) => [String(code), `${name} (${fmtInt(n)})`]);
  const controls = {
    from: numberControl("steps", firstStep, apply),
    to: numberControl("to", lastStep, apply),
    verdict: selectControl("verdict", [["all", "all"], ["accepted", "accepted"], ["rejected", "not accepted"]], apply),
    reason: selectControl("reason", [["-1", `all (${fmtInt(r.n)})`], ...byCount(r.reasons, reasonCounts)], apply),
    trained: selectControl("trained on", [["-1", "all"], ...byCount(r.trained_on_names, trainedCounts)], apply),
    correct: graded
      ? selectControl("student answer", [["all", "all"], ["1", "right"], ["0", "wrong"], ["-1", "not graded"]], apply)
      : null,
    withText: capped ? checkboxControl("only samples with texts on the page", false, apply) : null,
    search: searchControl("search", "prompt, trace or rewrite", apply),
    order: selectControl("order", [["oldest", "oldest first"], ["newest", "newest first"]], apply),
  };
  const columns = rolloutColumns(r, c, graded);
  const browser = createBrowser({
    total: r.n,
    noun: "samples",
    headers: columns.map(([label, numeric]) => [label, numeric]),
    row: (i) => ({
      cells: columns.map(([, numeric, cell]) => [cell(i), numeric]),
      attrs: { "data-index": i, "data-line": c.line[i], "data-step": c.step[i], "data-reason": r.reasons[c.reason[i]],
        "data-accepted": c.accepted[i] ? "true" : "false" },
    }),
    detail: (i) => rolloutDetail(r, c, i),
  });

  function update() {
    const from = controls.from.value ?? -Infinity;
    const to = controls.to.value ?? Infinity;
    const verdict = controls.verdict.value;
    const reason = Number(controls.reason.value);
    const trained = Number(controls.trained.value);
    const correct = controls.correct ? controls.correct.value : "all";
    const wanted = correct === "all" ? null : Number(correct);
    const textOnly = controls.withText ? controls.withText.value : false;
    const query = controls.search.value;
    browser.filter((i) => {
      if (c.step[i] < from || c.step[i] > to) return false;
      if (verdict !== "all" && (c.accepted[i] === 1) !== (verdict === "accepted")) return false;
      if (reason >= 0 && c.reason[i] !== reason) return false;
      if (trained >= 0 && c.trained_on[i] !== trained) return false;
      if (wanted !== null && c.correct[i] !== wanted) return false;
      if ((textOnly || query) && c.text[i] === MISSING) return false;
      return !query || searchable(c.text[i]).includes(query);
    }, controls.order.value === "newest");
  }

  return samplesPanel(textsNote(r.texts.length, r.n, "the prompts, traces and rewrites"), controls, browser, update);
}

function verdictBadge(accepted, reason) {
  if (accepted) return badge("accepted", "good");
  if (reason === "as_sampled") return badge("no rewrite", "neutral");  // a method that never rewrites
  return reason === "on_policy" ? badge("on-policy", "neutral") : badge("rejected", "bad");
}

function answerBadge(correct) {
  return correct === MISSING ? "–" : correct ? badge("right", "good") : badge("wrong", "bad");
}

// [header, numeric, cell(i)] for each column the run's samples fill in.
function rolloutColumns(r, c, graded) {
  const tokens = (column) => (i) => (column[i] === MISSING ? "–" : fmtInt(column[i]));
  const columns = [
    ["line", true, (i) => fmtInt(c.line[i])],
    ["step", true, (i) => fmtInt(c.step[i])],
    ["verdict", false, (i) => verdictBadge(c.accepted[i], r.reasons[c.reason[i]])],
    ["reason", false, (i) => r.reasons[c.reason[i]]],
  ];
  if (anyPresent(c.student_tokens)) columns.push(["student tokens", true, tokens(c.student_tokens)]);
  if (anyPresent(c.rewrite_tokens)) columns.push(["rewrite tokens", true, tokens(c.rewrite_tokens)]);
  if (anyPresent(c.teacher_tokens)) columns.push(["teacher tokens", true, tokens(c.teacher_tokens)]);
  if (anyPresent(c.trained_on)) {
    columns.push(["trained on", false, (i) => (c.trained_on[i] === MISSING ? "–" : r.trained_on_names[c.trained_on[i]])]);
  }
  if (graded) columns.push(["student answer", false, (i) => answerBadge(c.correct[i])]);
  columns.push(["prompt", false, (i) => (c.text[i] === MISSING
    ? h("span", { class: "muted", text: "text not on this page" })
    : h("div", { class: "snippet", text: r.prompts[r.texts[c.text[i]].prompt] }))]);
  return columns;
}

function rolloutDetail(r, c, i) {
  const reason = r.reasons[c.reason[i]];
  const t = c.text[i] === MISSING ? null : r.texts[c.text[i]];
  const meta = h("div", { class: "meta" },
    h("span", {}, verdictBadge(c.accepted[i], reason), ` ${reason}`),
    h("span", { text: `line ${fmtInt(c.line[i])} of rollouts.jsonl, step ${fmtInt(c.step[i])}` }),
    c.trained_on[i] === MISSING ? null : h("span", { text: `trained on: ${r.trained_on_names[c.trained_on[i]]}` }),
    t && t.gold !== null ? h("span", { text: `gold answer: ${t.gold}` }) : null,
    t && t.answer !== null ? h("span", { text: `student's answer: ${t.answer}` }) : null,
    c.correct[i] === MISSING ? null : answerBadge(c.correct[i]));
  if (!t) {
    return h("div", {}, meta, h("p", { class: "muted",
      text: "This sample's texts are not on the page; rerun mpdistill view with a larger --max-texts to include more." }));
  }
  const parts = [meta, h("h4", { text: "Prompt" }), h("pre", { class: "trace prompt", text: r.prompts[t.prompt] })];
  if (t.student === null) {
    parts.push(h("div", { class: "side-by-side single" },
      tracePane(`Teacher sample${tokenCount(c.teacher_tokens[i])}`, t.teacher || "")));
  } else if (t.rewrite === null) {
    parts.push(h("p", { class: "diff-note", text: `No rewrite (${reason}): the student's own trace.` }),
      h("div", { class: "side-by-side single" }, tracePane(`Student trace${tokenCount(c.student_tokens[i])}`, t.student)));
  } else {
    parts.push(...studentAndRewrite(t.student, t.rewrite, c.student_tokens[i], c.rewrite_tokens[i]));
  }
  return h("div", {}, parts);
}

/* ---------------------------------------------------------------------------------------------
 * An evaluation: accuracy and lengths per benchmark, and every sample. */

function drawEval(section, panel) {
  const c = typedColumns(section.columns, ["benchmark", "sample", "tokens", "truncated", "correct", "text"]);
  appendTo(panel,
    h("h2", { text: `Evaluation ${section.label}` }),
    facts([["path", section.path], ["model", section.model], ["samples", fmtInt(section.n)]]),
    warningsList(section.warnings),
    benchmarkTable(section.benchmarks));
  const histogram = h("div", { class: "charts" });
  let drawnFor = null;
  panel.append(histogram, h("h2", { text: "Samples" }), evalBrowser(section, c, (benchmark) => {
    if (benchmark !== drawnFor) histogram.replaceChildren(lengthHistogram(section, c, benchmark));
    drawnFor = benchmark;
  }));
}

function benchmarkTable(benchmarks) {
  const header = ["benchmark", "problems", "samples", "accuracy [95% CI]", "mean tokens", "median tokens", "truncated"];
  return h("table", { class: "stats" },
    h("caption", { class: "muted", style: "caption-side: bottom; text-align: left",
      text: "Accuracy: the mean over problems of the share of their samples that are right; 95% Wilson interval " +
        "with n = problems (as mpdistill compare)." }),
    h("thead", {}, h("tr", {}, header.map((label, k) => h("th", { class: k ? "num" : null, text: label })))),
    h("tbody", {}, benchmarks.map((b) => h("tr", { "data-benchmark": b.name },
      h("td", { text: b.name }),
      h("td", { class: "num", text: fmtInt(b.problems) }),
      h("td", { class: "num", text: fmtInt(b.samples) }),
      h("td", { class: "num", text: `${fmtPct(b.accuracy)} [${fmtPct(b.ci95[0])}, ${fmtPct(b.ci95[1])}]` }),
      h("td", { class: "num", text: fmtNum(b.mean_tokens) }),
      h("td", { class: "num", text: fmtNum(b.median_tokens) }),
      h("td", { class: "num", text: fmtPct(b.truncated) })))));
}

// Response lengths of the samples of one benchmark (-1: all), right and wrong stacked.
function lengthHistogram(section, c, benchmark) {
  const bins = 24;
  let top = 0;
  for (let i = 0; i < section.n; i++) if (benchmark < 0 || c.benchmark[i] === benchmark) top = Math.max(top, c.tokens[i]);
  if (top <= 0) return h("p", { class: "muted", text: "No token counts to draw." });
  const width = niceStep(top / bins);
  const edges = Array.from({ length: Math.floor(top / width) + 2 }, (_, k) => k * width);
  const right = new Array(edges.length - 1).fill(0);
  const wrong = new Array(edges.length - 1).fill(0);
  for (let i = 0; i < section.n; i++) {
    if (c.tokens[i] === MISSING || (benchmark >= 0 && c.benchmark[i] !== benchmark)) continue;
    const bin = Math.min(edges.length - 2, Math.floor(c.tokens[i] / width));
    (c.correct[i] ? right : wrong)[bin]++;
  }
  const which = benchmark < 0 ? "all benchmarks" : section.benchmark_names[benchmark];
  return histogramChart({ title: "Response length",
    note: `tokens per sample, ${which}; follows the benchmark filter below`, edges,
    series: [{ name: "right", counts: right, color: GOOD }, { name: "wrong", counts: wrong, color: BAD }] });
}

function evalBrowser(section, c, onBenchmark) {
  const counts = countValues(c.benchmark, section.benchmark_names.length);
  const ids = section.columns.id;
  const capped = section.texts.length < section.n;
  const apply = () => update();
  const controls = {
    benchmark: selectControl("benchmark", [["-1", `all (${fmtInt(section.n)})`],
      ...section.benchmark_names.map((name, k) => [String(k), `${name} (${fmtInt(counts[k])})`])], apply),
    correct: selectControl("answer", [["all", "all"], ["1", "right"], ["0", "wrong"]], apply),
    withText: capped ? checkboxControl("only samples with texts on the page", false, apply) : null,
    search: searchControl("search", "problem id or response", apply),
  };
  const lowered = new Map();
  const response = (t) => {
    if (!lowered.has(t)) lowered.set(t, (section.texts[t] || "").toLowerCase());
    return lowered.get(t);
  };
  const browser = createBrowser({
    total: section.n,
    noun: "samples",
    headers: [["benchmark"], ["problem"], ["sample", true], ["tokens", true], ["answer"], ["extracted"], ["gold"]],
    row: (i) => ({
      cells: [[section.benchmark_names[c.benchmark[i]]], [ids[i]],
        [c.sample[i] === MISSING ? "–" : fmtInt(c.sample[i]), true],
        [c.tokens[i] === MISSING ? "–" : fmtInt(c.tokens[i]) + (c.truncated[i] ? " (cut)" : ""), true],
        [answerBadge(c.correct[i])], [section.columns.extracted[i] ?? "–"], [section.columns.gold[i] ?? "–"]],
      attrs: { "data-index": i, "data-benchmark": section.benchmark_names[c.benchmark[i]],
        "data-correct": c.correct[i] ? "true" : "false" },
    }),
    detail: (i) => evalSampleDetail(section, c, i),
  });

  function update() {
    const benchmark = Number(controls.benchmark.value);
    const correct = controls.correct.value === "all" ? null : Number(controls.correct.value);
    const textOnly = controls.withText ? controls.withText.value : false;
    const query = controls.search.value;
    onBenchmark(benchmark);
    browser.filter((i) => {
      if (benchmark >= 0 && c.benchmark[i] !== benchmark) return false;
      if (correct !== null && c.correct[i] !== correct) return false;
      if (textOnly && c.text[i] === MISSING) return false;
      if (!query) return true;
      return ids[i].toLowerCase().includes(query) || (c.text[i] !== MISSING && response(c.text[i]).includes(query));
    });
  }

  return samplesPanel(textsNote(section.texts.length, section.n, "the responses"), controls, browser, update);
}

function evalSampleDetail(section, c, i) {
  const t = c.text[i];
  return h("div", {},
    h("div", { class: "meta" },
      answerBadge(c.correct[i]),
      h("span", { text: `${section.benchmark_names[c.benchmark[i]]}, problem ${section.columns.id[i]}` +
        (c.sample[i] === MISSING ? "" : `, sample ${c.sample[i]}`) }),
      h("span", { text: `extracted: ${section.columns.extracted[i] ?? "none"}` }),
      h("span", { text: `gold: ${section.columns.gold[i] ?? "none"}` }),
      c.tokens[i] === MISSING ? null
        : h("span", { text: `${fmtInt(c.tokens[i])} tokens${c.truncated[i] ? ", cut at the budget" : ""}` })),
    t === MISSING
      ? h("p", { class: "muted",
        text: "This response is not on the page; rerun mpdistill view with a larger --max-texts to include more." })
      : h("pre", { class: "trace", text: section.texts[t] }));
}

/* ---------------------------------------------------------------------------------------------
 * Two evaluations, problem by problem. */

const KIND_TONES = { "right→wrong": "bad", "wrong→right": "good", "both right": "neutral", "both wrong": "neutral" };

function drawComparison(section, panel) {
  const base = DATA.sections[section.base];
  const next = DATA.sections[section.new];
  const problems = section.problems;
  panel.append(
    h("h2", { text: `Comparison ${section.label}` }),
    facts([["base", withModel(base)], ["new", withModel(next)], ["problems in both", fmtInt(problems.length)],
      ["only in base", fmtInt(section.only_in_base)], ["only in new", fmtInt(section.only_in_new)]]),
    h("p", { class: "muted", text: "Problems are paired by benchmark and id. A model gets a problem right when more " +
      "than half of its samples are right; the problems whose answer flipped are listed first." }),
    h("p", { class: "flip-counts" }, section.kinds.map((kind) => h("span", { "data-kind": kind },
      badge(kind, KIND_TONES[kind]), ` ${fmtInt(section.counts[kind])}`))),
    pairedTable(section, base, next),
    comparisonBrowser(section, base, next));
}

function withModel(section) {
  return section.model ? `${section.label} (${section.model})` : section.label;
}

// Per benchmark, over the problems both answered: each side's accuracy and mean tokens.
function pairedTable(section, base, next) {
  const rows = new Map();
  for (const p of section.problems) {
    if (!rows.has(p.benchmark)) rows.set(p.benchmark, { n: 0, base: 0, next: 0, baseTokens: [], nextTokens: [] });
    const row = rows.get(p.benchmark);
    row.n++;
    row.base += p.base_score;
    row.next += p.new_score;
    if (p.base_tokens !== null) row.baseTokens.push(p.base_tokens);
    if (p.new_tokens !== null) row.nextTokens.push(p.new_tokens);
  }
  const mean = (values) => (values.length ? values.reduce((a, b) => a + b, 0) / values.length : null);
  const header = ["benchmark", "problems", `${base.label} accuracy`, `${next.label} accuracy`, `${base.label} mean tokens`,
    `${next.label} mean tokens`];
  return h("table", { class: "stats" },
    h("thead", {}, h("tr", {}, header.map((label, k) => h("th", { class: k ? "num" : null, text: label })))),
    h("tbody", {}, [...rows].map(([name, row]) => h("tr", {},
      h("td", { text: name }),
      [fmtInt(row.n), fmtPct(row.base / row.n), fmtPct(row.next / row.n), fmtNum(mean(row.baseTokens)),
        fmtNum(mean(row.nextTokens))].map((text) => h("td", { class: "num", text }))))));
}

function comparisonBrowser(section, base, next) {
  const problems = section.problems;
  const benchmarks = [...new Set(problems.map((p) => p.benchmark))];
  const apply = () => update();
  const controls = {
    kind: selectControl("answer",
      [["all", "all"], ...section.kinds.map((k) => [k, `${k} (${fmtInt(section.counts[k])})`])], apply),
    benchmark: selectControl("benchmark", [["all", "all"], ...benchmarks.map((b) => [b, b])], apply),
    search: searchControl("search", "problem id", apply),
  };
  const browser = createBrowser({
    total: problems.length,
    noun: "problems",
    headers: [["answer"], ["benchmark"], ["problem"], [`${base.label} right`, true], [`${next.label} right`, true],
      [`${base.label} tokens`, true], [`${next.label} tokens`, true]],
    row: (i) => {
      const p = problems[i];
      return {
        cells: [[badge(p.kind, KIND_TONES[p.kind])], [p.benchmark], [p.id], [fmtPct(p.base_score, 0), true],
          [fmtPct(p.new_score, 0), true], [fmtNum(p.base_tokens), true], [fmtNum(p.new_tokens), true]],
        attrs: { "data-index": i, "data-kind": p.kind },
      };
    },
    detail: (i) => h("div", { class: "versus" },
      sideSamples(base, problems[i].base_samples), sideSamples(next, problems[i].new_samples)),
  });

  function update() {
    const kind = controls.kind.value;
    const benchmark = controls.benchmark.value;
    const query = controls.search.value;
    browser.filter((i) => {
      const p = problems[i];
      return (kind === "all" || p.kind === kind) && (benchmark === "all" || p.benchmark === benchmark)
        && (!query || p.id.toLowerCase().includes(query));
    });
  }

  const element = h("div", {},
    h("div", { class: "filters" }, Object.values(controls).map((control) => control.element)),
    browser.element);
  update();
  return element;
}

function sideSamples(section, indices) {
  const cols = section.columns;
  return h("div", { class: "samples-list" }, h("h4", { text: section.label }), indices.map((i) => h("div", { class: "pane" },
    h("div", { class: "meta" }, answerBadge(cols.correct[i]),
      h("span", { text: cols.sample[i] === MISSING ? "" : `sample ${cols.sample[i]}` }),
      h("span", { text: cols.tokens[i] === MISSING ? "" : `${fmtInt(cols.tokens[i])} tokens` }),
      h("span", { text: `extracted: ${cols.extracted[i] ?? "none"}, gold: ${cols.gold[i] ?? "none"}` })),
    cols.text[i] === MISSING
      ? h("p", { class: "muted", text: "Response not on the page (see --max-texts)." })
      : h("pre", { class: "trace", text: section.texts[cols.text[i]] }))));
}

main();
