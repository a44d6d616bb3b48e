// orch's dashboard: polls /api/overview every second and redraws four tables.
// Text goes in with textContent only: names come from users and must never become markup.
"use strict";

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function bar(row, used, total) {
  const td = row.insertCell();
  const outer = document.createElement("span");
  outer.className = "bar";
  const inner = document.createElement("span");
  inner.style.width = total ? Math.min(100, (100 * used) / total).toFixed(0) + "%" : "0%";
  outer.appendChild(inner);
  td.appendChild(outer);
  td.appendChild(document.createTextNode(total ? " " + ((100 * used) / total).toFixed(0) + "%" : " -"));
}

function fill(id, headers, items, draw) {
  const table = document.getElementById(id);
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  for (const h of headers) {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  }
  const body = table.createTBody();
  if (!items.length) {
    cell(body.insertRow(), "none");
    return;
  }
  for (const item of items) draw(body.insertRow(), item);
}

function draw(doc) {
  fill("nodes", ["name", "state", "instances", "cpu requested", "memory requested"], doc.nodes, (r, n) => {
    cell(r, n.name);
    cell(r, n.state + (n.schedulable ? "" : " (cordoned)"), n.state);
    cell(r, String(n.instances));
    bar(r, n.cpu[0], n.cpu[1]);
    bar(r, n.memory[0], n.memory[1]);
  });
  fill("apps", ["name", "ready", "running", "pending", "generation", "rollout"], doc.apps, (r, a) => {
    cell(r, a.name);
    cell(r, a.ready + "/" + a.replicas, a.ready === a.replicas ? "Ready" : "Pending");
    cell(r, String(a.running));
    cell(r, String(a.pending));
    cell(r, String(a.generation));
    const stuck = a.rollout.startsWith("ProgressDeadlineExceeded");
    cell(r, a.rollout, a.rollout === "stable" ? "stable" : stuck ? "Failed" : "Pending");
  });
  fill("instances", ["name", "app", "node", "state", "ready", "restarts", "reason"], doc.instances, (r, i) => {
    cell(r, i.name);
    cell(r, i.app);
    cell(r, i.node || "-");
    cell(r, i.state, i.state);
    cell(r, i.ready ? "yes" : "no");
    cell(r, String(i.restarts));
    cell(r, i.reason || "");
  });
  fill("events", ["time", "type", "object", "reason", "message"], doc.events, (r, e) => {
    cell(r, e.time);
    cell(r, e.type, e.type);
    cell(r, e.object);
    cell(r, e.reason);
    cell(r, e.message);
  });
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch("/api/overview", { cache: "no-store" });
    const doc = await resp.json();
    if (!resp.ok) throw new Error(doc.error || resp.statusText);
    draw(doc);
    status.textContent = "updated " + new Date(doc.time * 1000).toLocaleTimeString();
    status.className = "";
  } catch (err) {
    status.textContent = "cannot reach the scheduler: " + err.message + " (retrying)";
    status.className = "error";
  }
}

refresh();
setInterval(refresh, 1000);
