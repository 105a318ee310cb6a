"use strict";
const VERDICTS = {d: "defective", o: "ok", n: "not_a_part"};
const $ = (id) => document.getElementById(id);
let items = [], skipped = [], front = null, busy = false, photoUrl = null, mapUrl = null;
let token = sessionStorage.getItem("review-token") || "";
// this page's own name: an undo takes back only this page's last verdict, never another browser's
const PAGE = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + "-" + String(Math.random()).slice(2, 12));
const GIVE_UP_MS = 10000;  // a verdict the server has not answered by then is not waited for

async function api(path, body) {
  const headers = token ? {"Authorization": "Bearer " + token} : {};
  const options = {headers};
  if (body !== undefined) {
    options.method = "POST";
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  options.signal = AbortSignal.timeout(GIVE_UP_MS);
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error(e.name === "TimeoutError" ? "no answer from the station in " + GIVE_UP_MS / 1000 + " s: check it, then reload" : e.message);
  }
  if (response.status === 401) { $("login").hidden = false; $("work").hidden = true; throw new Error("token needed"); }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (e) {}
    throw new Error(message);
  }
  return response;
}

function say(text, error) { $("status").textContent = text; $("status").className = error ? "error" : ""; }

function order(list) {
  const waiting = list.filter((i) => !skipped.includes(i.sha256));
  const later = skipped.map((s) => list.find((i) => i.sha256 === s)).filter(Boolean);
  const all = waiting.concat(later);
  const i = all.findIndex((item) => item.sha256 === front);
  if (i > 0) all.unshift(all.splice(i, 1)[0]);
  return all;
}

async function load() {
  const queue = await (await api("/api/queue")).json();
  $("inspector").textContent = queue.inspector;
  $("missing").textContent = queue.missing ? queue.missing + " logged photos are no longer in the watch folders" : "";
  $("problems").textContent = queue.problems.length ? "left out of training: " + queue.problems.join("; ") : "";
  items = order(queue.items);
  await show();
}

async function show() {
  $("left").textContent = items.length;
  $("skipped").textContent = skipped.length ? "(" + skipped.length + " skipped)" : "";
  $("login").hidden = true;
  $("empty").hidden = items.length > 0;
  $("work").hidden = items.length === 0;
  const item = items[0];
  document.body.dataset.current = item ? item.sha256 : "";
  if (!item) return;
  $("decision").textContent = item.decision === "not_a_part" ? "not a part" : item.decision;
  $("probability").textContent = item.defect_probability === null ? "-" :
      item.defect_probability.toFixed(4) + " (threshold " + item.threshold.toFixed(4) + ")";
  $("reason").textContent = item.reason || "-";
  $("name").textContent = item.name;
  $("decided").textContent = item.decided_at;
  $("version").textContent = item.model_version;
  const blob = await (await api("/api/photo/" + item.sha256)).blob();
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(blob);
  $("photo").src = photoUrl;
  await showMap(item);
}

// where the model of good parts points, beside the photo, when the watcher kept its map
async function showMap(item) {
  if (mapUrl) URL.revokeObjectURL(mapUrl);
  mapUrl = null;
  $("map").hidden = true;
  let blob;
  try { blob = await (await api("/api/map/" + item.sha256)).blob(); } catch (e) { return; }
  if (items[0] !== item) return;
  mapUrl = URL.createObjectURL(blob);
  $("map").src = mapUrl;
  $("map").hidden = false;
}

async function act(key) {
  const item = items[0];
  if (key === "u") {
    const result = await (await api("/api/undo", {page: PAGE})).json();
    front = result.undone ? result.undone.sha256 : null;
    skipped = skipped.filter((s) => s !== front);
    say(result.undone ? "undone: " + result.undone.verdict : "nothing of yours to undo");
    return load();
  }
  if (!item) return;
  if (key === "s") {
    skipped = skipped.filter((s) => s !== item.sha256).concat([item.sha256]);
    front = null;
    items = order(items);
    say("skipped " + item.name);
    return show();
  }
  const result = await (await api("/api/verdict", {sha256: item.sha256, verdict: VERDICTS[key], page: PAGE})).json();
  skipped = skipped.filter((s) => s !== item.sha256);
  front = null;
  const dispute = result.disputed.length ? " (recorded as a dispute: " + result.disputed.join(", ") + ")" : "";
  say(result.recorded.verdict + ": " + result.name + dispute, Boolean(dispute));
  return load();
}

async function press(key) {
  if (busy || !["d", "o", "n", "s", "u"].includes(key)) return;
  busy = true;
  document.body.dataset.busy = "true";
  try { await act(key); } catch (e) { say(e.message, true); }
  busy = false;
  document.body.dataset.busy = "false";
}

// one verdict per deliberate key press: a key held down repeats, and would label photos nobody saw
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" || event.ctrlKey || event.altKey || event.metaKey) return;
  if (event.repeat) return;
  press(event.key.toLowerCase());
});
document.querySelectorAll("button[data-key]").forEach((b) => b.addEventListener("click", () => {
  b.blur();  // focus left on a verdict button would let Enter or Space repeat it on the next photo, unseen
  press(b.dataset.key);
}));
$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("review-token", token);
  load().catch((e) => say(e.message, true));
});
document.body.dataset.busy = "true";
load().catch((e) => say(e.message, true)).finally(() => { document.body.dataset.busy = "false"; });
