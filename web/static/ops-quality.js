// The ops page's live AUTO quality: the LIVE release's error among AUTO predictions, as
// the audit sample and recorded outcomes tell it, with its time-uniform interval
// (autoQuality).

import { graphql } from "./api.js";
import { clear, h, percent, table } from "./dom.js";

const QUALITY = `query($task: String!) { autoQuality(task: $task) {
  label n errors estimate lowerBound upperBound confidence maxAutoError exceeded } }`;

function row(q) {
  const state = q.exceeded ? h("strong", { class: "fail" }, "⚠ ABOVE THE BOUND")
    : q.maxAutoError === null ? "no bound set"
      : q.n === 0 ? "no labels yet"
        : q.upperBound <= q.maxAutoError ? h("strong", { class: "pass" }, "within the bound")
          : "not yet shown either way";
  return [q.label ?? "all classes", String(q.n), String(q.errors), percent(q.estimate),
    `${percent(q.lowerBound)} – ${percent(q.upperBound)} (${percent(q.confidence)})`,
    q.maxAutoError === null ? "–" : percent(q.maxAutoError), state];
}

// isCurrent() says whether `task` is still the chosen one: an answer for a task the user has
// left (a slow first read that ends after the next task's) is dropped, not drawn.
export async function loadQuality(task, $, isCurrent) {
  clear($("quality-report"), h("p", { class: "hint" }, "Reading live AUTO quality…"));
  let rows;
  try {
    ({ autoQuality: rows } = await graphql(QUALITY, { task }));
  } catch (exc) {
    if (!isCurrent()) return;
    clear($("quality-report"), h("p", { class: "error" }, `Could not read AUTO quality: ${exc.message}`));
    return;
  }
  if (!isCurrent()) return;
  if (!rows.length) {
    clear($("quality-report"), h("p", { class: "notice" }, `${task} has no LIVE release.`));
    return;
  }
  const node = table(`LIVE release of ${task}: error among AUTO predictions`,
    ["Predicted class", "Labelled", "Wrong", "Estimate", "Interval (confidence)", "Bound", "State"],
    rows.map(row), { id: "quality-table" });
  node.querySelectorAll("tbody tr").forEach((tr, i) => {
    if (rows[i].exceeded) tr.classList.add("drifted");
  });
  clear($("quality-report"), h("div", { class: "scroll" }, node));
}
