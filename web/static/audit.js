// The audit page (auditors, admins): search predictions by task, time range, route,
// status, labels and release, and open one: input, release and members, explanation,
// reasons, final label, and the releases that later learned from it.

import { graphql } from "./api.js";
import { explanationFigure } from "./chart.js";
import { clear, h, number, percent, table, when } from "./dom.js";
import {
  EXPLANATION_FIELDS, PREDICTION_FIELDS, inputTable, membersTable, probabilityBars, reasonsList,
} from "./prediction.js";
import { signIn } from "./signin.js";

const TASKS = "{ tasks { name classes features { name } } }";
const PAGE_SIZE = 25;
const SEARCH = `query($task: String, $route: Route, $status: PredictionStatus, $label: String,
    $finalLabel: String, $release: Int, $createdAfter: DateTime, $createdBefore: DateTime,
    $first: Int!, $after: String) {
  predictions(task: $task, route: $route, status: $status, label: $label, finalLabel: $finalLabel,
      release: $release, createdAfter: $createdAfter, createdBefore: $createdBefore,
      first: $first, after: $after) {
    totalCount pageInfo { hasNextPage endCursor }
    edges { node { id createdAt label confidence route status finalLabel release } } } }`;
const ONE = `query($id: ID!) { prediction(id: $id) { ${PREDICTION_FIELDS} ${EXPLANATION_FIELDS}
  idempotencyKey latencyMs trainedInto { version stage split } } }`;

const $ = (id) => document.getElementById(id);
const state = { tasks: [], filters: null, after: null, rows: [] };

function options(select, values, anyText = "any") {
  clear(select, h("option", { value: "" }, anyText), values.map((v) => h("option", { value: v }, v)));
}

function taskSpec() {
  return state.tasks.find((t) => t.name === $("f-task").value);
}

function onTask() {
  const classes = taskSpec()?.classes ?? [];
  options($("f-label"), classes);
  options($("f-final"), classes);
}

// The form as query variables; throws with a message naming the bad field.
function readFilters() {
  const instant = (id, name) => {
    const raw = $(id).value;
    if (!raw) return null;
    const date = new Date(raw); // datetime-local: the browser's time zone
    if (Number.isNaN(date.getTime())) throw new Error(`${name} is not a valid date and time.`);
    return date.toISOString();
  };
  const createdAfter = instant("f-from", "From");
  const createdBefore = instant("f-to", "Until");
  if (createdAfter && createdBefore && createdAfter >= createdBefore) {
    throw new Error("“From” must be before “Until”.");
  }
  const releaseRaw = $("f-release").value;
  const release = releaseRaw ? Number(releaseRaw) : null;
  if (releaseRaw && !(Number.isInteger(release) && release > 0)) {
    throw new Error("Release must be a whole number from 1 (a release version).");
  }
  return {
    task: $("f-task").value || null, route: $("f-route").value || null,
    status: $("f-status").value || null, label: $("f-label").value || null,
    finalLabel: $("f-final").value || null, release, createdAfter, createdBefore,
  };
}

async function search(event) {
  event?.preventDefault();
  $("filter-error").textContent = "";
  try {
    state.filters = readFilters();
  } catch (exc) {
    $("filter-error").textContent = exc.message;
    return;
  }
  state.after = null;
  state.rows = [];
  await fetchPage();
}

async function fetchPage() {
  let data;
  try {
    data = await graphql(SEARCH, { ...state.filters, first: PAGE_SIZE, after: state.after });
  } catch (exc) {
    $("filter-error").textContent = `Search refused: ${exc.message}`;
    return;
  }
  const page = data.predictions;
  state.rows.push(...page.edges.map((e) => e.node));
  state.after = page.pageInfo.endCursor;
  $("more").hidden = !page.pageInfo.hasNextPage;
  $("results-count").textContent = `${page.totalCount} prediction${page.totalCount === 1 ? "" : "s"} match`
    + (state.rows.length < page.totalCount ? `; showing the newest ${state.rows.length}.` : ".");
  renderRows();
}

function renderRows() {
  const rows = state.rows.map((p) => [
    when(p.createdAt),
    h("button", { type: "button", class: "linkish", "data-id": p.id, onclick: () => open(p.id),
      "aria-label": `Open prediction ${p.id}` }, p.id.slice(0, 8)),
    `${p.label} (${percent(p.confidence)})`, p.route, p.status, p.finalLabel ?? "–", `v${p.release}`,
  ]);
  clear($("results"), rows.length
    ? table(null, ["Time", "Prediction", "Label", "Route", "Status", "Final label", "Release"], rows,
      { id: "results-table" })
    : h("p", {}, "No prediction matches these filters."));
}

async function open(id) {
  let p;
  try {
    ({ prediction: p } = await graphql(ONE, { id }));
  } catch (exc) {
    clear($("detail"), h("p", { class: "error" }, `Could not open ${id}: ${exc.message}`));
    return;
  }
  const features = state.tasks.find((t) => t.name === p.task)?.features;
  const facts = [
    ["Task", p.task], ["Release", `v${p.release}`], ["Created", when(p.createdAt)],
    ["Label", `${p.label} (${percent(p.confidence)})`], ["Prediction set", p.predictionSet.join(", ")],
    ["Route", p.route], ["Status", p.status], ["Final label", p.finalLabel ?? "–"],
    ["Latency", `${number(p.latencyMs, 1)} ms`], ["Idempotency key", p.idempotencyKey ?? "–"],
    ["Learned by", p.trainedInto.length
      ? p.trainedInto.map((u) => `v${u.version} (${u.stage}, ${u.split})`).join(", ")
      : "no release yet"],
  ];
  $("detail-title").textContent = `Prediction ${p.id}`;
  for (const row of document.querySelectorAll("#results-table tbody tr")) {
    row.setAttribute("aria-current", String(row.querySelector("button")?.dataset.id === p.id));
  }
  const box = $("detail");
  clear(box,
    h("div", { class: "grid-2" },
      h("section", {}, h("h3", {}, "Decision"), table(null, ["Fact", "Value"], facts, { class: "kv" }),
        h("h3", {}, "Probabilities"), probabilityBars(p.probabilities, p.label),
        h("h3", {}, "Reasons"), reasonsList(p.reasons)),
      h("section", {}, h("h3", {}, "Input"), inputTable(p.input, features))),
    h("h3", {}, "Explanation"),
    h("div", { id: "detail-chart" }),
    // PLACEHOLDER explanation picture: the lead adds
    // h("img", { src: `/explanations/${p.id}.svg`, alt: "…" }) here once that endpoint exists.
    h("p", { class: "placeholder", "data-placeholder": "explanation-picture" },
      "The explanation picture for the audit file (/explanations/{id}.svg) appears here."),
    h("h3", {}, "Members"), h("div", { class: "scroll" }, membersTable(p.members)));
  const chart = $("detail-chart");
  chart.append(p.explanation ? explanationFigure(p.explanation, chart)
    : h("p", {}, "No explanation stored."));
  $("detail-title").focus();
}

async function main() {
  await signIn(["auditor", "admin"], "audit");
  $("app-view").hidden = false;
  ({ tasks: state.tasks } = await graphql(TASKS));
  clear($("f-task"), state.tasks.map((t) => h("option", { value: t.name }, t.name)));
  onTask();
  $("f-task").addEventListener("change", onTask);
  $("filters").addEventListener("submit", search);
  $("filters").addEventListener("reset", () => setTimeout(() => { onTask(); search(); }, 0));
  $("more").addEventListener("click", fetchPage);
  await search();
}

main();
