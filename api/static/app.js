// The web UI of the Durable Assistant: log-in, conversations, the transcript with streamed
// replies, tool calls and approvals, and the approvals inbox. Only public /api/v1 routes.

import { ApiError, api, auth, listAll } from "./js/api.js";
import { approvalCard, clearApprovalCards, configureApprovals, forgetApprovalCards, updateApproval } from "./js/approval.js";
import { ConversationView } from "./js/transcript.js";
import { $, el, sleep, titleFrom, uuid } from "./js/util.js";

const state = {
  me: null,
  conversations: [],
  current: null, // the open conversation object
  view: null,
  turnId: null,
  sending: false,
  creating: null, // the "+ New conversation" being created and opened (a promise), or null
  inboxTimer: null, // the next poll of pending approvals
  inboxSoon: null,
  inboxPoll: null, // the running poll loop (its generation), or null
  inboxPaused: false, // the page is hidden: polling waits for it to show again
  inboxDelay: 3000, // 3 s, doubled up to 30 s while polls fail
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

/**
 * The `key` of the address's fragment, taken out of the address bar (it is not kept in the
 * history): {key} for a key, {malformed: true} for one that cannot be decoded, {} for none.
 * Nothing is stored: the key is checked first (start).
 */
function readFragment() {
  const parts = location.hash.replace(/^#/, "").split("&").filter(Boolean);
  const keyPart = parts.find((part) => part === "key" || part.startsWith("key="));
  if (keyPart === undefined) return {};
  const rest = parts.filter((part) => part !== "key" && !part.startsWith("key=")).join("&");
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  try {
    const key = decodeURIComponent(keyPart.slice(4)).trim();
    return key ? { key } : {};
  } catch {
    return { malformed: true }; // e.g. #key=%E0
  }
}

function hashConversation() {
  const match = /(?:^#|&)c=([^&]+)/.exec(location.hash);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null; // e.g. #c=%E0: no conversation to open
  }
}

function showLogin(message = "") {
  stopInbox();
  $("app").hidden = true;
  $("login").hidden = false;
  $("key-choice").hidden = true;
  $("login-form").hidden = false;
  const error = $("login-error");
  error.textContent = message;
  error.hidden = !message;
  $("key").value = "";
  $("key").focus();
}

function logout(message = "") {
  auth.key = null;
  state.creating = null;
  state.me = null;
  state.view?.destroy();
  state.view = null;
  state.current = null;
  state.turnId = null;
  state.conversations = [];
  state.toolSchemas = null;
  stopInbox();
  $("conversation-list").replaceChildren();
  $("transcript").replaceChildren();
  closeInbox();
  clearApprovalCards();
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
  startInbox();
  try {
    await loadConversations();
  } catch (err) {
    problem(err);
  }
  const wanted = hashConversation();
  if (wanted) openConversation(wanted);
  else $("message").focus();
}

/** Who `key` belongs to, or null when it is refused; throws when the server cannot say. */
async function whoIs(key) {
  try {
    return await api("/auth/me", { key });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return null;
    throw err;
  }
}

function userLabel(me) {
  return me.name ? `${me.name} (${me.id})` : me.id;
}

/** A link's key for another user than the saved key's: the user picks (no key replaced unasked). */
function askWhichKey(linked, saved, linkKey) {
  $("login").hidden = false;
  $("app").hidden = true;
  $("login-form").hidden = true;
  $("login-error").hidden = true;
  $("key-choice-text").textContent = `This link logs in with another key (user ${userLabel(linked)}). `
    + `This browser is logged in with your saved key (user ${userLabel(saved)}).`;
  $("key-choice").hidden = false;
  const use = $("use-new-key");
  const keep = $("keep-key");
  const choose = async (useNew) => {
    use.onclick = null;
    keep.onclick = null;
    $("key-choice").hidden = true;
    $("login-form").hidden = false;
    if (useNew) auth.key = linkKey;
    await enter(useNew ? linked : saved);
  };
  use.onclick = () => choose(true);
  keep.onclick = () => choose(false);
  use.focus();
}

async function start() {
  const link = readFragment();
  const saved = auth.key;
  try {
    if (link.key || link.malformed) {
      const linked = link.key ? await whoIs(link.key) : null;
      const mine = saved && saved !== link.key ? await whoIs(saved) : null;
      if (!linked) {
        // A bad key in a link replaces nothing: the saved key, if it works, stays logged in.
        const why = link.malformed ? "The key in the link could not be read (it is not a valid key)."
          : "The key in the link was refused.";
        if (saved && saved === link.key) auth.key = null; // the saved key itself: refused
        if (mine) {
          await enter(mine);
          showNotice(`${why} You are still logged in with your saved key.`);
        } else showLogin(`${why} Check the link, or log in with your key.`);
        return;
      }
      if (mine) {
        askWhichKey(linked, mine, link.key);
        return;
      }
      auth.key = link.key; // checked: stored now
      await enter(linked);
      return;
    }
    if (!saved) {
      showLogin();
      return;
    }
    const me = await whoIs(saved);
    if (!me) {
      auth.key = null;
      showLogin("The saved key was refused. Log in again.");
      return;
    }
    await enter(me);
  } catch (err) {
    showLogin(`Could not reach the server (${err.message}). Try again.`);
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
      send(content).then((sent) => {
        if (sent) button.remove(); // sent again: the new turn is below
        else button.disabled = false;
      });
    },
  };
}

/** Shows conversation `id`; `reload` rebuilds it even if it is the one open already. */
async function openConversation(id, { reload = false } = {}) {
  if (!reload && state.view && state.current && state.current.id === id) {
    closeNav();
    return; // already open (a click on it again would lose a turn being started)
  }
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

$("new-conversation").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  if (button.disabled) return;
  button.disabled = true; // one conversation per click, however fast the clicks
  const creating = (async () => {
    const conversation = await createConversation();
    await openConversation(conversation.id);
  })();
  state.creating = creating;
  try {
    await creating;
    $("message").focus();
  } catch (err) {
    problem(err);
  } finally {
    if (state.creating === creating) state.creating = null;
    button.disabled = false;
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
    // A message typed while "+ New conversation" is under way goes to that conversation.
    if (state.creating) await state.creating.catch(() => {});
    if (!state.current) {
      const conversation = await createConversation();
      await openConversation(conversation.id);
    }
    const conversation = state.current;
    const view = state.view;
    await view.ready?.catch(() => {}); // its transcript first, then this message below it
    if (state.view !== view) return false;
    if (view.running) {
      // The transcript showed a turn still running (started elsewhere): it goes first.
      showNotice("A turn is already running in this conversation. Wait for it to finish, or cancel it.");
      return false;
    }
    bubble = view.addUser(content);
    bubble.classList.add("pending");
    const result = await postMessage(conversation.id, content);
    bubble.classList.remove("pending");
    bubble = null;
    await followStarted(conversation.id, view, result.turn.id, content);
    if (!conversation.title) nameConversation(conversation, content);
    return true;
  } catch (err) {
    bubble?.remove();
    if (err instanceof ApiError && err.code === "turn_in_progress" && state.current) {
      showNotice(`${err.message} It is shown below.`);
      openConversation(state.current.id, { reload: true });
    } else problem(err);
    return false;
  } finally {
    state.sending = false;
    updateComposer();
  }
}

/** Follows the turn just started, in whichever view now shows its conversation (if any). */
async function followStarted(conversationId, view, turnId, content) {
  let current = state.view;
  if (!current || !state.current || state.current.id !== conversationId) return; // moved on
  if (current !== view) {
    await current.ready?.catch(() => {});
    if (state.view !== current) return;
    current = state.view;
  }
  if (current.turnId !== turnId) current.follow(turnId, 0, content); // unless it found it already
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
    if (state.turnId === turnId) setStatus("streaming", "Cancelling…"); // unless another view is shown now
  } catch (err) {
    if (state.turnId === turnId) $("cancel").disabled = false;
    problem(err);
  }
});

// ---- approvals inbox ------------------------------------------------------------------------

/** Polls pending approvals every 3 s (backing off to 30 s while that fails; paused while hidden). */
function startInbox() {
  stopInbox();
  const poll = {};
  state.inboxPoll = poll;
  state.inboxDelay = 3000;
  const tick = async () => {
    state.inboxTimer = null;
    if (state.inboxPoll !== poll) return;
    if (document.hidden) {
      state.inboxPaused = true; // visibilitychange resumes
      return;
    }
    const ok = await refreshInbox();
    if (state.inboxPoll !== poll) return;
    state.inboxDelay = ok ? 3000 : Math.min(state.inboxDelay * 2, 30000);
    state.inboxTimer = setTimeout(tick, state.inboxDelay);
  };
  poll.tick = tick;
  tick();
}

function stopInbox() {
  state.inboxPoll = null;
  state.inboxPaused = false;
  clearTimeout(state.inboxTimer);
  clearTimeout(state.inboxSoon);
  state.inboxTimer = null;
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden || !state.inboxPaused || !state.inboxPoll) return;
  state.inboxPaused = false;
  state.inboxPoll.tick();
});

function refreshInboxSoon() {
  clearTimeout(state.inboxSoon);
  state.inboxSoon = setTimeout(refreshInbox, 150);
}

/** The badge (and the open inbox) from the server; false when that failed. */
async function refreshInbox() {
  if (!state.me) return false;
  let page;
  try {
    page = await api("/approvals?status=pending&limit=100");
  } catch (err) {
    return false; // shown by the next successful refresh; a 401 has logged out
  }
  if (!state.me) return false;
  const count = page.data.length;
  const badge = $("inbox-count");
  badge.textContent = page.has_more ? "100+" : String(count);
  badge.hidden = count === 0;
  $("inbox-button").setAttribute("aria-label", `Pending approvals: ${badge.hidden ? "none" : badge.textContent}`);
  if (!$("inbox").hidden) syncInbox(page.data);
  return true;
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
    else if (Date.now() - Number(item.dataset.goneSince) > 1500) {
      forgetApprovalCards(item);
      item.remove();
    }
  }
  inbox.querySelector(".inbox-empty").hidden = inbox.querySelectorAll(".inbox-item").length > 0;
}

function openInbox() {
  const inbox = $("inbox");
  forgetApprovalCards(inbox);
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
  forgetApprovalCards(inbox);
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
