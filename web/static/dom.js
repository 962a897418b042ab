// Building DOM nodes without innerHTML (values come from users' inputs).

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function clear(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

export function table(caption, headers, rows, attrs = {}) {
  return h("table", attrs,
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) =>
      i === 0 ? h("th", { scope: "row" }, c) : h("td", {}, c))))));
}

export function percent(x) {
  return x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)} %`;
}

export function number(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  return typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(digits)) : String(x);
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

// How long ago `iso` was: "3 min", "23 h", "4 d"
export function age(iso, now = Date.now()) {
  return duration(now - new Date(iso).getTime());
}

// A span of milliseconds for people, to the largest unit: "45 s", "3 min", "23 h", "4 d"
export function duration(ms) {
  const seconds = Math.max(0, Math.round(ms / 1000));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h`;
  return `${Math.floor(hours / 24)} d`;
}
