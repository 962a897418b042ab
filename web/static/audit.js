// The audit page (auditors, admins): search predictions by task, time range, route,
// status, labels and release, and open one's whole story (predictionStory): input, release
// and members, explanation chart and picture, reasons, each review, final label, the
// releases that later learned from it and its audit events. Verify the audit chain, and
// export the audit events of a time range as JSON Lines.

import { ApiError, graphql, storedKey } from "./api.js";
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
const STORY = `query($id: ID!) { predictionStory(id: $id) {
  prediction { ${PREDICTION_FIELDS} ${EXPLANATION_FIELDS} idempotencyKey latencyMs
    explanationUrl pngUrl: explanationUrl(format: PNG) }
  release { version stage members { name version algorithm weight sha256 } }
  reviewItem { status resolution requiredReviews reviewsDone }
  reviews { reviewer label comment reviewKind at }
  finalLabel
  trainedInto { version stage dataSplit }
  auditEvents { id at kind actor payload } } }`;
const VERIFY = "{ verifyAuditLog { ok checked firstBrokenEventId reason headHash } }";
const EVENTS = `query($since: DateTime, $until: DateTime, $first: Int!, $after: String) {
  auditEvents(since: $since, until: $until, first: $first, after: $after) {
    totalCount pageInfo { hasNextPage endCursor }
    edges { node { sequence at kind actor task subjectType subjectId payloadJson prevHash hash }
    } } }`;
const EXPORT_PAGE = 500; // the server's default page_size_max

const $ = (id) => document.getElementById(id);
const state = { tasks: [], filters: null, after: null, rows: [], pictures: [], opened: null };

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

// A server path fetched with the key in the Authorization header (an <img> or a link
// cannot send one) as a blob URL, revoked when another prediction is opened.
async function blobUrl(path) {
  let response;
  try {
    response = await fetch(path, { headers: { Authorization: `Bearer ${storedKey()}` } });
  } catch (exc) {
    throw new ApiError(`The server cannot be reached (${exc.message}).`, "NETWORK", 0);
  }
  if (!response.ok) {
    let message = `the server answered ${response.status}`;
    try {
      const body = await response.json();
      message = body.errors?.[0]?.message ?? message;
    } catch { /* not JSON: keep the status */ }
    throw new ApiError(message, "HTTP", response.status);
  }
  const url = URL.createObjectURL(await response.blob());
  state.pictures.push(url);
  return url;
}

function forgetPictures() {
  for (const url of state.pictures) URL.revokeObjectURL(url);
  state.pictures = [];
}

// What the picture shows, in words, for people who cannot see it.
function pictureAlt(p) {
  const e = p.explanation;
  if (!e?.contributions?.length) return `Explanation picture of prediction ${p.id}.`;
  const top = [...e.contributions].sort((a, b) => Math.abs(b.shap) - Math.abs(a.shap)).slice(0, 3)
    .map((c) => `${c.feature} ${c.shap >= 0 ? "+" : "−"}${Math.abs(c.shap).toFixed(3)}`);
  return `Waterfall chart explaining why prediction ${p.id} is ${p.label}: from the base value `
    + `${number(e.baseValue)} to ${number(e.outputValue)} (${e.space.toLowerCase().replaceAll("_", "-")}`
    + ` of ${e.explainedClass}); largest contributions ${top.join(", ")}.`;
}

function pictureSection(p) {
  const box = h("div", { id: "detail-picture", class: "picture" });
  if (!p.explanationUrl) {
    box.append(h("p", {}, "No explanation picture for this key."));
    return box;
  }
  const status = h("p", { class: "hint", role: "status" }, "Drawing the explanation picture…");
  const download = h("button", { type: "button", id: "download-png" }, "Download the picture as PNG");
  const note = h("p", { class: "error", role: "alert" });
  download.addEventListener("click", async () => {
    note.textContent = "";
    download.disabled = true;
    try {
      const url = await blobUrl(p.pngUrl);
      h("a", { href: url, download: `explanation-${p.id}.png` }).click();
    } catch (exc) {
      note.textContent = `Could not download the PNG: ${exc.message}`;
    } finally {
      download.disabled = false;
    }
  });
  box.append(status, download, note);
  const opened = state.opened;
  blobUrl(p.explanationUrl).then((url) => {
    if (state.opened !== opened) return; // another prediction was opened meanwhile
    const img = h("img", { id: "explanation-picture", src: url, alt: pictureAlt(p),
      width: "800" });
    status.replaceWith(h("div", { class: "scroll" }, img));
  }, (exc) => {
    status.className = "error";
    status.textContent = `Could not draw the explanation picture: ${exc.message}`;
  });
  return box;
}

function reviewsSection(story) {
  const item = story.reviewItem;
  if (!item) return h("p", {}, "Not sent to review (answered automatically).");
  const head = h("p", {}, `Review item ${item.status.toLowerCase().replaceAll("_", " ")}`,
    ` · ${item.reviewsDone} of ${item.requiredReviews} review${item.requiredReviews === 1 ? "" : "s"}`,
    item.resolution ? ` · resolution: ${item.resolution}` : "");
  if (!story.reviews.length) return h("div", {}, head, h("p", {}, "No review submitted yet."));
  return h("div", {}, head, h("div", { class: "scroll" }, table(null,
    ["Reviewer", "Label", "Comment", "Kind", "Time"],
    story.reviews.map((r) => [r.reviewer, r.label, r.comment || "–", r.reviewKind.toLowerCase(), when(r.at)]),
    { id: "reviews-table" })));
}

function eventsSection(events) {
  if (!events.length) return h("p", {}, "No audit event names this prediction.");
  return h("ol", { class: "events", id: "events-list" }, events.map((e) =>
    h("li", {}, h("p", {}, h("strong", {}, `#${e.id} ${e.kind}`), ` · ${when(e.at)} · ${e.actor}`),
      h("code", { class: "payload" }, JSON.stringify(e.payload)))));
}

function releaseMembers(release) {
  return table(null, ["Member", "Algorithm", "Weight", "Artifact SHA-256"],
    release.members.map((m) => [`${m.name} (${m.version})`, m.algorithm, number(m.weight, 2),
      h("code", { class: "hash", title: m.sha256 }, `${m.sha256.slice(0, 16)}…`)]));
}

async function open(id) {
  let story;
  try {
    ({ predictionStory: story } = await graphql(STORY, { id }));
  } catch (exc) {
    clear($("detail"), h("p", { class: "error" }, `Could not open ${id}: ${exc.message}`));
    return;
  }
  forgetPictures();
  state.opened = id;
  const p = story.prediction;
  const features = state.tasks.find((t) => t.name === p.task)?.features;
  const facts = [
    ["Task", p.task], ["Release", `v${story.release.version} (${story.release.stage} now)`],
    ["Created", when(p.createdAt)],
    ["Label", `${p.label} (${percent(p.confidence)})`], ["Prediction set", p.predictionSet.join(", ")],
    ["Route", p.route], ["Status", p.status], ["Final label", story.finalLabel ?? "–"],
    ["Latency", `${number(p.latencyMs, 1)} ms`], ["Idempotency key", p.idempotencyKey ?? "–"],
    ["Learned by", story.trainedInto.length
      ? story.trainedInto.map((u) => `v${u.version} (${u.stage}, ${u.dataSplit.toLowerCase()})`).join(", ")
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
    h("h3", {}, "Reviews"), reviewsSection(story),
    h("h3", {}, "Explanation"),
    h("div", { id: "detail-chart" }),
    h("h3", {}, "Explanation picture (as in the audit file)"),
    pictureSection(p),
    h("h3", {}, "Members' votes"), h("div", { class: "scroll" }, membersTable(p.members)),
    h("h3", {}, `Release v${story.release.version}`),
    h("div", { class: "scroll" }, releaseMembers(story.release)),
    h("h3", {}, "Audit events"), eventsSection(story.auditEvents));
  const chart = $("detail-chart");
  chart.append(p.explanation ? explanationFigure(p.explanation, chart)
    : h("p", {}, "No explanation stored."));
  $("detail-title").focus();
}

async function verify() {
  const button = $("verify");
  const out = $("verify-result");
  button.disabled = true;
  clear(out, h("p", {}, "Verifying…"));
  try {
    const { verifyAuditLog: v } = await graphql(VERIFY);
    const facts = [
      ["Result", h("strong", { class: v.ok ? "pass" : "fail" },
        v.ok ? "✓ The chain is intact" : "✗ The chain is broken")],
      ["Events checked", String(v.checked)],
      ["First broken event", v.firstBrokenEventId === null ? "none" : String(v.firstBrokenEventId)],
      ["Reason", v.reason ?? "–"],
      ["Head hash", v.headHash ? h("code", { class: "hash" }, v.headHash) : "– (broken)"],
    ];
    clear(out, table(null, ["Check", "Value"], facts, { class: "kv", id: "verify-table" }));
  } catch (exc) {
    clear(out, h("p", { class: "error" }, `Verification refused: ${exc.message}`));
  } finally {
    button.disabled = false;
  }
}

// A GraphQL DateTime as the audit log hashes it: UTC, microseconds, "+00:00".
function stamp(iso) {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$/.exec(iso);
  if (!m || (m[3] && m[3] !== "Z" && m[3] !== "+00:00")) return iso;
  return `${m[1]}.${(m[2] ?? "").padEnd(6, "0").slice(0, 6)}+00:00`;
}

// One event as the CLI export writes it (`arbiter audit export`, without attached inputs):
// canonical JSON, sorted keys, no spaces, the payload in its hashed spelling.
function exportLine(e) {
  const fields = { actor: e.actor, at: stamp(e.at), hash: e.hash, id: e.sequence, kind: e.kind,
    payload: null, prev_hash: e.prevHash, subject_id: e.subjectId, subject_type: e.subjectType,
    task: e.task };
  return `{${Object.keys(fields).sort().map((k) => `${JSON.stringify(k)}:${
    k === "payload" ? e.payloadJson : JSON.stringify(fields[k])}`).join(",")}}`;
}

function fileStamp(iso) {
  return iso ? iso.replace(/[:.]/g, "-") : null;
}

async function exportEvents() {
  const button = $("export");
  const status = $("export-status");
  let range;
  try {
    const f = readFilters();
    range = { since: f.createdAfter, until: f.createdBefore };
  } catch (exc) {
    status.className = "error";
    status.textContent = `Cannot export: ${exc.message}`;
    return;
  }
  status.className = "";
  button.disabled = true;
  const lines = [];
  let after = null;
  let total = null;
  try {
    for (;;) {
      status.textContent = total === null ? "Reading audit events…"
        : `Read ${lines.length} of ${total} audit events…`;
      const { auditEvents: page } = await graphql(EVENTS, { ...range, first: EXPORT_PAGE, after });
      total = page.totalCount;
      lines.push(...page.edges.map((edge) => exportLine(edge.node)));
      if (!page.pageInfo.hasNextPage) break;
      after = page.pageInfo.endCursor;
    }
  } catch (exc) {
    status.className = "error";
    status.textContent = `Export stopped after ${lines.length} events: ${exc.message}`;
    button.disabled = false;
    return;
  }
  const name = `audit-events-${fileStamp(range.since) ?? "start"}-to-${fileStamp(range.until) ?? "now"}.jsonl`;
  const url = URL.createObjectURL(new Blob(lines.map((l) => `${l}\n`), { type: "application/x-ndjson" }));
  h("a", { href: url, download: name }).click();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  status.textContent = `Exported ${lines.length} audit event${lines.length === 1 ? "" : "s"} to ${name}.`;
  button.disabled = false;
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
  $("verify").addEventListener("click", verify);
  $("export").addEventListener("click", exportEvents);
  await search();
}

main();
