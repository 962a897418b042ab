// Parts of a prediction both the review and the audit pages show.

import { h, number, percent, table } from "./dom.js";

export const PREDICTION_FIELDS = `id task release label confidence predictionSet status finalLabel
  route createdAt input
  probabilities { label probability }
  members { name version label weight error probabilities { label probability } }
  reasons { code detail value threshold }`;

export const EXPLANATION_FIELDS = `explanation { status space explainedClass baseValue outputValue
  contributions { feature value shap derived } }`;

function shown(value) {
  if (value === null || value === undefined) return "missing";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function inputTable(input, features = null) {
  const names = features ? features.map((f) => f.name) : Object.keys(input);
  const rows = names.map((name) => [name, name in input ? shown(input[name]) : "missing"]);
  for (const extra of Object.keys(input)) if (!names.includes(extra)) rows.push([extra, shown(input[extra])]);
  return table(null, ["Feature", "Value"], rows, { class: "kv" });
}

export function probabilityBars(probabilities, chosen) {
  return h("ul", { class: "probs", "aria-label": "Class probabilities" },
    probabilities.map((p) => {
      const fill = h("span", { class: "probs-fill" });
      fill.style.width = `${(p.probability * 100).toFixed(1)}%`; // CSSOM: allowed by the CSP
      return h("li", { class: p.label === chosen ? "chosen" : "" },
        h("span", { class: "probs-label" }, p.label),
        h("span", { class: "probs-track", "aria-hidden": "true" }, fill),
        h("span", { class: "probs-value" }, percent(p.probability)));
    }));
}

export function membersTable(members) {
  return table(null, ["Member", "Label", "Probabilities", "Weight"],
    members.map((m) => [
      `${m.name} (${m.version})`,
      m.error ? `failed: ${m.error}` : m.label,
      m.probabilities ? m.probabilities.map((p) => `${p.label} ${percent(p.probability)}`).join(", ") : "–",
      number(m.weight, 2),
    ]));
}

export function reasonsList(reasons) {
  if (!reasons.length) return h("p", {}, "No reason: answered automatically.");
  return h("ul", { class: "reasons" }, reasons.map((r) =>
    h("li", {}, h("strong", {}, r.code), " — ", r.detail)));
}
