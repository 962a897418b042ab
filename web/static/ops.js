// The ops page (admins): a task's releases with stage, metrics and the gate's comparison,
// promote and rollback behind a confirmation dialog, training progress, live through
// releaseEvents, and the task's drift: the stored report (latestDriftReport) or one
// computed now (driftReport).

import { graphql, storedKey } from "./api.js";
import { clear, h, number, percent, table, when } from "./dom.js";
import { loadQuality } from "./ops-quality.js";
import { signIn } from "./signin.js";
import { SubscriptionClient, eventsWereLost } from "./ws.js";

const TASKS = "{ tasks { name } }";
const RELEASES = `query($task: String!) {
  releases(task: $task) { version stage trafficPercent createdAt createdBy metrics gate }
  trainingJobs(task: $task, first: 8) { edges { node {
    id status trigger requestedBy progress message error createdAt finishedAt
    release { version stage } } } } }`;
const COMPARISON = `query($task: String!, $version: Int!) {
  releaseComparison(task: $task, version: $version) { liveVersion
    overall { paired agreement reviewed releaseAccuracy liveAccuracy }
    byClass { label paired agreement reviewed releaseAccuracy liveAccuracy } } }`;
const PROMOTE = `mutation($task: String!, $version: Int!, $stage: ReleaseStage!, $p: Float, $reason: String!) {
  promoteRelease(task: $task, version: $version, stage: $stage, trafficPercent: $p, reason: $reason) { version stage } }`;
const ROLLBACK = `mutation($task: String!, $reason: String!) {
  rollback(task: $task, reason: $reason) { version stage } }`;
const RETRAIN = `mutation($task: String!) { retrain(task: $task, reason: "from the ops page") { id status } }`;
const EVENTS = `subscription($task: String!) { releaseEvents(task: $task) {
  kind version fromStage toStage jobId status progress message reason } }`;
const DRIFT_FIELDS = `task release window since computedAt verdict drifted rows share
  shareThreshold message driftedFeatures predictionDrifted
  features { feature kind test statistic threshold drifted status sampleSize }
  prediction { feature kind test statistic threshold drifted status sampleSize }
  routingRate { start rate count } overturnRate { start rate count }
  outcomeErrorRate { start rate count }`;
const LATEST_DRIFT = `query($task: String!) { latestDriftReport(task: $task) { ${DRIFT_FIELDS} } }`;
const DRIFT_NOW = `query($task: String!, $window: String) {
  driftReport(task: $task, window: $window) { ${DRIFT_FIELDS} } }`;
const STAGES = ["CANDIDATE", "SHADOW", "CANARY", "LIVE", "RETIRED"];
const HEADLINE_METRICS = ["accuracy", "balanced_accuracy", "log_loss", "roc_auc"];

const $ = (id) => document.getElementById(id);
const state = { task: null, releases: [], jobs: [], selected: null, ws: null, unsubscribe: null, timer: null };

const isChosen = (task) => () => task === state.task;

function say(message) {
  $("status").textContent = message;
}

function metricCells(metrics) {
  return HEADLINE_METRICS.map((m) => number(metrics?.[m]));
}

async function load() {
  const task = state.task;
  let data;
  try {
    data = await graphql(RELEASES, { task });
  } catch (exc) {
    say(`Could not read releases: ${exc.message}`);
    return;
  }
  if (task !== state.task) return;
  state.releases = data.releases;
  state.jobs = data.trainingJobs.edges.map((e) => e.node);
  renderReleases();
  renderJobs();
  if (state.selected !== null) await showDetail(state.selected, false);
}

function scheduleLoad() {
  clearTimeout(state.timer);
  state.timer = setTimeout(load, 200);
}

function stageText(r) {
  return r.stage === "CANARY" ? `CANARY ${number(r.trafficPercent, 0)} %` : r.stage;
}

function renderReleases() {
  const rows = state.releases.map((r) => [
    `v${r.version}`,
    h("span", { class: `stage stage-${r.stage}` }, stageText(r)),
    when(r.createdAt),
    ...metricCells(r.metrics),
    r.gate?.decision ?? "–",
    h("div", { class: "actions" },
      h("button", { type: "button", onclick: () => showDetail(r.version, true),
        "aria-label": `Details of v${r.version}` }, "Details"),
      h("button", { type: "button", onclick: () => promote(r),
        "aria-label": `Change stage of v${r.version}` }, "Change stage…")),
  ]);
  clear($("releases"), rows.length ? table(null, ["Version", "Stage", "Created",
    "Accuracy", "Bal. accuracy", "Log loss", "ROC AUC", "Gate", "Actions"], rows,
  { id: "releases-table" }) : h("p", {}, "No release yet: train one."));
  $("rollback").disabled = !state.releases.some((r) => r.stage === "LIVE");
}

function renderJobs() {
  const rows = state.jobs.map((j) => {
    const bar = h("progress", { max: "1", value: String(j.progress),
      "aria-label": `Progress of the job started ${when(j.createdAt)}` });
    return [
      when(j.createdAt),
      j.status,
      h("div", {}, bar, h("span", { class: "hint" }, `${percent(j.progress)} · ${j.message}`)),
      j.release ? `v${j.release.version} (${j.release.stage})` : (j.error ?? "–"),
    ];
  });
  clear($("jobs"), rows.length ? table(null, ["Requested", "Status", "Progress", "Release"], rows,
    { id: "jobs-table" }) : h("p", { class: "hint" }, "No training yet."));
}

function gateSection(gate) {
  if (!gate || !gate.decision) return h("p", {}, "No gate decision (the first release of a task).");
  const rows = (gate.table ?? []).map((r) => [
    `${r.metric} · ${r.slice}`, String(r.rows), number(r.candidate), number(r.live),
    h("span", { class: r.gain >= 0 ? "pass" : "fail" }, `${r.gain >= 0 ? "+" : "−"}${Math.abs(r.gain).toFixed(4)}`),
  ]);
  return h("div", {},
    h("p", {}, "Decision: ", h("strong", { class: gate.passed ? "pass" : "fail" }, gate.decision),
      gate.liveVersion ? ` against LIVE v${gate.liveVersion}` : "",
      gate.primaryMetric ? ` · rule: ${gate.primaryMetric} on ${gate.improveOn} rows, +${gate.minImprovement} at least, `
        + `no slice worse than −${gate.maxRegression}, then ${gate.promoteTo}` : ""),
    gate.test ? h("p", { id: "gate-test" }, `Test: ${gate.test.rows} paired rows (at least ${gate.minRows}), `
      + `gain ${number(gate.test.estimate, 4)}, 95 % interval ${number(gate.test.interval[0], 4)} to `
      + `${number(gate.test.interval[1], 4)}, p = ${testValue(gate.test.pValue)} (below ${gate.significance} `
      + `to pass) · ${gate.test.method}`) : null,
    h("ul", { class: "reasons" }, (gate.reasons ?? []).map((r) => h("li", {}, r))),
    rows.length ? h("div", { class: "scroll" }, table("The gate's comparison on held-out rows",
      ["Metric · slice", "Rows", "This release", "LIVE", "Gain"], rows)) : null);
}

function comparisonSection(c) {
  const row = (label, t) => [label, String(t.paired), percent(t.agreement), String(t.reviewed),
    percent(t.releaseAccuracy), percent(t.liveAccuracy)];
  return h("div", { class: "scroll" }, table(`Against LIVE v${c.liveVersion} on the predictions both scored`,
    ["Slice", "Paired", "Agreement", "Reviewed", "Accuracy", "LIVE accuracy"],
    [row("overall", c.overall), ...c.byClass.map((t) => row(t.label, t))]));
}

async function showDetail(version, focus) {
  state.selected = version;
  const r = state.releases.find((x) => x.version === version);
  if (!r) return;
  const metrics = Object.entries(r.metrics ?? {}).filter(([, v]) => typeof v === "number");
  const parts = [
    h("p", {}, h("span", { class: `stage stage-${r.stage}` }, stageText(r)),
      ` · created ${when(r.createdAt)} by ${r.createdBy}`),
    h("h3", {}, "Metrics on the held-out test split"),
    table(null, ["Metric", "Value"], metrics.map(([k, v]) => [k, number(v, 4)]), { class: "kv" }),
    h("h3", {}, "Evaluation gate"),
    gateSection(r.gate),
  ];
  if (r.stage === "SHADOW" || r.stage === "CANARY") {
    try {
      const { releaseComparison } = await graphql(COMPARISON, { task: state.task, version });
      parts.push(h("h3", {}, "Live comparison"), comparisonSection(releaseComparison));
    } catch (exc) {
      parts.push(h("p", {}, `No comparison yet: ${exc.message}`));
    }
  }
  $("detail-title").textContent = `Release v${version} of ${state.task}`;
  clear($("detail"), parts);
  if (focus) $("detail-title").focus();
}

// The shared confirmation dialog; resolves with the reason, or null when cancelled.
function confirmAction({ title, text, action, fields = [], check = () => null }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  clear($("confirm-fields"), fields);
  $("confirm-reason").value = "";
  $("confirm-ok").textContent = action;
  $("confirm-error").textContent = "";
  dialog.returnValue = ""; // Escape closes without changing it
  dialog.showModal();
  (fields.length ? fields[0].querySelector("select, input") : $("confirm-reason")).focus();
  return new Promise((resolve) => {
    const onClose = () => {
      dialog.removeEventListener("close", onClose);
      resolve(dialog.returnValue === "ok" ? $("confirm-reason").value.trim() : null);
    };
    dialog.addEventListener("close", onClose);
    $("confirm-ok").onclick = (event) => {
      const problem = check();
      if (problem) {
        event.preventDefault();
        $("confirm-error").textContent = problem;
      }
    };
  });
}

async function rollback() {
  const live = state.releases.find((r) => r.stage === "LIVE");
  const reason = await confirmAction({
    title: `Roll back ${state.task}?`,
    text: `LIVE v${live.version} is retired and the previous LIVE release answers again; `
      + "any canary is withdrawn.",
    action: "Roll back",
  });
  if (reason === null) {
    say("Rollback cancelled.");
    return;
  }
  try {
    const { rollback: now } = await graphql(ROLLBACK, { task: state.task, reason: reason || "rolled back from the ops page" });
    say(`Rolled back: v${now.version} is LIVE again.`);
  } catch (exc) {
    say(`Rollback refused: ${exc.message}`);
  }
  await load();
}

async function promote(r) {
  const stage = h("select", { id: "promote-stage" },
    STAGES.filter((s) => s !== r.stage).map((s) => h("option", { value: s }, s)));
  const traffic = h("input", { id: "promote-traffic", type: "number", min: "1", max: "99", value: "10" });
  const trafficBox = h("div", { hidden: true }, h("label", { for: "promote-traffic" }, "Canary traffic (%)"), traffic);
  stage.addEventListener("change", () => { trafficBox.hidden = stage.value !== "CANARY"; });
  const reason = await confirmAction({
    title: `Change the stage of v${r.version}`,
    text: `v${r.version} is ${stageText(r)}. LIVE retires the current LIVE release.`,
    action: "Change stage",
    fields: [h("div", {}, h("label", { for: "promote-stage" }, "New stage"), stage), trafficBox],
    check: () => (stage.value === "CANARY" && !(traffic.valueAsNumber > 0 && traffic.valueAsNumber < 100)
      ? "Canary traffic must be between 0 and 100 %." : null),
  });
  if (reason === null) {
    say("Stage change cancelled.");
    return;
  }
  try {
    const { promoteRelease: now } = await graphql(PROMOTE, { task: state.task, version: r.version,
      stage: stage.value, p: stage.value === "CANARY" ? traffic.valueAsNumber : null,
      reason: reason || "changed from the ops page" });
    say(`v${now.version} is now ${now.stage}.`);
  } catch (exc) {
    say(`Stage change refused: ${exc.message}`);
  }
  await load();
}

async function retrain() {
  try {
    const { retrain: job } = await graphql(RETRAIN, { task: state.task });
    say(`Training job ${job.id.slice(0, 8)} is ${job.status.toLowerCase()}.`);
  } catch (exc) {
    say(`Retrain refused: ${exc.message}`);
  }
  await load();
}

function onEvent({ releaseEvents: e }) {
  if (e.kind === "TRAINING_FINISHED") {
    say(`Training job ${e.jobId?.slice(0, 8) ?? ""} ${String(e.status).toLowerCase()}: ${e.message ?? ""}`);
  }
  if (e.kind === "AUTO_ERROR_BOUND_EXCEEDED") {
    say(`⚠ AUTO error bound exceeded, release v${e.version}: ${e.reason ?? ""}`);
    loadQuality(state.task, $, isChosen(state.task));
  }
  if (e.kind === "TRAINING_PROGRESS") {
    const job = state.jobs.find((j) => j.id === e.jobId);
    if (job) {
      Object.assign(job, { progress: e.progress ?? job.progress, message: e.message ?? job.message,
        status: e.status ?? job.status });
      renderJobs();
      return;
    }
  }
  scheduleLoad();
}

function showLive(status) {
  const live = $("live");
  live.dataset.state = status;
  live.textContent = { live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…",
    refused: "Live updates refused" }[status] ?? status;
  if (status === "live" && state.task) scheduleLoad();
}

// Drift: what each test's number is, and the report as tables.
const MEASURE = { ks: "p-value", chi2: "p-value", wasserstein: "distance (ref. SD)",
  jensenshannon: "distance" };

// A p-value or distance: four decimals, tiny p-values in exponent form rather than 0.0000.
function testValue(x) {
  if (x === null || x === undefined) return "–";
  return x !== 0 && Math.abs(x) < 1e-4 ? x.toExponential(1) : x.toFixed(4);
}

function driftRows(results, prefix = "") {
  return results.map((f) => {
    const cells = [
      `${prefix}${f.feature}`,
      f.status === "INSUFFICIENT_DATA" ? `too few values (${f.sampleSize})`
        : h("strong", { class: f.drifted ? "fail" : "" }, f.drifted ? "⚠ DRIFTED" : "no"),
      f.test ?? "not tested", f.test ? MEASURE[f.test] ?? f.test : "–", testValue(f.statistic),
      f.threshold === null ? "–" : `${MEASURE[f.test] === "p-value" ? "<" : ">"} ${number(f.threshold)}`,
    ];
    return { cells, drifted: f.drifted };
  });
}

function driftTable(report) {
  const rows = [...driftRows(report.features), ...driftRows(report.prediction, "prediction: ")];
  const node = table(`Release v${report.release}: one test per input feature, then its outputs`,
    ["Feature", "Drifted", "Test", "Statistic", "Value", "Drift when"], rows.map((r) => r.cells),
    { class: "drift-table", id: "drift-table" });
  node.querySelectorAll("tbody tr").forEach((tr, i) => {
    if (rows[i].drifted) tr.classList.add("drifted");
  });
  return h("div", { class: "scroll" }, node);
}

function ratesTable(report) {
  const rows = report.routingRate.map((b, i) => {
    const o = report.overturnRate[i];
    const w = report.outcomeErrorRate[i];
    return [when(b.start), b.count ? `${percent(b.rate)} of ${b.count}` : "no prediction",
      o?.count ? `${percent(o.rate)} of ${o.count}` : "none reviewed",
      w?.count ? `${percent(w.rate)} of ${w.count}` : "no outcome yet"];
  });
  return h("div", { class: "scroll" }, table("Per twelfth of the window",
    ["From", "Routed to review", "Overturned by reviewers", "Wrong by recorded outcomes"], rows,
    { id: "rates-table" }));
}

const VERDICT_TEXT = { DRIFTED: "⚠ Dataset drifted", NOT_DRIFTED: "No dataset drift",
  INSUFFICIENT_DATA: "Not enough recent predictions" };

function renderDrift(report, stored) {
  const verdict = h("p", { class: "verdict", id: "drift-verdict" },
    h("strong", { class: report.verdict === "DRIFTED" ? "fail" : report.verdict === "NOT_DRIFTED" ? "pass" : "" },
      VERDICT_TEXT[report.verdict] ?? report.verdict),
    ` · ${percent(report.share)} of tested features drifted (threshold ${percent(report.shareThreshold)})`,
    ` · ${report.rows} prediction${report.rows === 1 ? "" : "s"} in the last ${report.window}`,
    ` · ${stored ? "stored by the periodic check" : "computed"} ${when(report.computedAt)}`);
  const parts = [verdict, h("p", { id: "drift-message" }, report.message)];
  if (report.verdict === "INSUFFICIENT_DATA") {
    parts.push(h("p", { class: "notice", id: "drift-notice" }, "Too few recent predictions to test "
      + `drift over the last ${report.window}: try a longer window, or check again later.`));
  }
  if (report.driftedFeatures.length) {
    parts.push(h("p", {}, "Drifted: ", h("strong", {}, report.driftedFeatures.join(", "))));
  }
  parts.push(driftTable(report), h("h3", {}, "Routing, overturn and outcome error rates"), ratesTable(report));
  clear($("drift-report"), parts);
}

// Every task's stored report in one query (one aliased field per task).
async function loadDriftSummary(tasks) {
  const params = tasks.map((_, i) => `$t${i}: String!`).join(", ");
  const fields = tasks.map((_, i) => `r${i}: latestDriftReport(task: $t${i}) {
    verdict computedAt driftedFeatures window rows }`).join("\n");
  const variables = Object.fromEntries(tasks.map((t, i) => [`t${i}`, t.name]));
  let data;
  try {
    data = await graphql(`query(${params}) { ${fields} }`, variables);
  } catch (exc) {
    clear($("drift-summary"), h("p", { class: "error" }, `Could not read stored drift reports: ${exc.message}`));
    return;
  }
  const rows = tasks.map((t, i) => {
    const r = data[`r${i}`];
    if (!r) return [t.name, "none stored yet", "–", "–"];
    return [t.name, h("strong", { class: r.verdict === "DRIFTED" ? "fail" : "" }, VERDICT_TEXT[r.verdict] ?? r.verdict),
      r.driftedFeatures.length ? r.driftedFeatures.join(", ") : "none",
      `${when(r.computedAt)} (${r.rows} predictions, ${r.window})`];
  });
  clear($("drift-summary"), h("div", { class: "scroll" }, table("Latest report stored by the periodic check, per task",
    ["Task", "Verdict", "Drifted features", "Computed"], rows, { id: "drift-summary-table" })));
}

function driftProblem(exc) {
  if (exc.code === "NO_DRIFT_REFERENCE") {
    return `No drift reference: ${exc.message}. A release trained by a training job carries one.`;
  }
  if (exc.code === "NO_LIVE_RELEASE") return `No LIVE release to compare with: ${exc.message}.`;
  return `Drift check refused: ${exc.message}`;
}

async function loadDrift() {
  const task = state.task;
  $("drift-task-title").textContent = `Drift of ${task}`;
  $("drift-status").textContent = "";
  clear($("drift-report"), h("p", { class: "hint" }, "Reading the latest drift report…"));
  let report;
  try {
    ({ latestDriftReport: report } = await graphql(LATEST_DRIFT, { task }));
  } catch (exc) {
    if (task === state.task) clear($("drift-report"), h("p", { class: "error" }, driftProblem(exc)));
    return;
  }
  if (task !== state.task) return;
  if (report) renderDrift(report, true);
  else {
    clear($("drift-report"), h("p", { class: "notice", id: "drift-notice" },
      `No drift report stored for ${task} yet: the periodic check stores one per period once the `
      + "task has a LIVE release with a drift reference. “Check now” computes one."));
  }
}

async function checkDrift(event) {
  event.preventDefault();
  const task = state.task;
  const window = $("drift-window").value.trim() || null;
  $("drift-check").disabled = true;
  $("drift-status").textContent = `Checking the drift of ${task}…`;
  try {
    const { driftReport: report } = await graphql(DRIFT_NOW, { task, window });
    if (task !== state.task) return;
    renderDrift(report, false);
    $("drift-status").textContent = `Checked ${task} over the last ${report.window}.`;
  } catch (exc) {
    if (task !== state.task) return;
    $("drift-status").textContent = "";
    clear($("drift-report"), h("p", { class: "notice", id: "drift-notice" }, driftProblem(exc)));
  } finally {
    $("drift-check").disabled = false;
  }
}

async function chooseTask(name) {
  state.task = name;
  state.selected = null;
  clear($("detail"), h("p", { class: "hint" }, "Choose “Details” on a release."));
  $("detail-title").textContent = "Release details";
  state.unsubscribe?.();
  state.unsubscribe = state.ws.subscribe(EVENTS, { task: name }, {
    next: onEvent,
    error: (errors) => {
      if (eventsWereLost(errors)) {
        chooseTask(name); // events were lost: follow again and re-read
        return;
      }
      say(`Live updates stopped: ${[errors].flat().map((x) => x.message).join("; ")}`);
    },
    complete: () => {}, reconnected: scheduleLoad,
  });
  await Promise.all([load(), loadDrift(), loadQuality(name, $, isChosen(name))]);
}

async function main() {
  await signIn(["admin"], "ops");
  $("app-view").hidden = false;
  const { tasks } = await graphql(TASKS);
  const select = $("task");
  clear(select, tasks.map((t) => h("option", { value: t.name }, t.name)));
  state.ws = new SubscriptionClient(storedKey(), { onStatus: showLive });
  select.addEventListener("change", () => chooseTask(select.value));
  $("rollback").addEventListener("click", rollback);
  $("retrain").addEventListener("click", retrain);
  $("drift-form").addEventListener("submit", checkDrift);
  loadDriftSummary(tasks);
  await chooseTask(tasks[0].name);
}

main();
