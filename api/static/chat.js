// A minimal chat client of the public API: log in with a key (from the URL fragment or
// pasted), create a conversation, send messages and render the streamed reply as text.
// Replies are inserted with textContent only, so model output never becomes markup.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: null, conversation: null, turn: null, controller: null };

function setStatus(text) { $("status").textContent = text; }

function readKey() {
  const match = location.hash.match(/key=([^&]+)/);
  if (match) {
    localStorage.setItem("assistant.key", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);  // keep the key out of the address bar
  }
  return localStorage.getItem("assistant.key");
}

async function api(path, options = {}) {
  const response = await fetch("/api/v1" + path, {
    ...options,
    headers: { "Authorization": "Bearer " + state.key, "Content-Type": "application/json",
               ...(options.headers || {}) },
  });
  if (response.status === 401) { logout(); throw new Error("the key was refused"); }
  return response;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("transcript").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function newConversation() {
  const response = await api("/conversations", { method: "POST", body: JSON.stringify({ title: "Chat" }) });
  state.conversation = (await response.json()).id;
  $("transcript").replaceChildren();
  setStatus("connected");
}

// Parses an SSE body; calls onEvent(json) per frame. Returns the last seq seen.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

async function follow(turnId, target, after) {
  let lastSeq = after;
  let text = "";
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      const response = await api(`/turns/${turnId}/events`, { headers: { "Last-Event-ID": String(lastSeq) } });
      if (response.status === 204) return;
      setStatus("streaming");
      let ended = false;
      await readEvents(response, (event) => {
        lastSeq = event.seq;
        if (event.type === "reset") text = "";
        if (event.type === "token") { text += event.content; target.textContent = text; }
        if (event.type === "complete") { target.textContent = event.content; ended = true; }
        if (event.type === "error") { target.className = "msg error"; target.textContent = event.error; ended = true; }
        if (event.type === "cancelled") { target.textContent = text + " [cancelled]"; ended = true; }
      });
      if (ended) return;
    } catch (err) {
      setStatus("reconnecting…");
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

async function send(event) {
  event.preventDefault();
  const content = $("message").value.trim();
  if (!content) return;
  if (!state.conversation) await newConversation();
  bubble("user", content);
  $("message").value = "";
  const target = bubble("assistant", "…");
  const response = await api(`/conversations/${state.conversation}/messages`, {
    method: "POST", body: JSON.stringify({ content }), headers: { "Accept": "application/json" },
  });
  const body = await response.json();
  if (!response.ok) { target.className = "msg error"; target.textContent = body.detail; return; }
  state.turn = body.turn.id;
  $("cancel").hidden = false;
  await follow(state.turn, target, 0);
  $("cancel").hidden = true;
  setStatus("connected");
}

function logout() {
  localStorage.removeItem("assistant.key");
  state.key = null;
  $("login").hidden = false;
  $("composer").hidden = true;
  setStatus("not connected");
}

function start() {
  state.key = readKey();
  if (!state.key) { logout(); return; }
  $("login").hidden = true;
  $("composer").hidden = false;
  setStatus("connected");
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem("assistant.key", $("key").value.trim());
  start();
});
$("composer").addEventListener("submit", send);
$("message").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("new").addEventListener("click", () => newConversation());
$("logout").addEventListener("click", logout);
$("cancel").addEventListener("click", () => state.turn && api(`/turns/${state.turn}/cancel`, { method: "POST" }));
start();
