// The reviewer page: the queue of a task (live through reviewEvents), claim, label with
// buttons or digits, skip with `s`, the lease countdown, and the explanation chart.

import { ApiError, graphql, storedKey } from "./api.js";
import { explanationFigure } from "./chart.js";
import { age, clear, duration, h, percent, table, when } from "./dom.js";
import {
  EXPLANATION_FIELDS, PREDICTION_FIELDS, inputTable, membersTable, probabilityBars, reasonsList,
} from "./prediction.js";
import { signIn } from "./signin.js";
import { SubscriptionClient, eventsWereLost } from "./ws.js";

const TASKS = "{ tasks { name classes hideExplanation leaseSeconds features { name } } }";
const ITEM_FIELDS = "id status priority createdAt dueAt reviewsDone requiredReviews needsAdjudication";
const QUEUE = `query($task: String!) {
  pending: reviewItems(task: $task, status: PENDING, first: 50) { totalCount edges { node { ${ITEM_FIELDS} } } }
  escalated: reviewItems(task: $task, status: ESCALATED, first: 50) { totalCount edges { node { ${ITEM_FIELDS} } } }
  claimed: reviewItems(task: $task, status: CLAIMED, first: 1) { totalCount }
}`;
const CLAIM = `mutation($task: String!, $id: ID) { claimReview(task: $task, itemId: $id) {
  leaseToken expiresAt item { ${ITEM_FIELDS} prediction { ${PREDICTION_FIELDS} ${EXPLANATION_FIELDS} } } } }`;
const REVEAL = `query($id: ID!) { reviewItem(id: $id) { prediction(revealExplanation: true) {
  ${EXPLANATION_FIELDS} } } }`;
const SUBMIT = `mutation($token: String!, $label: String!, $comment: String!) {
  submitReview(leaseToken: $token, label: $label, comment: $comment) { id status finalLabel } }`;
const RELEASE = "mutation($token: String!) { releaseReview(leaseToken: $token) { id status } }";
const EVENTS = `subscription($task: String!) { reviewEvents(task: $task) {
  change itemId status waiting } }`;
const LEASE_LOST = new Set(["LEASE_EXPIRED", "LEASE_STALE"]);

const $ = (id) => document.getElementById(id);
const state = {
  tasks: [], task: null, queue: [], lease: null, busy: false, skipped: new Set(),
  ws: null, unsubscribe: null, refreshTimer: null, tick: null,
};

function say(message) {
  $("status").textContent = message;
}

function currentTask() {
  return state.tasks.find((t) => t.name === state.task);
}

// ---- the queue -----------------------------------------------------------------------

function claimOrder(a, b) {
  return b.priority - a.priority || a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id);
}

async function refreshQueue() {
  const task = state.task;
  let data;
  try {
    data = await graphql(QUEUE, { task });
  } catch (exc) {
    say(`Could not read the queue: ${exc.message}`);
    return;
  }
  if (task !== state.task) return;
  const nodes = [...data.pending.edges, ...data.escalated.edges].map((e) => e.node);
  state.queue = nodes.sort(claimOrder);
  $("count-waiting").textContent = data.pending.totalCount + data.escalated.totalCount;
  $("count-escalated").textContent = data.escalated.totalCount;
  $("count-claimed").textContent = data.claimed.totalCount;
  renderQueue();
}

function renderQueue() {
  const now = Date.now();
  const rows = state.queue.slice(0, 25).map((item) => [
    String(item.priority),
    age(item.createdAt, now),
    due(item.dueAt, now),
    `${item.reviewsDone}/${item.requiredReviews}${item.needsAdjudication ? " · adjudicate" : ""}`,
  ]);
  clear($("queue-list"), rows.length
    ? table(`Waiting items in claim order${state.queue.length > 25 ? " (first 25)" : ""}`,
      ["Priority", "Age", "Due", "Reviews"], rows, { class: "queue-table" })
    : h("p", { class: "hint" }, "Nothing is waiting. New items appear here as they arrive."));
}

function due(iso, now) {
  const left = new Date(iso).getTime() - now;
  return left < 0 ? `overdue ${duration(-left)}` : `in ${duration(left)}`;
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refreshQueue, 200);
}

function watch(task) {
  state.unsubscribe?.();
  state.unsubscribe = state.ws.subscribe(EVENTS, { task }, {
    next: () => scheduleRefresh(),
    error: (errors) => {
      if (eventsWereLost(errors)) {
        watch(task); // events were lost: follow again and re-read what was missed
        scheduleRefresh();
        return;
      }
      say(`Live updates stopped: ${[errors].flat().map((e) => e.message).join("; ")}`);
    },
    complete: () => {},
    reconnected: () => scheduleRefresh(),
  });
}

function showLive(status) {
  const live = $("live");
  live.dataset.state = status;
  live.textContent = { live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…",
    refused: "Live updates refused" }[status] ?? status;
  if (status === "live") scheduleRefresh(); // read what was missed while disconnected
}

// ---- the open item -------------------------------------------------------------------

function showItem(lease) {
  state.lease = lease;
  const { item } = lease;
  const p = item.prediction;
  const task = currentTask();
  $("item-empty").hidden = true;
  $("item-body").hidden = false;
  document.querySelector(".review-layout").classList.add("has-item");
  $("lease-problem").hidden = true;
  $("item-title").textContent = `Item ${item.id.slice(0, 8)} · priority ${item.priority}`
    + (item.needsAdjudication ? " · adjudication" : "");
  $("model-label").textContent = `${p.label} (${percent(p.confidence)}), prediction set {${p.predictionSet.join(", ")}}, release v${p.release}`;
  clear($("model-probs"), probabilityBars(p.probabilities, p.label));
  clear($("reasons"), reasonsList(p.reasons));
  clear($("input"), inputTable(p.input, task.features));
  clear($("members"), membersTable(p.members));
  if (task.hideExplanation) {
    clear($("explanation"), h("button", { type: "button", id: "reveal", onclick: reveal },
      "Show explanation"), h("p", { class: "hint" },
      "Hidden until you ask, so it does not sway your label (the task's review policy)."));
  } else {
    showExplanation(p.explanation);
  }
  clear($("labels"), task.classes.map((c, i) => h("button", {
    type: "button", class: "label-button", "data-label": c,
    "aria-keyshortcuts": i < 9 ? String(i + 1) : null,
    onclick: () => submit(c),
  }, i < 9 ? h("kbd", {}, String(i + 1)) : null, ` ${c}`)));
  $("shortcuts").textContent = `Keys: 1–${Math.min(9, task.classes.length)} label · s skip`;
  $("comment").value = "";
  startCountdown();
  $("item-title").focus();
}

function showExplanation(explanation) {
  const box = $("explanation");
  clear(box, explanation ? explanationFigure(explanation, box)
    : h("p", {}, "No explanation stored for this prediction."));
}

async function reveal() {
  const { item } = state.lease;
  try {
    const data = await graphql(REVEAL, { id: item.id });
    showExplanation(data.reviewItem.prediction.explanation);
    $("explain-title").focus?.();
  } catch (exc) {
    say(`Could not load the explanation: ${exc.message}`);
  }
}

function closeItem(message) {
  state.lease = null;
  clearInterval(state.tick);
  $("item-body").hidden = true;
  $("item-empty").hidden = false;
  document.querySelector(".review-layout").classList.remove("has-item");
  $("item-title").textContent = "No item open";
  if (message) say(message);
}

function startCountdown() {
  clearInterval(state.tick);
  const update = () => {
    if (!state.lease) return;
    const left = Math.round((new Date(state.lease.expiresAt).getTime() - Date.now()) / 1000);
    const out = $("lease-left");
    if (left > 0) {
      out.textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")} left`;
      out.dataset.urgent = left <= 30 ? "true" : "false";
      return;
    }
    out.textContent = "expired";
    out.dataset.urgent = "true";
    clearInterval(state.tick);
    leaseLost(`Your lease on this item expired at ${when(state.lease.expiresAt)}. The item `
      + "goes back to the queue and a label sent now will be refused.");
  };
  update();
  state.tick = setInterval(update, 1000);
}

function leaseLost(message, refusal = "") {
  $("lease-problem-text").textContent = message;
  $("lease-problem-refusal").textContent = refusal;
  $("lease-problem").hidden = false;
}

// ---- actions -------------------------------------------------------------------------

// One action at a time (a double key press must not label two items); its result.
async function guarded(work) {
  if (state.busy) return undefined;
  state.busy = true;
  document.body.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    state.busy = false;
    document.body.removeAttribute("aria-busy");
  }
}

async function claim(itemId = null) {
  const data = await graphql(CLAIM, { task: state.task, id: itemId });
  return data.claimReview;
}

// The next item in the server's order (priority, then age), passing over the ones this
// reviewer skipped while others wait; the server decides when the list is stale.
async function claimNext() {
  for (const candidate of state.queue.filter((i) => !state.skipped.has(i.id)).slice(0, 3)) {
    try {
      const lease = await claim(candidate.id);
      if (lease) return lease;
    } catch (exc) {
      if (!(exc instanceof ApiError) || exc.code === "UNAUTHENTICATED") throw exc;
      // taken by someone else, or reviewed by you already: try the next one
    }
  }
  return claim();
}

function openNext(prefix = "") {
  return guarded(async () => {
    try {
      const lease = await claimNext();
      if (lease) {
        showItem(lease);
        say(`${prefix}Claimed item ${lease.item.id.slice(0, 8)}.`);
      } else {
        closeItem(`${prefix}Nothing is waiting for you in ${state.task}.`);
      }
    } catch (exc) {
      say(`${prefix}Could not claim: ${exc.message}`);
    }
    scheduleRefresh();
  });
}

function submit(label) {
  if (!state.lease) return;
  const { leaseToken, item } = state.lease;
  return guarded(async () => {
    try {
      const data = await graphql(SUBMIT, { token: leaseToken, label, comment: $("comment").value });
      state.lease = null;
      return `Labelled item ${item.id.slice(0, 8)} “${label}” `
        + `(${data.submitReview.status.toLowerCase()}). `;
    } catch (exc) {
      if (LEASE_LOST.has(exc.code)) {
        leaseLost("Your label was not recorded: the lease on this item is over.",
          `The server answered ${exc.code}: ${exc.message}`);
        $("reclaim").focus();
      } else {
        say(`Could not submit: ${exc.message}`);
      }
      return null;
    }
  }).then((done) => (done ? openNext(done) : undefined)); // straight to the next item
}

function skip() {
  if (!state.lease) return;
  const { leaseToken, item } = state.lease;
  state.skipped.add(item.id);
  return guarded(async () => {
    try {
      await graphql(RELEASE, { token: leaseToken });
    } catch (exc) {
      if (!LEASE_LOST.has(exc.code)) {
        say(`Could not release the item: ${exc.message}`);
        return;
      }
    }
    closeItem(`Skipped item ${item.id.slice(0, 8)}: it is back in the queue for others.`);
    scheduleRefresh();
  });
}

function reclaim() {
  if (!state.lease) return openNext();
  const { item } = state.lease;
  return guarded(async () => {
    try {
      const lease = await claim(item.id);
      if (lease) {
        showItem(lease);
        say(`Claimed item ${item.id.slice(0, 8)} again.`);
        return true;
      }
    } catch (exc) {
      say(`Item ${item.id.slice(0, 8)} cannot be claimed again (${exc.message}).`);
    }
    return false;
  }).then((again) => (again === false ? openNext("Claiming the next item instead. ") : undefined));
}

function onKey(event) {
  if (!state.lease || event.altKey || event.ctrlKey || event.metaKey) return;
  if (event.target.closest("input, textarea, select, [contenteditable]")) return;
  const classes = currentTask().classes;
  if (/^[1-9]$/.test(event.key) && Number(event.key) <= classes.length) {
    event.preventDefault();
    submit(classes[Number(event.key) - 1]);
  } else if (event.key === "s" || event.key === "S") {
    event.preventDefault();
    skip();
  }
}

async function chooseTask(name) {
  if (state.lease) await skip();
  state.task = name;
  state.queue = [];
  state.skipped.clear();
  closeItem("");
  watch(name);
  await refreshQueue();
}

async function main() {
  await signIn(["reviewer", "admin"], "review");
  $("app-view").hidden = false;
  ({ tasks: state.tasks } = await graphql(TASKS));
  const select = $("task");
  clear(select, state.tasks.map((t) => h("option", { value: t.name }, t.name)));
  state.ws = new SubscriptionClient(storedKey(), { onStatus: showLive });
  select.addEventListener("change", () => chooseTask(select.value));
  $("claim").addEventListener("click", () => openNext());
  $("skip").addEventListener("click", () => skip());
  $("reclaim").addEventListener("click", () => reclaim());
  $("decision").addEventListener("submit", (event) => event.preventDefault());
  document.addEventListener("keydown", onKey);
  setInterval(renderQueue, 30000); // ages move on
  await chooseTask(state.tasks[0].name);
}

main();
