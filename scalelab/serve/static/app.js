// scalelab chat page: keeps the conversation, streams replies from /v1/chat/completions (fetch + ReadableStream
// reading server-sent events), sets temperature and max tokens, resets, and asks for an API key only when the server
// requires one. Served by `scalelab serve` (scalelab/serve/app.py); no build step, no external requests.
"use strict";

const $ = (id) => document.getElementById(id);
const store = window.sessionStorage;
const state = {
  model: null,
  history: JSON.parse(store.getItem("scalelab.history") || "[]"), // [{role, content}] sent with every request
  busy: false,
  abort: null,
};

function saveHistory() { store.setItem("scalelab.history", JSON.stringify(state.history)); }

function setStatus(text, bad = false) {
  $("status").textContent = text;
  $("status").classList.toggle("bad", bad);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function addMessage(role, text, extra = "") {
  $("empty").hidden = true;
  const li = document.createElement("li");
  li.className = `msg ${role} ${extra}`.trim();
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : role === "assistant" ? (state.model || "assistant") : role;
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text; // never innerHTML: model output is untrusted text
  li.append(who, bubble);
  $("messages").append(li);
  scrollDown();
  return li;
}

function addMeta(li, text) {
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = text;
  li.append(meta);
}

function scrollDown() { $("chat").scrollTop = $("chat").scrollHeight; }

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return `${resp.status}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `HTTP ${resp.status}`;
}

// How many new tokens fit, from a 400 "context_length_exceeded" on max_tokens ("... at most N ..."); 0 otherwise.
async function roomLeft(resp) {
  try {
    const err = (await resp.json()).error;
    const m = err && err.code === "context_length_exceeded" && /^max_/.test(err.param || "")
      ? /at most (\d+)/.exec(err.message) : null;
    return m ? +m[1] : 0;
  } catch (_) { return 0; }
}

function needKey(message) {
  $("api-key-field").hidden = false;
  $("api-key").focus();
  setStatus(message || "This server requires an API key.", true);
}

async function connect() {
  try {
    const health = await (await fetch("/health")).json();
    if (health.auth_required) {
      $("api-key-field").hidden = false;
      $("api-key").value = store.getItem("scalelab.key") || "";
    }
    // The reply length defaults to half the server's context (within its limit): a first message then fits with no
    // refused request, and a longer conversation still leaves room. A value the user typed is kept.
    const field = $("max-tokens");
    field.max = Math.max(1, Math.min(health.max_tokens_limit, health.context_length - 1));
    if (!field.dataset.edited) {
      field.value = Math.max(1, Math.min(health.max_tokens_limit, Math.floor(health.context_length / 2)));
    } else if (+field.value > +field.max) field.value = field.max;
    state.model = health.model;
    $("model").textContent = `${health.model} · ${health.context_length} ctx`;
    $("model").classList.remove("bad");
  } catch (e) {
    $("model").textContent = "server unreachable";
    $("model").classList.add("bad");
  }
}

// Parse one SSE event block ("data: ...\n" lines); returns the JSON payloads (or "[DONE]").
function parseEvent(block) {
  const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
  if (!data) return null;
  return data === "[DONE]" ? "[DONE]" : JSON.parse(data);
}

async function send(text) {
  const system = $("system").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...state.history,
    { role: "user", content: text }];
  const userLi = addMessage("user", text);
  const li = addMessage("assistant", "", "streaming");
  const bubble = li.querySelector(".bubble");
  const t0 = performance.now();
  let reply = "", usage = null, finish = null, firstAt = null, failed = null;
  state.abort = new AbortController();
  setBusy(true);
  setStatus("Generating…");
  try {
    // "Max tokens" is an upper bound: when prompt + max tokens would pass the context, the server says how many
    // fit, and the request goes again with that many (a small model's context fills within a few turns).
    const post = (maxTokens) => fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: state.abort.signal,
      body: JSON.stringify({
        model: state.model || undefined, messages, stream: true, stream_options: { include_usage: true },
        temperature: +$("temperature").value, max_tokens: maxTokens,
      }),
    });
    let resp = await post(Math.max(1, Math.floor(+$("max-tokens").value || 1)));
    if (resp.status === 400) {
      const fits = await roomLeft(resp.clone());
      if (fits > 0) resp = await post(fits);
    }
    if (resp.status === 401) { failed = await errorText(resp); needKey(failed); }
    else if (!resp.ok) failed = await errorText(resp);
    else {
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      outer: for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (event === null) continue;
          if (event === "[DONE]") break outer;
          if (event.error) { failed = event.error.message; continue; }
          if (event.usage) usage = event.usage;
          const choice = event.choices && event.choices[0];
          if (!choice) continue;
          if (choice.delta && choice.delta.content) {
            if (firstAt === null) firstAt = performance.now();
            reply += choice.delta.content;
            bubble.textContent = reply;
            scrollDown();
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  } catch (e) {
    failed = e.name === "AbortError" ? "stopped" : `network error: ${e.message}`;
  }
  li.classList.remove("streaming");
  setBusy(false);
  state.abort = null;

  if (reply.trim()) {
    state.history.push({ role: "user", content: text }, { role: "assistant", content: reply });
    saveHistory();
  } else {
    // an empty reply cannot be sent back (turns must alternate with non-empty content): this exchange is not kept
    bubble.textContent = failed ? "" : "(empty reply)";
    userLi.classList.add("dropped");
    if (!failed) li.classList.add("dropped");
  }
  if (failed && failed !== "stopped") {
    li.classList.add("error");
    bubble.textContent = reply ? `${reply}\n\n[${failed}]` : failed;
    setStatus(failed, true);
  } else {
    const secs = (performance.now() - t0) / 1000;
    const parts = [];
    if (usage) parts.push(`${usage.completion_tokens} tokens`, `${(usage.completion_tokens / secs).toFixed(1)} tok/s`);
    if (firstAt !== null) parts.push(`first token ${((firstAt - t0) / 1000).toFixed(2)} s`);
    if (finish === "length") parts.push("stopped at max tokens");
    if (failed === "stopped") parts.push("stopped");
    addMeta(li, parts.join(" · "));
    setStatus("");
  }
}

function setBusy(busy) {
  state.busy = busy;
  $("send").textContent = busy ? "Stop" : "Send";
  $("send").classList.toggle("stop", busy);
  $("reset").disabled = busy;
}

function reset() {
  if (state.abort) state.abort.abort();
  state.history = [];
  saveHistory();
  $("messages").replaceChildren();
  $("empty").hidden = false;
  setStatus("New conversation.");
  $("input").focus();
}

function restore() {
  for (const m of state.history) addMessage(m.role, m.content);
}

function autosize() {
  const box = $("input");
  box.style.height = "auto";
  box.style.height = Math.min(box.scrollHeight, 200) + "px";
}

window.addEventListener("DOMContentLoaded", () => {
  $("temperature").addEventListener("input", () => { $("temperature-value").textContent = (+$("temperature").value).toFixed(2); });
  $("api-key").addEventListener("change", () => store.setItem("scalelab.key", $("api-key").value.trim()));
  $("reset").addEventListener("click", reset);
  $("max-tokens").addEventListener("input", () => { $("max-tokens").dataset.edited = "1"; });
  $("input").addEventListener("input", autosize);
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("form").requestSubmit(); }
  });
  $("form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (state.busy) { state.abort && state.abort.abort(); return; }
    const text = $("input").value.trim();
    if (!text) return;
    $("input").value = "";
    autosize();
    send(text);
  });
  restore();
  connect();
});
