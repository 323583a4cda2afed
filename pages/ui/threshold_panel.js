// Live operating point for the Anomaly threshold page (a Streamlit components-v2 component).
//
// The slider, both charts, the metric tiles and the confusion matrix are redrawn here, in the
// browser, on every input event: a Streamlit widget would need a server round trip per step
// (~300-450 ms measured on the 2-core reference machine), this needs none. The value is sent to
// Python only when the user lets go (the "committed" trigger), which reruns the page's fragment
// for what needs the server: Save and the example images near the threshold.

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = { normal: "#2b8cbe", anomalous: "#e34a33", threshold: "#222222", roc: "#e34a33" };

function el(tag, attrs = {}, text) {
  const node = tag === "svg" || SVG_TAGS.has(tag) ? document.createElementNS(SVG, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}
const SVG_TAGS = new Set(["rect", "line", "text", "polyline", "circle", "g", "path"]);

// Number of sorted values strictly below t (numpy's searchsorted side="left").
function below(sorted, t) {
  let lo = 0, hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < t) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// The same definitions as cxr_core.anomaly.ThresholdTable.metrics: flagged when score >= t.
export function metrics(neg, pos, t) {
  const tn = below(neg, t), fn = below(pos, t);
  const fp = neg.length - tn, tp = pos.length - fn;
  return {
    tn, fp, fn, tp,
    sensitivity: tp + fn ? tp / (tp + fn) : NaN,
    specificity: tn + fp ? tn / (tn + fp) : NaN,
    precision: tp + fp ? tp / (tp + fp) : NaN,
    f1: tp ? (2 * tp) / (2 * tp + fp + fn) : 0,
    fpr: fp + tn ? fp / (fp + tn) : NaN,
    flagged: tp + fp,
  };
}

const pct = (v) => (Number.isFinite(v) ? (100 * v).toFixed(1) + "%" : "n/a");

function ticks(lo, hi, n) {
  const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw || 1));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function histogram(svg, d) {
  const W = 600, H = 250, L = 44, R = 10, T = 22, B = 36;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const edges = d.hist.edges, lo = Math.min(edges[0], d.min), hi = Math.max(edges[edges.length - 1], d.max);
  const ymax = Math.max(1, ...d.hist.normal, ...d.hist.anomalous);
  const x = (v) => L + ((v - lo) / (hi - lo || 1)) * (W - L - R);
  const y = (c) => H - B - (c / ymax) * (H - T - B);
  const g = el("g");
  for (const yt of ticks(0, ymax, 4)) {
    g.append(el("line", { x1: L, x2: W - R, y1: y(yt), y2: y(yt), stroke: "#8884", "stroke-width": 1 }));
    g.append(el("text", { x: L - 6, y: y(yt) + 4, "text-anchor": "end", class: "axis" }, String(yt)));
  }
  for (const xt of ticks(lo, hi, 6)) {
    g.append(el("text", { x: x(xt), y: H - B + 16, "text-anchor": "middle", class: "axis" }, String(xt)));
  }
  g.append(el("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "axis" }, "anomaly score"));
  for (const [key, name] of [["normal", "normal"], ["anomalous", "pneumonia"]]) {
    d.hist[key].forEach((c, i) => {
      if (!c) return;
      g.append(el("rect", {
        x: x(edges[i]), y: y(c), width: Math.max(1, x(edges[i + 1]) - x(edges[i]) - 1), height: y(0) - y(c),
        fill: COLOURS[key], "fill-opacity": 0.55,
      }));
    });
    const lx = key === "normal" ? L : L + 90;
    g.append(el("rect", { x: lx, y: 4, width: 12, height: 12, fill: COLOURS[key], "fill-opacity": 0.55 }));
    g.append(el("text", { x: lx + 16, y: 14, class: "axis" }, name));
  }
  const line = el("line", { y1: T - 4, y2: H - B, stroke: COLOURS.threshold, "stroke-width": 2, "stroke-dasharray": "6 4" });
  const label = el("text", { y: T + 6, class: "axis" }, "threshold");
  g.append(line, label);
  svg.replaceChildren(g);
  return (t) => {
    const xt = x(Math.min(Math.max(t, lo), hi));
    line.setAttribute("x1", xt); line.setAttribute("x2", xt);
    const right = xt > W * 0.8;  // keep the label inside the plot near the right edge
    label.setAttribute("x", right ? xt - 4 : xt + 4);
    label.setAttribute("text-anchor", right ? "end" : "start");
  };
}

function roc(svg, d) {
  const W = 300, H = 250, L = 40, R = 10, T = 22, B = 36;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const x = (v) => L + v * (W - L - R), y = (v) => H - B - v * (H - T - B);
  const g = el("g");
  for (const v of [0, 0.5, 1]) {
    g.append(el("text", { x: x(v), y: H - B + 16, "text-anchor": "middle", class: "axis" }, String(v)));
    g.append(el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, String(v)));
  }
  g.append(el("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "axis" }, "1 − specificity"));
  g.append(el("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), stroke: "#999", "stroke-dasharray": "2 3" }));
  g.append(el("rect", { x: x(0), y: y(1), width: x(1) - x(0), height: y(0) - y(1), fill: "none", stroke: "#8886" }));
  const pts = d.roc.fpr.map((f, i) => `${x(f).toFixed(1)},${y(d.roc.tpr[i]).toFixed(1)}`).join(" ");
  g.append(el("polyline", { points: pts, fill: "none", stroke: COLOURS.roc, "stroke-width": 2 }));
  const title = d.auroc === null ? "ROC" : `ROC (AUROC ${d.auroc.toFixed(3)})`;
  g.append(el("text", { x: L, y: 14, class: "axis" }, title));
  const dot = el("circle", { r: 6, fill: COLOURS.threshold, class: "operating-point" });
  g.append(dot);
  svg.replaceChildren(g);
  return (m) => {
    const ok = Number.isFinite(m.fpr) && Number.isFinite(m.sensitivity);
    dot.setAttribute("visibility", ok ? "visible" : "hidden");
    if (ok) { dot.setAttribute("cx", x(m.fpr)); dot.setAttribute("cy", y(m.sensitivity)); }
  };
}

function build(parent) {
  const root = el("div", { class: "cxr-thr" });
  root.innerHTML = `
    <div class="controls">
      <label>Threshold
        <input type="range" class="thr-range" aria-label="Threshold">
      </label>
      <input type="number" class="thr-number" aria-label="Threshold value">
    </div>
    <div class="charts">
      <svg class="hist" role="img" aria-label="Score histograms with the threshold"></svg>
      <svg class="roc" role="img" aria-label="ROC curve with the operating point"></svg>
    </div>
    <div class="tiles">
      <div class="tile"><div class="k">Sensitivity</div><div class="v" data-m="sensitivity"></div></div>
      <div class="tile"><div class="k">Specificity</div><div class="v" data-m="specificity"></div></div>
      <div class="tile"><div class="k">Precision</div><div class="v" data-m="precision"></div></div>
      <div class="tile"><div class="k">F1</div><div class="v" data-m="f1"></div></div>
      <div class="tile"><div class="k">Flagged</div><div class="v" data-m="flagged"></div></div>
    </div>
    <table class="confusion" aria-label="Confusion matrix">
      <thead><tr><th></th><th>passed (score &lt; t)</th><th>flagged (score ≥ t)</th></tr></thead>
      <tbody>
        <tr><th>actual normal</th><td data-cm="tn"></td><td data-cm="fp"></td></tr>
        <tr><th>actual pneumonia</th><td data-cm="fn"></td><td data-cm="tp"></td></tr>
      </tbody>
    </table>`;
  parent.append(root);
  return root;
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let root = parentElement.querySelector(".cxr-thr");
  if (!root) { root = build(parentElement); root.__s = {}; }
  const s = root.__s;
  const range = root.querySelector(".thr-range"), number = root.querySelector(".thr-number");

  if (s.dataset !== data.dataset) {
    // A new detector or split: rebuild the charts once; moves only touch a few attributes.
    s.dataset = data.dataset;
    s.d = data;
    s.moveLine = histogram(root.querySelector(".hist"), data);
    s.moveDot = roc(root.querySelector(".roc"), data);
    for (const inp of [range, number]) {
      inp.min = data.min; inp.max = data.max; inp.step = data.step;
    }
    s.rev = undefined;
  }
  const d = s.d;
  const fmt = (v) => Number(v).toFixed(d.decimals);

  const show = (t) => {
    const m = metrics(d.neg, d.pos, t);
    s.moveLine(t);
    s.moveDot(m);
    for (const node of root.querySelectorAll("[data-m]")) {
      const k = node.dataset.m;
      node.textContent = k === "f1" ? m.f1.toFixed(3) : k === "flagged" ? `${m.flagged} / ${d.neg.length + d.pos.length}` : pct(m[k]);
    }
    for (const node of root.querySelectorAll("[data-cm]")) node.textContent = String(m[node.dataset.cm]);
    root.dataset.threshold = String(t);
  };
  const commit = (t) => {
    const v = Math.min(Math.max(t, d.min), d.max);
    if (v !== s.sent) { s.sent = v; setTriggerValue("committed", v); }
  };

  // Adopt the server's value only when the server changed it (first render, a suggestion button,
  // another detector): replies to our own commits arrive late and must not pull the slider back.
  if (s.rev !== data.rev) {
    s.rev = data.rev;
    s.sent = data.threshold;
    range.value = data.threshold;
    number.value = fmt(data.threshold);
    show(data.threshold);
  }
  range.oninput = () => { const t = parseFloat(range.value); number.value = fmt(t); show(t); };
  range.onchange = () => commit(parseFloat(range.value));
  number.onchange = () => {
    const t = parseFloat(number.value);
    if (!Number.isFinite(t)) { number.value = fmt(parseFloat(range.value)); return; }
    const v = Math.min(Math.max(t, d.min), d.max);
    range.value = v; number.value = fmt(v); show(v); commit(v);
  };
}
