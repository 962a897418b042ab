// The explanation as an inline SVG waterfall: from the base value, each feature's SHAP
// contribution moves the output right (towards the explained class) or left, ending at the
// output value. baseValue + sum(contributions) = outputValue in the explanation's space.

const NS = "http://www.w3.org/2000/svg";
const TOP_FEATURES = 12;
const ROW = 26;
const POSITIVE = "#b3261e"; // 6.0:1 on white
const NEGATIVE = "#1d5fa7"; // 6.3:1 on white

function el(tag, attrs = {}, text = null) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function fmt(x) {
  const digits = Math.abs(x) >= 10 ? 1 : Math.abs(x) >= 1 ? 2 : 3;
  return (x >= 0 ? "+" : "−") + Math.abs(x).toFixed(digits);
}

function shown(value) {
  if (value === null || value === undefined) return "missing";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(2);
  return String(value);
}

// The rows drawn: the largest contributions, the rest folded into one row.
export function chartRows(explanation, top = TOP_FEATURES) {
  const sorted = [...explanation.contributions].sort((a, b) => Math.abs(b.shap) - Math.abs(a.shap));
  const rows = sorted.slice(0, top).map((c) => ({
    label: `${c.feature} = ${shown(c.value)}${c.derived ? " (derived)" : ""}`, shap: c.shap,
  }));
  const rest = sorted.slice(top);
  if (rest.length) {
    const label = `${rest.length} other feature${rest.length === 1 ? "" : "s"}`;
    rows.push({ label, shap: rest.reduce((s, c) => s + c.shap, 0) });
  }
  return rows;
}

export function explanationChart(explanation, width) {
  const rows = chartRows(explanation);
  width = Math.min(900, Math.max(300, Math.round(width))); // wider only spreads the bars
  const labelWidth = Math.min(260, Math.round(width * 0.42));
  const valueWidth = 56;
  const maxChars = Math.floor(labelWidth / 6.8); // ~6.8 px per character at 12.5 px
  const plotLeft = labelWidth + 8;
  const plotRight = width - valueWidth;
  const height = (rows.length + 2) * ROW + 34;
  let running = explanation.baseValue;
  const points = [running];
  for (const r of rows) {
    r.start = running;
    running += r.shap;
    points.push(running);
  }
  points.push(explanation.outputValue);
  let lo = Math.min(...points);
  let hi = Math.max(...points);
  const pad = (hi - lo) * 0.05 || 0.5;
  lo -= pad;
  hi += pad;
  const x = (v) => plotLeft + ((v - lo) / (hi - lo)) * (plotRight - plotLeft);

  const space = explanation.space === "LOG_ODDS" ? "log-odds" : "probability";
  const top = rows.slice(0, 3).map((r) => `${r.label} ${fmt(r.shap)}`).join("; ");
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img", class: "chart",
    "aria-label": `Explanation of ${explanation.explainedClass} in ${space}: base `
      + `${explanation.baseValue.toFixed(3)}, output ${explanation.outputValue.toFixed(3)}. `
      + `Largest contributions: ${top}.`,
  });
  const axisY = height - 24;
  svg.append(el("line", { x1: x(explanation.baseValue), x2: x(explanation.baseValue), y1: 4,
    y2: axisY, class: "chart-guide" }));
  const marker = (y, label, value) => {
    svg.append(el("text", { x: labelWidth, y: y + ROW / 2 + 4, "text-anchor": "end",
      class: "chart-label chart-strong" }, label));
    svg.append(el("circle", { cx: x(value), cy: y + ROW / 2, r: 5, class: "chart-marker" }));
    svg.append(el("text", { x: plotRight + 6, y: y + ROW / 2 + 4, class: "chart-value" },
      value.toFixed(3)));
  };
  marker(0, "base value", explanation.baseValue);
  rows.forEach((r, i) => {
    const y = (i + 1) * ROW;
    const x0 = x(Math.min(r.start, r.start + r.shap));
    const x1 = x(Math.max(r.start, r.start + r.shap));
    const label = el("text", { x: labelWidth, y: y + ROW / 2 + 4, "text-anchor": "end",
      class: "chart-label" }, r.label.length > maxChars ? `${r.label.slice(0, maxChars - 1)}…` : r.label);
    label.append(el("title", {}, r.label));
    svg.append(label);
    const bar = el("rect", { x: x0, y: y + 5, width: Math.max(1.5, x1 - x0), height: ROW - 10,
      fill: r.shap >= 0 ? POSITIVE : NEGATIVE });
    bar.append(el("title", {}, `${r.label}: ${fmt(r.shap)}`));
    svg.append(bar);
    svg.append(el("text", { x: plotRight + 6, y: y + ROW / 2 + 4, class: "chart-value",
      fill: r.shap >= 0 ? POSITIVE : NEGATIVE }, fmt(r.shap)));
  });
  marker((rows.length + 1) * ROW, "output", explanation.outputValue);
  svg.append(el("line", { x1: plotLeft, x2: plotRight, y1: axisY, y2: axisY, class: "chart-axis" }));
  for (const v of [lo + pad, (lo + hi) / 2, hi - pad]) {
    svg.append(el("text", { x: x(v), y: axisY + 16, "text-anchor": "middle",
      class: "chart-tick" }, v.toFixed(2)));
  }
  return svg;
}

// Every contribution as numbers, folded away (the chart shows the largest ones).
function numbersTable(explanation) {
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = `All ${explanation.contributions.length} contributions as numbers`;
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const name of ["Feature", "Value", "Contribution"]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = name;
    head.append(th);
  }
  const body = table.createTBody();
  const sorted = [...explanation.contributions].sort((a, b) => Math.abs(b.shap) - Math.abs(a.shap));
  for (const c of sorted) {
    const row = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = c.feature + (c.derived ? " (derived)" : "");
    row.append(th);
    row.insertCell().textContent = shown(c.value);
    row.insertCell().textContent = fmt(c.shap);
  }
  details.append(summary, table);
  return details;
}

// A figure: the chart, its caption, and every number in a folded table.
export function explanationFigure(explanation, container) {
  const figure = document.createElement("figure");
  figure.className = "explanation";
  const caption = document.createElement("figcaption");
  const space = explanation.space === "LOG_ODDS" ? "log-odds" : "probability";
  caption.textContent = `Why “${explanation.explainedClass}”: SHAP contributions in ${space}`
    + ` (red pushes towards it, blue away), from base ${explanation.baseValue.toFixed(3)}`
    + ` to output ${explanation.outputValue.toFixed(3)}`
    + (explanation.status !== "OK" ? ` — ${explanation.status}: a member failed` : "") + ".";
  figure.append(caption);
  let width = (container?.clientWidth || 600) - 4;
  figure.append(explanationChart(explanation, width));
  // Redrawn at the new width when the layout changes (phone rotation, window resize), so
  // the labels keep their size instead of shrinking with the picture.
  new ResizeObserver(() => {
    const now = figure.clientWidth;
    if (now > 0 && Math.abs(now - width) > 8) {
      width = now;
      figure.querySelector("svg").replaceWith(explanationChart(explanation, width));
    }
  }).observe(figure);
  figure.append(numbersTable(explanation));
  return figure;
}
