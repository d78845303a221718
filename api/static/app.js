// The web UI of the Durable Assistant: log-in, conversations, the transcript with streamed
// replies, tool calls and approvals, and the approvals inbox. Only public /api/v1 routes.

import { ApiError, api, auth, listAll } from "./js/api.js";
import { approvalCard, configureApprovals, updateApproval } from "./js/approval.js";
import { ConversationView } from "./js/transcript.js";
import { $, el, sleep, titleFrom, uuid } from "./js/util.js";

const state = {
  me: null,
  conversations: [],
  current: null, // the open conversation object
  view: null,
  turnId: null,
  sending: false,
  inboxTimer: null,
  inboxSoon: null,
  noticeTimer: null,
  toolSchemas: null,
};

// ---- status and notices -------------------------------------------------------------------

function setStatus(mode, text) {
  const node = $("status");
  node.dataset.state = mode;
  node.textContent = text || (mode === "reconnecting" ? "Reconnecting…" : mode === "streaming" ? "Working…" : "Ready");
}

function showNotice(text) {
  const node = $("notice");
  node.textContent = text;
  node.hidden = !text;
  clearTimeout(state.noticeTimer);
  if (text) state.noticeTimer = setTimeout(() => { node.hidden = true; node.textContent = ""; }, 15000);
}

function problem(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) return; // logged out already
    showNotice(err.message);
  } else if (err && err.name !== "AbortError") {
    showNotice(`Could not reach the server (${err.message || err}). Check the connection and try again.`);
  }
}

// ---- log-in -------------------------------------------------------------------------------

function readFragment() {
  const params = location.hash.replace(/^#/, "").split("&").filter(Boolean).map((part) => {
    const cut = part.indexOf("=");
    return cut < 0 ? [part, ""] : [part.slice(0, cut), decodeURIComponent(part.slice(cut + 1))];
  });
  const key = params.find(([name]) => name === "key");
  if (key) {
    auth.key = key[1];
    const rest = params.filter(([name]) => name !== "key").map(([n, v]) => `${n}=${encodeURIComponent(v)}`).join("&");
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  }
}

function hashConversation() {
  const match = /(?:^#|&)c=([^&]+)/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

function showLogin(message = "") {
  $("app").hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.textContent = message;
  error.hidden = !message;
  $("key").value = "";
  $("key").focus();
}

function logout(message = "") {
  auth.key = null;
  state.me = null;
  state.view?.destroy();
  state.view = null;
  state.current = null;
  state.turnId = null;
  state.conversations = [];
  state.toolSchemas = null;
  clearInterval(state.inboxTimer);
  state.inboxTimer = null;
  $("conversation-list").replaceChildren();
  $("transcript").replaceChildren();
  closeInbox();
  showNotice("");
  showLogin(message);
}

auth.onUnauthorized(() => {
  if (state.me || auth.key) logout("Your key was refused (it may have been revoked). Log in again.");
});

async function enter(me) {
  state.me = me;
  configureApprovals({ me, toolSchema, onDecided: () => refreshInboxSoon() });
  $("login").hidden = true;
  $("app").hidden = false;
  $("user-name").textContent = me.name || me.id;
  $("logout").title = `Log out ${me.name || me.id}`;
  setStatus("idle");
  setTurn(null);
  state.inboxTimer = setInterval(refreshInbox, 3000);
  refreshInbox();
  try {
    await loadConversations();
  } catch (err) {
    problem(err);
  }
  const wanted = hashConversation();
  if (wanted) openConversation(wanted);
  else $("message").focus();
}

async function start() {
  readFragment();
  if (!auth.key) {
    showLogin();
    return;
  }
  try {
    const me = await api("/auth/me", { key: auth.key });
    await enter(me);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      auth.key = null;
      showLogin("The saved key was refused. Log in again.");
    } else showLogin(`Could not reach the server (${err.message}). Try again.`);
  }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("key").value.trim();
  const error = $("login-error");
  if (!key) return;
  const button = event.target.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const me = await api("/auth/me", { key });
    auth.key = key;
    error.hidden = true;
    await enter(me);
  } catch (err) {
    error.textContent = err instanceof ApiError && err.status === 401
      ? "That key was refused. Check it and try again."
      : `Could not log in: ${err.message}`;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
});

$("logout").addEventListener("click", () => logout());

// ---- tools ------------------------------------------------------------------------------

function toolSchema(name) {
  if (!state.toolSchemas) {
    state.toolSchemas = listAll("/tools").then((tools) => new Map(tools.map((t) => [t.name, t.input_schema])));
    state.toolSchemas.catch(() => { state.toolSchemas = null; });
  }
  return state.toolSchemas.then((map) => map.get(name) || null);
}

// ---- conversations --------------------------------------------------------------------------

async function loadConversations() {
  state.conversations = await listAll("/conversations", { max: 1000 });
  renderList();
}

function displayTitle(conversation) {
  return conversation.title || "New conversation";
}

function renderList() {
  const list = $("conversation-list");
  const existing = new Map(Array.from(list.children).map((li) => [li.dataset.id, li]));
  let previous = null;
  for (const conversation of state.conversations) {
    let li = existing.get(conversation.id);
    existing.delete(conversation.id);
    if (!li) li = listItem(conversation);
    if (!li.querySelector(".rename-input")) {
      li.querySelector(".title").textContent = displayTitle(conversation);
      li.querySelector(".select").setAttribute("aria-label", `Open conversation: ${displayTitle(conversation)}`);
    }
    if (state.current && state.current.id === conversation.id) li.setAttribute("aria-current", "page");
    else li.removeAttribute("aria-current");
    const expected = previous ? previous.nextElementSibling : list.firstElementChild;
    if (expected !== li) {
      if (previous) previous.after(li);
      else list.prepend(li);
    }
    previous = li;
  }
  for (const li of existing.values()) li.remove();
}

function listItem(conversation) {
  const id = conversation.id;
  const title = el("span.title", { text: displayTitle(conversation) });
  const select = el("button.select", { type: "button" }, title);
  const rename = el("button.rename", { type: "button", "aria-label": "Rename conversation", title: "Rename", text: "✎" });
  const remove = el("button.delete", { type: "button", "aria-label": "Delete conversation", title: "Delete", text: "×" });
  const li = el("li.conversation", { dataset: { id } }, select, rename, remove);
  select.addEventListener("click", () => openConversation(id));
  rename.addEventListener("click", () => startRename(li));
  let timer = null;
  const reset = () => {
    clearTimeout(timer);
    remove.classList.remove("confirming");
    remove.textContent = "×";
    remove.setAttribute("aria-label", "Delete conversation");
    delete remove.dataset.confirm;
  };
  remove.addEventListener("click", async () => {
    if (!remove.dataset.confirm) {
      remove.dataset.confirm = "true";
      remove.classList.add("confirming");
      remove.textContent = "Delete?";
      remove.setAttribute("aria-label", "Click again to delete this conversation");
      timer = setTimeout(reset, 4000);
      return;
    }
    reset();
    remove.disabled = true;
    try {
      await api(`/conversations/${encodeURIComponent(id)}`, { method: "DELETE" });
      state.conversations = state.conversations.filter((c) => c.id !== id);
      if (state.current && state.current.id === id) closeConversation();
      renderList();
    } catch (err) {
      problem(err);
    } finally {
      remove.disabled = false;
    }
  });
  return li;
}

function startRename(li) {
  if (li.querySelector(".rename-input")) return;
  const conversation = state.conversations.find((c) => c.id === li.dataset.id);
  if (!conversation) return;
  const title = li.querySelector(".title");
  const input = el("input.rename-input", { type: "text", "aria-label": "New title", maxlength: 500 });
  input.value = conversation.title || "";
  const select = li.querySelector(".select");
  select.hidden = true;
  select.after(input);
  input.focus();
  input.select();
  let done = false;
  const finish = () => {
    done = true;
    input.remove();
    select.hidden = false;
    title.textContent = displayTitle(conversation);
  };
  input.addEventListener("keydown", async (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      finish();
      select.focus();
    } else if (event.key === "Enter") {
      event.preventDefault();
      if (done) return;
      done = true;
      const value = input.value.trim();
      input.disabled = true;
      try {
        const updated = await api(`/conversations/${encodeURIComponent(conversation.id)}`, {
          method: "PATCH", body: { title: value || null },
        });
        Object.assign(conversation, updated);
        if (state.current && state.current.id === conversation.id) Object.assign(state.current, updated);
      } catch (err) {
        problem(err);
      }
      finish();
      renderList();
      select.focus();
    }
  });
  input.addEventListener("blur", () => { if (!done) finish(); });
}

async function createConversation() {
  const conversation = await api("/conversations", { method: "POST", body: {}, headers: { "Idempotency-Key": uuid() } });
  state.conversations = [conversation, ...state.conversations.filter((c) => c.id !== conversation.id)];
  renderList();
  return conversation;
}

function closeConversation() {
  state.view?.destroy();
  state.view = null;
  state.current = null;
  $("transcript").replaceChildren();
  history.replaceState(null, "", location.pathname + location.search);
  setTurn(null);
  setStatus("idle");
  renderList();
}

function hooksFor(view) {
  const mine = () => state.view === view;
  return {
    onStream: (mode, text) => { if (mine()) setStatus(mode, text); },
    onTurn: (turnId) => { if (mine()) setTurn(turnId); },
    onApprovals: () => refreshInboxSoon(),
    onProblem: (err) => { if (mine()) problem(err); },
    retry: (content, button) => {
      if (!mine()) return;
      button.disabled = true;
      send(content).finally(() => { button.disabled = false; });
    },
  };
}

async function openConversation(id) {
  state.view?.destroy();
  let conversation = state.conversations.find((c) => c.id === id) || { id, title: null };
  state.current = conversation;
  history.replaceState(null, "", `${location.pathname}${location.search}#c=${encodeURIComponent(id)}`);
  setTurn(null);
  setStatus("idle");
  closeNav();
  renderList();
  const transcript = $("transcript");
  transcript.replaceChildren();
  const view = new ConversationView(conversation, transcript, null);
  view.hooks = hooksFor(view);
  state.view = view;
  view.ready = view.load();
  try {
    await view.ready;
    if (state.view !== view) return;
    conversation = Object.assign(conversation, view.conversation);
    if (!state.conversations.some((c) => c.id === id)) {
      state.conversations = [conversation, ...state.conversations];
      renderList();
    }
  } catch (err) {
    if (state.view !== view) return;
    if (err instanceof ApiError && err.status === 404) {
      showNotice("That conversation does not exist (it may have been deleted).");
      state.conversations = state.conversations.filter((c) => c.id !== id);
      closeConversation();
    } else problem(err);
  }
}

$("new-conversation").addEventListener("click", async () => {
  try {
    const conversation = await createConversation();
    await openConversation(conversation.id);
    $("message").focus();
  } catch (err) {
    problem(err);
  }
});

window.addEventListener("hashchange", () => {
  const id = hashConversation();
  if (state.me && id && (!state.current || state.current.id !== id)) openConversation(id);
});

// ---- composer -------------------------------------------------------------------------------

function setTurn(turnId) {
  state.turnId = turnId;
  $("cancel").hidden = !turnId;
  $("cancel").disabled = false;
  updateComposer();
}

function updateComposer() {
  const busy = state.sending || Boolean(state.turnId);
  const message = $("message");
  const hadFocus = document.activeElement === message;
  message.disabled = busy;
  $("send").disabled = busy;
  $("composer").setAttribute("aria-busy", busy ? "true" : "false");
  if (!busy && !hadFocus && !$("app").hidden && document.activeElement === document.body) message.focus();
}

async function postMessage(conversationId, content) {
  const key = uuid(); // the same key on a retry: the server starts one turn only
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await api(`/conversations/${encodeURIComponent(conversationId)}/messages`, {
        method: "POST", body: { content }, headers: { "Idempotency-Key": key },
      });
    } catch (err) {
      const transient = !(err instanceof ApiError) || err.status === 503 || err.code === "idempotency_key_in_use";
      if (!transient || attempt >= 3) throw err;
      await sleep(500 * 2 ** attempt);
    }
  }
}

async function send(content) {
  if (state.sending || state.turnId || !content.trim()) return false;
  state.sending = true;
  updateComposer();
  let bubble = null;
  try {
    if (!state.current) {
      const conversation = await createConversation();
      await openConversation(conversation.id);
    }
    const conversation = state.current;
    const view = state.view;
    await view.ready?.catch(() => {}); // its transcript first, then this message below it
    if (state.view !== view) return false;
    bubble = view.addUser(content);
    bubble.classList.add("pending");
    const result = await postMessage(conversation.id, content);
    bubble.classList.remove("pending");
    bubble = null;
    if (state.view === view) view.follow(result.turn.id, 0, content);
    if (!conversation.title) nameConversation(conversation, content);
    return true;
  } catch (err) {
    bubble?.remove();
    if (err instanceof ApiError && err.code === "turn_in_progress" && state.current) {
      showNotice(`${err.message} It is shown below.`);
      openConversation(state.current.id);
    } else problem(err);
    return false;
  } finally {
    state.sending = false;
    updateComposer();
  }
}

async function nameConversation(conversation, content) {
  const title = titleFrom(content);
  if (!title) return;
  try {
    const updated = await api(`/conversations/${encodeURIComponent(conversation.id)}`, { method: "PATCH", body: { title } });
    Object.assign(conversation, updated);
    const listed = state.conversations.find((c) => c.id === conversation.id);
    if (listed && listed !== conversation) Object.assign(listed, updated);
    renderList();
  } catch (err) {
    problem(err);
  }
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const message = $("message");
  const content = message.value;
  if (!content.trim() || state.sending || state.turnId) return;
  message.value = "";
  const sent = await send(content);
  if (!sent && !message.value) message.value = content; // nothing lost on a refusal
});

$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("cancel").addEventListener("click", async () => {
  const turnId = state.turnId;
  if (!turnId) return;
  $("cancel").disabled = true;
  try {
    await api(`/turns/${encodeURIComponent(turnId)}/cancel`, { method: "POST", headers: { "Idempotency-Key": uuid() } });
    setStatus("streaming", "Cancelling…");
  } catch (err) {
    $("cancel").disabled = false;
    problem(err);
  }
});

// ---- approvals inbox ------------------------------------------------------------------------

function refreshInboxSoon() {
  clearTimeout(state.inboxSoon);
  state.inboxSoon = setTimeout(refreshInbox, 150);
}

async function refreshInbox() {
  if (!state.me) return;
  let page;
  try {
    page = await api("/approvals?status=pending&limit=100");
  } catch (err) {
    return; // shown by the next successful refresh; a 401 has logged out
  }
  if (!state.me) return;
  const count = page.data.length;
  const badge = $("inbox-count");
  badge.textContent = page.has_more ? "100+" : String(count);
  badge.hidden = count === 0;
  $("inbox-button").setAttribute("aria-label", `Pending approvals: ${badge.hidden ? "none" : badge.textContent}`);
  if (!$("inbox").hidden) syncInbox(page.data);
}

function conversationTitle(id) {
  const conversation = state.conversations.find((c) => c.id === id);
  return conversation ? displayTitle(conversation) : id;
}

function syncInbox(pending) {
  const inbox = $("inbox");
  const items = new Map(Array.from(inbox.querySelectorAll(".inbox-item")).map((item) => [item.dataset.approvalId, item]));
  const pendingIds = new Set(pending.map((a) => a.id));
  let anchor = inbox.querySelector(".inbox-empty");
  for (const approval of pending) {
    let item = items.get(approval.id);
    if (!item) {
      const link = el("a.open-conversation", { href: `#c=${encodeURIComponent(approval.conversation_id)}`, text: "Open conversation" });
      link.addEventListener("click", (event) => {
        event.preventDefault();
        closeInbox();
        openConversation(approval.conversation_id);
      });
      item = el("div.inbox-item", { dataset: { approvalId: approval.id } },
        el("div.inbox-meta", {}, el("span.conversation-title", { text: conversationTitle(approval.conversation_id) }), link),
        approvalCard(approval));
    }
    if (anchor.nextElementSibling !== item) anchor.after(item);
    anchor = item;
  }
  // Decided elsewhere: fetched to show how; decided here or there: shown briefly, then gone.
  for (const [id, item] of items) {
    if (pendingIds.has(id)) continue;
    const card = item.querySelector(".approval-card");
    if (card && card.dataset.status === "pending") {
      api(`/approvals/${encodeURIComponent(id)}`).then(updateApproval).catch(() => item.remove());
    } else if (!item.dataset.goneSince) item.dataset.goneSince = String(Date.now());
    else if (Date.now() - Number(item.dataset.goneSince) > 1500) item.remove();
  }
  inbox.querySelector(".inbox-empty").hidden = inbox.querySelectorAll(".inbox-item").length > 0;
}

function openInbox() {
  const inbox = $("inbox");
  inbox.querySelectorAll(".inbox-item").forEach((item) => item.remove());
  inbox.querySelector(".inbox-empty").hidden = true;
  inbox.hidden = false;
  $("inbox-button").setAttribute("aria-expanded", "true");
  refreshInbox();
  $("inbox-close").focus();
}

function closeInbox() {
  const inbox = $("inbox");
  if (inbox.hidden) return;
  inbox.hidden = true;
  inbox.querySelectorAll(".inbox-item").forEach((item) => item.remove());
  $("inbox-button").setAttribute("aria-expanded", "false");
}

$("inbox-button").addEventListener("click", () => ($("inbox").hidden ? openInbox() : closeInbox()));
$("inbox-close").addEventListener("click", () => { closeInbox(); $("inbox-button").focus(); });
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  if (!$("inbox").hidden && !event.target.closest?.(".edit-form, .reject-box")) closeInbox();
  else if ($("app").classList.contains("nav-open")) closeNav();
});

// ---- narrow screens -------------------------------------------------------------------------

function closeNav() {
  $("app").classList.remove("nav-open");
  $("menu").setAttribute("aria-expanded", "false");
  $("scrim").hidden = true;
}

$("menu").addEventListener("click", () => {
  const open = !$("app").classList.contains("nav-open");
  $("app").classList.toggle("nav-open", open);
  $("menu").setAttribute("aria-expanded", String(open));
  $("scrim").hidden = !open;
});
$("scrim").addEventListener("click", closeNav);
$("notice").addEventListener("click", () => showNotice(""));

start();
