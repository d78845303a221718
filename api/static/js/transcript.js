// One conversation on screen: its transcript from /messages, and the active turn replayed
// from its event stream (from seq 0, so nothing is shown twice), then followed live.

import { api, listAll } from "./api.js";
import { applyDecidedEvent, approvalCard, forgetApprovalCards, updateApproval } from "./approval.js";
import { setMarkdown } from "./markdown.js";
import { TurnFollower } from "./sse.js";
import { el, prettyJson } from "./util.js";

const RESULT_STATUS = { ok: "done", error: "error", rejected: "rejected" };
const STATUS_WORDS = {
  running: "running", awaiting_approval: "waiting for approval", done: "done", error: "failed", rejected: "rejected",
};
const FINISHED = new Set(["completed", "failed", "cancelled"]);

function parseArguments(text) {
  if (text && typeof text === "object") return text;
  try { return JSON.parse(text || "{}"); } catch { return text ?? {}; }
}

/**
 * hooks: onStream(state, text) with state idle|streaming|reconnecting; onTurn(turnId|null);
 * onApprovals() (pending approvals may have changed); onProblem(error); retry(content).
 */
export class ConversationView {
  constructor(conversation, container, hooks) {
    this.conversation = conversation;
    this.container = container;
    this.hooks = hooks;
    this.bubbles = new Map(); // message id → bubble state
    this.cards = new Map(); // tool call id → tool card element (the latest one)
    this.follower = null;
    this.turnId = null;
    this.turnContent = new Map(); // turn id → the user message that started it
    this.messageCalls = new Map(); // assistant message id → the tool call ids of its `message` event
    this.dirty = new Set();
    this.frame = null;
    this.pinned = true;
    this.closed = false;
    this.onScroll = () => {
      const c = this.container;
      this.pinned = c.scrollHeight - c.scrollTop - c.clientHeight < 80;
    };
    container.addEventListener("scroll", this.onScroll, { passive: true });
  }

  destroy() {
    this.closed = true;
    this.follower?.stop();
    this.follower = null;
    if (this.frame) cancelAnimationFrame(this.frame);
    this.container.removeEventListener("scroll", this.onScroll);
    forgetApprovalCards(this.container);
  }

  get running() {
    return Boolean(this.turnId);
  }

  // ---- loading ------------------------------------------------------------------------

  async load() {
    const id = encodeURIComponent(this.conversation.id);
    const conversation = await api(`/conversations/${id}`);
    const [messages, turns] = await Promise.all([
      listAll(`/conversations/${id}/messages?order=asc`, { max: 100000 }),
      listAll(`/conversations/${id}/turns`, { max: 100000 }),
    ]);
    if (this.closed) return;
    this.conversation = conversation;
    const turnsById = new Map(turns.map((t) => [t.id, t]));
    let active = conversation.active_turn_id;
    if (!active) active = turns.find((t) => !FINISHED.has(t.status))?.id || null;
    const latest = turns[0]?.id;
    this.container.replaceChildren();
    let current = null;
    const closeTurn = (turnId) => {
      if (!turnId || turnId === active) return;
      const turn = turnsById.get(turnId);
      if (!turn) return;
      this.settleCards(turn);
      if (turn.status === "failed") {
        this.showError(turn.error || { code: "internal_error", message: "The turn failed.", retryable: false },
          turnId, turnId === latest);
      } else if (turn.status === "cancelled") this.showCancelled();
    };
    for (const message of messages) {
      if (message.turn_id !== current) {
        closeTurn(current);
        current = message.turn_id;
      }
      if (message.role === "user") {
        if (message.turn_id) this.turnContent.set(message.turn_id, message.content || "");
        this.addUser(message.content || "");
        continue;
      }
      if (message.turn_id && message.turn_id === active) continue; // replayed from its events
      if (message.role === "assistant") {
        if (message.content) this.finalize(this.bubble(message.id), message.content);
        for (const call of message.tool_calls || []) {
          this.toolCard(call.id, call.function?.name || call.name || "tool", parseArguments(call.function?.arguments));
        }
      } else if (message.role === "tool") {
        this.historyResult(message);
      }
    }
    closeTurn(current);
    this.scrollToEnd(true);
    if (active) this.follow(active, 0);
    else this.hooks.onTurn(null);
  }

  historyResult(message) {
    const card = this.cards.get(message.tool_call_id);
    if (!card) return;
    let value;
    try { value = JSON.parse(message.content ?? "null"); } catch { value = message.content; }
    let status = "ok";
    if (value && typeof value === "object" && !Array.isArray(value)) {
      const keys = Object.keys(value);
      if (keys.length === 1 && keys[0] === "error") status = "error";
      else if (value.status === "rejected" && "reason" in value) status = "rejected";
    }
    this.setResult(card, status, status === "error" ? value.error : value);
  }

  /** Cards of an ended turn that never got a result say so. */
  settleCards(turn) {
    for (const card of this.container.querySelectorAll(".tool-card")) {
      if (card.dataset.turnId !== turn.id && card.dataset.turnId) continue;
      const was = card.dataset.status;
      if (was === "running" || was === "awaiting_approval") {
        const cancelled = turn.status === "cancelled";
        this.setStatus(card, cancelled ? "rejected" : "error");
        card.querySelector(".tool-state").textContent = !cancelled ? "no result"
          : was === "running" ? "no result (cancelled)" : "not run (cancelled)";
      }
    }
  }

  // ---- following a turn ------------------------------------------------------------------

  follow(turnId, after, userContent) {
    this.follower?.stop();
    this.turnId = turnId;
    if (userContent !== undefined) this.turnContent.set(turnId, userContent);
    this.hooks.onTurn(turnId);
    this.hooks.onStream("streaming", "Connecting…");
    const follower = new TurnFollower(turnId, after, {
      onEvent: (event) => { if (this.follower === follower) this.handle(event); },
      onState: (state) => {
        if (this.follower !== follower) return;
        this.hooks.onStream(state, state === "reconnecting" ? "Reconnecting…" : this.statusText());
      },
      onEnd: (turn) => { if (this.follower === follower) this.ended(turn); },
      onProblem: (err) => { if (this.follower === follower) this.hooks.onProblem(err); },
    });
    this.follower = follower;
    this.turnStatus = "queued";
  }

  statusText() {
    if (this.turnStatus === "awaiting_approval") return "Waiting for approval";
    if (this.turnStatus === "queued") return "Waiting for the model…";
    return "Working…";
  }

  ended(turn) {
    // Ended without a terminal event seen (a 204): finish from the turn's record.
    if (turn) {
      if (turn.status === "completed" && turn.output && turn.output.content) {
        const bubble = this.bubble(turn.output.id);
        if (!bubble.final) this.finalize(bubble, turn.output.content);
      } else if (turn.status === "failed" && !this.terminalShown) {
        this.showError(turn.error || { code: "internal_error", message: "The turn failed.", retryable: false }, turn.id, true, true);
      } else if (turn.status === "cancelled" && !this.terminalShown) this.showCancelled();
      for (const approval of turn.pending_approvals || []) updateApproval(approval);
    }
    this.finishTurn(turn ? turn.status : this.terminalStatus);
  }

  /** The turn ended while followed: `status` is how (completed|failed|cancelled, or null if unknown). */
  finishTurn(status) {
    const turnId = this.turnId;
    this.follower = null;
    this.turnId = null;
    this.terminalShown = false;
    this.terminalStatus = null;
    for (const bubble of this.bubbles.values()) {
      if (bubble.root.classList.contains("streaming")) {
        bubble.root.classList.remove("streaming");
        bubble.root.removeAttribute("aria-busy");
        this.renderBubble(bubble);
      }
    }
    // Tool cards still running or waiting (cancelled during a tool call) say they got no result.
    if (turnId && FINISHED.has(status)) this.settleCards({ id: turnId, status });
    this.hooks.onStream("idle", "Ready");
    this.hooks.onTurn(null);
    this.hooks.onApprovals();
  }

  handle(event) {
    switch (event.type) {
      case "status":
        this.turnStatus = event.status;
        this.hooks.onStream("streaming", this.statusText());
        break;
      case "token": this.onToken(event); break;
      case "reset": this.onReset(event); break;
      case "message": this.onMessage(event.message || {}); break;
      case "tool_request": {
        const card = this.toolCard(event.tool_call_id, event.tool_id, event.arguments, event.turn_id);
        if (event.requires_confirmation) card.classList.add("needs-approval");
        break;
      }
      case "approval_required": this.onApprovalRequired(event); break;
      case "approval_decided": {
        applyDecidedEvent(event);
        const card = this.cards.get(event.tool_call_id) || this.cardOfApproval(event.approval_id);
        if (card) this.setStatus(card, event.decision === "approved" ? "running" : "rejected");
        this.hooks.onApprovals();
        break;
      }
      case "tool_result": {
        const card = this.cards.get(event.tool_call_id) || this.toolCard(event.tool_call_id, event.tool_id, {}, event.turn_id);
        this.setResult(card, event.status, event.status === "error" ? event.error : event.result);
        break;
      }
      case "complete": {
        this.terminalStatus = "completed";
        if (event.message_id) {
          const exists = this.bubbles.has(event.message_id);
          if (exists || event.content) {
            const bubble = this.bubble(event.message_id);
            if (!bubble.final && event.content) this.finalize(bubble, event.content);
            else this.renderBubble(bubble);
          }
        }
        break;
      }
      case "error":
        this.terminalShown = true;
        this.terminalStatus = "failed";
        this.showError({ message: event.error, code: event.code, retryable: event.retryable }, event.turn_id, true, true);
        break;
      case "cancelled":
        this.terminalShown = true;
        this.terminalStatus = "cancelled";
        this.showCancelled();
        break;
      default:
        break;
    }
    this.scrollToEnd();
  }

  onToken(event) {
    const attempt = event.attempt || 1;
    let bubble = this.bubble(event.message_id);
    if (bubble.final) {
      // A newer attempt after the `message` event: the step is being retried (its reset lost).
      if (attempt <= bubble.attempt) return;
      this.reopen(event.message_id, attempt);
      bubble = this.bubble(event.message_id);
    }
    if (attempt < bubble.attempt) return; // an earlier attempt's late delta
    if (attempt > bubble.attempt) {
      bubble.attempt = attempt;
      bubble.cps = [];
    }
    const index = Math.max(0, Math.min(event.index ?? bubble.cps.length, bubble.cps.length));
    bubble.cps.length = index; // text = text[0:index] + content, in code points
    for (const cp of Array.from(event.content || "")) bubble.cps.push(cp);
    bubble.text = bubble.cps.join("");
    this.markStreaming(bubble);
    this.schedule(bubble);
  }

  onReset(event) {
    const known = this.bubbles.get(event.message_id);
    const calls = this.messageCalls.get(event.message_id);
    const before = known ? known.attempt : calls ? calls.attempt : null;
    if (before === null) return; // nothing shown of that message yet
    const attempt = event.attempt || before + 1;
    if (known && !known.final) {
      known.attempt = Math.max(known.attempt, attempt);
      known.cps = [];
      known.text = "";
      this.schedule(known);
      return;
    }
    if (attempt > before) this.reopen(event.message_id, attempt);
  }

  /**
   * The model step that made message `messageId` is retried after its `message` event: its text
   * streams again from nothing, and the tool cards of its calls that got no result go (the retried
   * attempt's `message` makes them again).
   */
  reopen(messageId, attempt) {
    const calls = this.messageCalls.get(messageId);
    if (calls) {
      this.messageCalls.delete(messageId);
      for (const callId of calls.ids) {
        const card = this.cards.get(callId);
        if (!card || card.querySelector("details.tool-result") || card.querySelector(".approval-card")) continue;
        forgetApprovalCards(card);
        card.remove();
        this.cards.delete(callId);
      }
    }
    let bubble = this.bubbles.get(messageId);
    if (!bubble) bubble = this.bubble(messageId);
    bubble.final = false;
    bubble.attempt = attempt;
    bubble.cps = [];
    bubble.text = "";
    this.markStreaming(bubble);
    this.schedule(bubble);
  }

  onMessage(message) {
    if (message.id) {
      const known = this.bubbles.get(message.id);
      const attempt = known ? known.attempt : 1;
      if (message.content || known) {
        const bubble = known || this.bubble(message.id);
        if (!message.content) {
          bubble.root.remove();
          this.bubbles.delete(message.id);
          this.dirty.delete(bubble);
        } else this.finalize(bubble, message.content);
      }
      this.messageCalls.set(message.id, { attempt, ids: (message.tool_calls || []).map((call) => call.id) });
    }
    for (const call of message.tool_calls || []) {
      if (!this.cards.has(call.id)) {
        this.toolCard(call.id, call.function?.name || "tool", parseArguments(call.function?.arguments), this.turnId);
      }
    }
  }

  async onApprovalRequired(event) {
    const card = this.cards.get(event.tool_call_id) || this.toolCard(event.tool_call_id, event.tool_id, event.arguments, event.turn_id);
    this.setStatus(card, "awaiting_approval");
    let slot = card.querySelector(".approval-card");
    if (!slot || slot.dataset.approvalId !== event.approval_id) {
      const approval = approvalCard({
        id: event.approval_id,
        turn_id: event.turn_id,
        conversation_id: event.conversation_id,
        tool: event.tool_id,
        tool_call_id: event.tool_call_id,
        arguments: event.arguments,
        status: "pending",
        expires_at: event.expires_at,
      });
      if (slot) slot.replaceWith(approval);
      else card.querySelector("details.tool-args-box").after(approval);
      // The email preview shows the same arguments, as the message they make.
      if (event.tool_id === "send_email") card.querySelector("details.tool-args-box").open = false;
    }
    this.hooks.onApprovals();
    try {
      updateApproval(await api(`/approvals/${encodeURIComponent(event.approval_id)}`));
    } catch (err) {
      if (err.status !== 401) this.hooks.onProblem(err);
    }
  }

  cardOfApproval(approvalId) {
    return this.container.querySelector(`.approval-card[data-approval-id="${CSS.escape(approvalId)}"]`)?.closest(".tool-card");
  }

  // ---- elements ----------------------------------------------------------------------

  addUser(text) {
    const node = el("div.msg.user", { text });
    this.container.append(node);
    this.scrollToEnd(true);
    return node;
  }

  bubble(messageId) {
    let bubble = this.bubbles.get(messageId);
    if (!bubble) {
      const content = el("div.content");
      const root = el("div.msg.assistant", { dataset: { messageId } }, content);
      bubble = { root, content, cps: [], attempt: 1, text: "", final: false };
      this.bubbles.set(messageId, bubble);
      this.container.append(root);
    }
    return bubble;
  }

  schedule(bubble) {
    this.dirty.add(bubble);
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      const stick = this.pinned;
      for (const b of this.dirty) setMarkdown(b.content, b.text);
      this.dirty.clear();
      if (stick) this.container.scrollTop = this.container.scrollHeight;
    });
  }

  renderBubble(bubble) {
    this.dirty.delete(bubble);
    if (bubble.final) {
      bubble.root.classList.remove("streaming");
      bubble.root.removeAttribute("aria-busy");
    }
    setMarkdown(bubble.content, bubble.text);
  }

  /** The bubble's text is the message's, for good: no more deltas (nor their code points). */
  finalize(bubble, text) {
    bubble.final = true;
    bubble.text = text;
    bubble.cps = null;
    this.renderBubble(bubble);
  }

  /** Being streamed: screen readers wait (aria-busy) and read the finished text. */
  markStreaming(bubble) {
    if (bubble.root.classList.contains("streaming")) return;
    bubble.root.classList.add("streaming");
    bubble.root.setAttribute("aria-busy", "true");
  }

  toolCard(callId, name, args, turnId) {
    const existing = this.cards.get(callId);
    if (existing && existing.isConnected && (!turnId || existing.dataset.turnId === turnId)) {
      if (args && Object.keys(args).length) existing.querySelector(".tool-args").textContent = prettyJson(args);
      return existing;
    }
    const card = el("div.tool-card", { dataset: { toolCallId: callId, status: "running", ...(turnId ? { turnId } : {}) } },
      el("div.tool-head", {},
        el("span.tool-icon", { "aria-hidden": "true", text: "⚙" }),
        el("span.tool-name", { text: name || "tool" }),
        el("span.tool-state", { text: STATUS_WORDS.running })),
      el("details.tool-args-box", { open: true },
        el("summary", { text: "Arguments" }),
        el("pre.tool-args", { text: prettyJson(args ?? {}), "aria-label": "Arguments" })));
    this.cards.set(callId, card);
    this.container.append(card);
    return card;
  }

  setStatus(card, status) {
    card.dataset.status = status;
    card.querySelector(".tool-state").textContent = STATUS_WORDS[status] || status;
  }

  setResult(card, status, value) {
    const shown = RESULT_STATUS[status] || "error";
    this.setStatus(card, shown);
    let text = status === "rejected" ? "Rejected" : status === "error" ? "Error" : "Result";
    if (status === "rejected" && value && value.reason) {
      text = `Rejected: ${value.reason}`;
      card.querySelector(".tool-state").textContent = `rejected: ${value.reason}`;
    }
    const details = el("details.tool-result", {}, el("summary", { text }), el("pre", { text: prettyJson(value ?? null) }));
    const old = card.querySelector("details.tool-result");
    if (old) old.replaceWith(details);
    else card.append(details);
  }

  /** A failed turn; `live` when it failed as the user watched (then it is announced). */
  showError(error, turnId, canRetry, live = false) {
    const retryable = Boolean(error.retryable);
    const content = this.turnContent.get(turnId);
    const node = el("div.turn-error", { role: live ? "alert" : null },
      el("div.error-message", { text: error.message || "The turn failed." }),
      el("div.error-meta", {},
        el("span.error-code", { text: error.code || "error" }),
        el("span.error-retryable", { text: retryable ? "Retrying may help" : "Retrying will not help" })));
    if (retryable && canRetry && content) {
      const button = el("button.retry", { type: "button", text: "Send again", "aria-label": "Send the same message again" });
      button.addEventListener("click", () => this.hooks.retry(content, button));
      node.append(button);
    }
    this.container.append(node);
  }

  showCancelled() {
    this.container.append(el("div.turn-cancelled", { text: "Cancelled: the turn was stopped before it finished." }));
  }

  scrollToEnd(force = false) {
    if (force || this.pinned) this.container.scrollTop = this.container.scrollHeight;
  }
}
