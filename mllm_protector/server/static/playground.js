// The playground page: check an answer with /v1/guard, or chat through the proxy with streaming.
// Plain browser JavaScript, no build step, no dependencies. Every decision shown comes from the proxy's
// verdict; the page only draws it (score bar and window chart against the threshold the verdict carries).
"use strict";

const KEY_STORE = "mllm-protector.api-key";
const SVG_NS = "http://www.w3.org/2000/svg";
const VERDICT_LABELS = {
  pass: "PASS — not flagged",
  detoxified: "DETOXIFIED — flagged, rewritten",
  refused: "REFUSED — replaced by the refusal",
  flagged: "FLAGGED — not rewritten",
  unchecked: "UNCHECKED — released without a check",
};
const REPLACING = new Set(["detoxified", "refused", "flagged"]);
const TIMING_LABELS = { detect_ms: "detector", detox_ms: "detoxifier (incl. re-checks)", total_ms: "guard total" };

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function headers() {
  const key = sessionStorage.getItem(KEY_STORE);
  const out = { "Content-Type": "application/json" };
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

async function errorMessage(reply) {
  try {
    const body = await reply.json();
    if (body && body.error && body.error.message) return `HTTP ${reply.status}: ${body.error.message}`;
  } catch (_) { /* not JSON: fall through */ }
  return `HTTP ${reply.status} ${reply.statusText}`;
}

function setStatus(node, text, isError = false) {
  node.textContent = text;
  node.classList.toggle("error", isError);
}

function fmt(value, digits = 3) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

// ------------------------------------------------------------------ tabs and key

function showTab(name) {
  for (const tab of ["check", "chat"]) {
    $("tab-" + tab).setAttribute("aria-selected", String(tab === name));
    $("panel-" + tab).hidden = tab !== name;
  }
  if (name === "chat") loadModels();
}

function initKey() {
  const input = $("api-key");
  input.value = sessionStorage.getItem(KEY_STORE) || "";
  input.addEventListener("change", () => {
    const key = input.value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    if (!$("panel-chat").hidden) loadModels();
  });
}

// ------------------------------------------------------------------ check tab

async function check(event) {
  event.preventDefault();
  const status = $("check-status");
  const button = $("check");
  const response = $("response").value;
  const query = $("query").value.trim();
  if (!response.trim()) {
    setStatus(status, "Paste an answer to check.", true);
    return;
  }
  button.disabled = true;
  setStatus(status, $("detoxify").checked ? "checking (a flagged answer is rewritten: a few seconds) …" : "checking …");
  const t0 = performance.now();
  try {
    const reply = await fetch("v1/guard", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ response, query: query || null, detoxify: $("detoxify").checked }),
    });
    if (!reply.ok) {
      setStatus(status, await errorMessage(reply), true);
      return;
    }
    const verdict = await reply.json();
    showVerdict(verdict, response, performance.now() - t0);
    setStatus(status, "");
  } catch (err) {
    setStatus(status, "The proxy did not answer: " + err.message, true);
  } finally {
    button.disabled = false;
  }
}

function showVerdict(v, original, roundTripMs) {
  $("result").hidden = false;
  const badge = $("verdict");
  badge.textContent = VERDICT_LABELS[v.action] || v.action;
  badge.dataset.action = v.action;
  badge.dataset.harmful = String(v.harmful);

  const fill = $("score-fill");
  fill.style.width = `${100 * (v.score ?? 0)}%`;
  fill.classList.toggle("harmful", v.harmful);
  $("score-threshold").style.left = `calc(${100 * v.threshold}% - 1px)`;
  let text = `P(harmful) ${fmt(v.score)} · threshold ${fmt(v.threshold)}`;
  if (v.action === "detoxified") text += ` · rewrite ${fmt(v.final_score)}`;
  if (v.error) text += ` · ${v.error}`;
  $("score-text").textContent = text;
  $("category").textContent = v.category || "–";
  $("rounds").textContent = String(v.rounds);

  const top = topWindow(v);
  drawWindows(v, top);
  showOriginal(v, original, v.harmful ? top : null);
  $("shown").textContent = v.text;
  showTimings(v.timings, roundTripMs);
}

function topWindow(v) {
  if (!v.windows || !v.windows.length) return null;
  let best = 0;
  v.windows.forEach((w, k) => { if (w.score > v.windows[best].score) best = k; });
  return best;
}

function drawWindows(v, top) {
  const box = $("windows-chart");
  box.replaceChildren();
  const note = $("windows-note");
  if (!v.windows) {
    $("windows-figure").hidden = false;
    note.textContent = v.score === null ? "(not scored)" : "(window details need a valid API key on this proxy)";
    return;
  }
  note.textContent = `(${v.windows.length} window${v.windows.length > 1 ? "s" : ""}; hover a bar to mark its text)`;
  const W = 720, H = 150, left = 34, right = 8, topPad = 10, bottom = 24;
  const plotW = W - left - right, plotH = H - topPad - bottom;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "P(harmful) per window" });
  const y = (p) => topPad + plotH * (1 - p);
  for (const tick of [0, 0.5, 1]) {
    chart.append(svg("line", { x1: left, x2: W - right, y1: y(tick), y2: y(tick), stroke: "#eaeef2" }));
    const label = svg("text", { x: left - 4, y: y(tick) + 4, "text-anchor": "end", "font-size": 10, fill: "#57606a" });
    label.textContent = tick.toFixed(1);
    chart.append(label);
  }
  const n = v.windows.length;
  const slot = plotW / n;
  const barW = Math.max(2, Math.min(48, slot * 0.7));
  v.windows.forEach((w, k) => {
    const x = left + slot * k + (slot - barW) / 2;
    const bar = svg("rect", {
      class: "window", x, y: y(w.score), width: barW, height: Math.max(1, plotH * w.score),
      fill: k === top && v.harmful ? "#c62828" : "#8c959f", "data-index": k,
    });
    const title = svg("title");
    title.textContent = `window ${k + 1}: characters ${w.start}–${w.end} of part ${w.part + 1}, P(harmful) ${fmt(w.score)}`;
    bar.append(title);
    bar.addEventListener("mouseenter", () => showOriginal(v, null, k, true));
    bar.addEventListener("mouseleave", () => showOriginal(v, null, v.harmful ? top : null));
    chart.append(bar);
    if (n <= 24) {
      const label = svg("text", { x: x + barW / 2, y: H - 8, "text-anchor": "middle", "font-size": 10, fill: "#57606a" });
      label.textContent = String(k + 1);
      chart.append(label);
    }
  });
  chart.append(svg("line", {
    x1: left, x2: W - right, y1: y(v.threshold), y2: y(v.threshold), stroke: "#1f2328", "stroke-dasharray": "5 4",
  }));
  const label = svg("text", { x: W - right - 2, y: y(v.threshold) - 4, "text-anchor": "end", "font-size": 10, fill: "#1f2328" });
  label.textContent = `threshold ${fmt(v.threshold)}`;
  chart.append(label);
  box.append(chart);
}

let lastOriginal = "";

function showOriginal(v, original, markIndex, looked = false) {
  if (original !== null) lastOriginal = original;
  const box = $("original");
  box.replaceChildren();
  const parts = v.parts && v.parts.length ? v.parts : [lastOriginal];
  const normalised = !(parts.length === 1 && parts[0] === lastOriginal);
  $("original-note").textContent = v.parts && normalised
    ? "(as the detector read it: normalised, obfuscations undone)" : "";
  const mark = markIndex === null || !v.windows ? null : v.windows[markIndex];
  parts.forEach((text, p) => {
    const span = el("span", { class: "part" });
    if (mark && mark.part === p) {
      const m = el("mark", looked ? { class: "looked" } : {}, text.slice(mark.start, mark.end));
      span.append(text.slice(0, mark.start), m, text.slice(mark.end));
    } else {
      span.append(text);
    }
    box.append(span);
  });
  const shown = box.querySelector("mark");
  if (shown && original !== null) shown.scrollIntoView({ block: "nearest" });
}

function showTimings(timings, roundTripMs) {
  const body = $("timings").tBodies[0];
  body.replaceChildren();
  for (const [key, ms] of Object.entries(timings || {})) {
    body.append(el("tr", {}, el("td", {}, TIMING_LABELS[key] || key), el("td", {}, `${ms.toFixed(1)} ms`)));
  }
  body.append(el("tr", {}, el("td", {}, "round trip (this browser)"), el("td", {}, `${roundTripMs.toFixed(1)} ms`)));
}

// ------------------------------------------------------------------ chat tab

const messages = [];
let chatImage = null;

async function loadModels() {
  const note = $("chat-note");
  const select = $("model");
  try {
    const reply = await fetch("v1/models", { headers: headers() });
    if (reply.status === 404) {
      setChatEnabled(false);
      setStatus(note, "This proxy runs without an upstream (mllm-protector playground): only the check tab works. "
        + "Start `mllm-protector serve --upstream URL` to chat through the guard.");
      return;
    }
    if (!reply.ok) {
      setChatEnabled(false);
      setStatus(note, await errorMessage(reply), true);
      return;
    }
    const models = (await reply.json()).data || [];
    select.replaceChildren(...models.map((m) => el("option", { value: m.id }, m.id)));
    setChatEnabled(models.length > 0);
    setStatus(note, models.length ? "" : "The upstream lists no models.", !models.length);
  } catch (err) {
    setChatEnabled(false);
    setStatus(note, "The proxy did not answer: " + err.message, true);
  }
}

function setChatEnabled(on) {
  for (const id of ["model", "chat-image", "message", "send"]) $(id).disabled = !on;
}

function readImage(input, done) {
  const file = input.files && input.files[0];
  if (!file) return done(null);
  const reader = new FileReader();
  reader.onload = () => done(String(reader.result));
  reader.readAsDataURL(file);
}

async function send(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text) return;
  const content = chatImage
    ? [{ type: "text", text }, { type: "image_url", image_url: { url: chatImage } }]
    : text;
  messages.push({ role: "user", content });
  const userMsg = el("div", { class: "msg user" }, text);
  if (chatImage) userMsg.append(el("img", { src: chatImage, alt: "attached image" }));
  const answer = el("div", { class: "msg assistant" });
  $("chat-log").append(userMsg, answer);
  $("message").value = "";
  $("chat-image").value = "";
  chatImage = null;
  $("chat-preview").hidden = true;
  $("send").disabled = true;
  try {
    const released = await streamAnswer(answer);
    messages.push({ role: "assistant", content: released });
  } finally {
    $("send").disabled = false;
  }
}

async function streamAnswer(box) {
  const holding = el("span", { class: "holding" }, "held back until the detector approves …");
  box.append(holding);
  const t0 = performance.now();
  let released = "";
  let lastSegment = null;
  let info = null;
  const fail = (message) => {
    holding.remove();
    box.append(el("span", { class: "meta error" }, message));
  };
  let reply;
  try {
    reply = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ model: $("model").value, messages, stream: true }),
    });
  } catch (err) {
    fail("The proxy did not answer: " + err.message);
    return released;
  }
  if (!reply.ok) {
    fail(await errorMessage(reply));
    return released;
  }
  const reader = reply.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) {
          fail(chunk.error.message);
          continue;
        }
        const choice = (chunk.choices || [])[0];
        const piece = choice && choice.delta && choice.delta.content;
        if (piece) {
          lastSegment = el("span", { class: "released", title: `released after ${Math.round(performance.now() - t0)} ms` }, piece);
          box.insertBefore(lastSegment, holding);
          released += piece;
        }
        if (chunk.protector) info = chunk.protector;
      }
    }
  }
  holding.remove();
  if (info && REPLACING.has(info.action) && lastSegment) {
    lastSegment.classList.add("replacement");
    lastSegment.textContent = lastSegment.textContent.replace(/^\s+/, "");  // the separator: the label marks the break
    box.insertBefore(el("span", { class: "replaced-label" }, `↳ replaced by the guard (${info.action}):`), lastSegment);
  }
  if (info) {
    const meta = el("span", { class: "meta" }, "guard: ", el("b", { "data-action": info.action }, info.action),
      ` · max P(harmful) ${fmt(info.score)}` + (info.category ? ` · ${info.category}` : "")
      + ` · ${Math.round(performance.now() - t0)} ms`);
    box.append(meta);
  }
  return released;
}

function clearChat() {
  messages.length = 0;
  $("chat-log").replaceChildren();
}

// ------------------------------------------------------------------ wiring

document.addEventListener("DOMContentLoaded", () => {
  initKey();
  $("tab-check").addEventListener("click", () => showTab("check"));
  $("tab-chat").addEventListener("click", () => showTab("chat"));
  $("check-form").addEventListener("submit", check);
  $("chat-form").addEventListener("submit", send);
  $("clear").addEventListener("click", clearChat);
  $("chat-image").addEventListener("change", () => readImage($("chat-image"), (url) => {
    chatImage = url;
    $("chat-preview").hidden = !url;
    if (url) $("chat-preview").src = url;
  }));
});
