// The approval card: what approving will do (for send_email, the message as it will be sent,
// its HTML body in a sandboxed, script-less iframe), Approve / Edit / Reject, and the decision.
// One component, used in the transcript (inside its tool card) and in the inbox; every card
// of the same approval shows the same state.

import { ApiError, api } from "./api.js";
import { buildEmailPreview, splitAddresses, validate } from "./schema.js";
import { el, formatSize, localTime, prettyJson, stableJson, uuid } from "./util.js";

const FRAME_CSP = `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">`;
const cards = new Map(); // approval id → Set of ApprovalCard

let context = { me: null, toolSchema: async () => null, onDecided: () => {} };

/** me: {id, name}; toolSchema(name) → Promise<schema|null>; onDecided(approval). */
export function configureApprovals(options) {
  context = { ...context, ...options };
}

/** Every card showing approval `id` gets the new state (a server object or a partial one). */
export function updateApproval(update) {
  const set = cards.get(update.id);
  if (!set) return;
  for (const card of Array.from(set)) {
    if (!card.root.isConnected && card.attached) set.delete(card);
    else card.update(update);
  }
  if (!set.size) cards.delete(update.id);
}

/** Cards inside `container` get no more updates (their view or the inbox is going away). */
export function forgetApprovalCards(container) {
  for (const [id, set] of cards) {
    for (const card of Array.from(set)) if (container.contains(card.root)) set.delete(card);
    if (!set.size) cards.delete(id);
  }
}

/** Every card forgotten (logging out). */
export function clearApprovalCards() {
  cards.clear();
}

/** Cards that were on the page and are no longer. */
function pruneApprovalCards() {
  for (const [id, set] of cards) {
    for (const card of Array.from(set)) if (card.attached && !card.root.isConnected) set.delete(card);
    if (!set.size) cards.delete(id);
  }
}

/** An approval_decided event, applied to every card of its approval. */
export function applyDecidedEvent(event) {
  updateApproval({
    id: event.approval_id,
    status: event.decision,
    decided_by: event.decided_by ?? null,
    reason: event.reason ?? null,
    decided_at: event.timestamp ?? null,
    ...(event.arguments ? { arguments: event.arguments } : {}),
  });
}

export function approvalCard(approval) {
  return new ApprovalCard(approval).root;
}

function decidedBy(id) {
  if (!id) return null;
  if (context.me && id === context.me.id) return context.me.name || id;
  return id;
}

/** One header of the preview: a label, and the value in an element of class `cls` (its text only). */
function field(cls, label, value) {
  return el("div.row", {}, el("span.label", { text: label }), el(`span.value.${cls}`, { text: value }));
}

class ApprovalCard {
  constructor(approval) {
    this.approval = { ...approval };
    this.attached = false;
    this.mode = null; // null | "edit" | "reject"
    this.serverFrom = approval.preview ? approval.preview.from ?? null : null;
    this.preview = approval.preview || null;
    this.previewArgs = stableJson(approval.arguments ?? {});
    this.root = el("div.approval-card", { dataset: { approvalId: approval.id, status: approval.status || "pending" } });
    this.head = el("div.approval-head");
    this.body = el("div.approval-body");
    this.expires = el("div.expires");
    this.error = el("div.approval-error", { role: "alert", hidden: true });
    this.actions = el("div.actions",
      {},
      el("button.approve", { type: "button", text: "Approve", "aria-label": "Approve", onclick: () => this.decide({ decision: "approve" }) }),
      el("button.edit", { type: "button", text: "Edit", "aria-label": "Edit before approving", onclick: () => this.openEdit() }),
      el("button.reject", { type: "button", text: "Reject", "aria-label": "Reject", onclick: () => this.openReject() }),
    );
    this.panel = el("div.approval-panel");
    this.decision = el("div.decision", { hidden: true });
    this.root.append(this.head, this.body, this.expires, this.error, this.actions, this.panel, this.decision);
    pruneApprovalCards();
    let set = cards.get(approval.id);
    if (!set) cards.set(approval.id, (set = new Set()));
    set.add(this);
    requestAnimationFrame(() => { this.attached = true; });
    this.renderBody();
    this.renderState();
  }

  get isEmail() {
    return this.approval.tool === "send_email";
  }

  update(update) {
    // A late answer from before the decision (a GET that crossed approval_decided): the
    // decision stands; a decided approval never becomes pending again.
    if (update.status === "pending" && (this.approval.status || "pending") !== "pending") return;
    const before = stableJson(this.approval.arguments ?? {});
    this.approval = { ...this.approval, ...update };
    if (update.preview !== undefined) {
      this.preview = update.preview;
      if (update.preview && this.serverFrom === null) this.serverFrom = update.preview.from ?? null;
      this.previewArgs = stableJson(this.approval.arguments ?? {});
      this.renderBody();
    } else if (update.arguments && stableJson(update.arguments) !== before) {
      this.preview = null; // built from the new arguments
      this.previewArgs = stableJson(update.arguments);
      this.renderBody();
    }
    this.renderState();
  }

  renderBody(previewArgs) {
    const args = previewArgs ?? this.approval.arguments ?? {};
    const tool = this.approval.tool || "tool";
    this.head.replaceChildren(
      el("span.approval-title", { text: this.isEmail ? "Send this email?" : `Run ${tool}?` }),
      el("span.approval-tool", { text: tool }),
    );
    if (!this.isEmail) {
      this.body.replaceChildren(el("pre.approval-args", { text: prettyJson(args) }));
      return;
    }
    const usable = !previewArgs && this.preview && stableJson(this.approval.arguments ?? {}) === this.previewArgs;
    const p = usable ? this.preview : buildEmailPreview(args, this.serverFrom);
    const list = (items) => (items && items.length ? items.join(", ") : "—");
    const frame = el("iframe.email-body", { sandbox: "", title: "Email body", referrerpolicy: "no-referrer" });
    frame.srcdoc = FRAME_CSP + (p.html || "");
    const preview = el("div.email-preview", {},
      field("from", "From", p.from || "(the sender the server is configured with)"),
      field("to", "To", list(p.to)),
      p.cc && p.cc.length ? field("cc", "Cc", list(p.cc)) : null,
      p.bcc && p.bcc.length ? field("bcc", "Bcc", list(p.bcc)) : null,
      p.reply_to ? field("reply-to", "Reply-To", p.reply_to) : null,
      field("subject", "Subject", p.subject || "(no subject)"),
      frame,
      p.text ? el("details.email-text", {}, el("summary", { text: "Plain-text part" }), el("pre", { text: p.text })) : null,
      p.attachments && p.attachments.length
        ? el("ul.attachments", { "aria-label": "Attachments" }, p.attachments.map((a) => el("li", {},
          el("span.filename", { text: a.filename }), " ",
          el("span.type", { text: a.content_type }), " ",
          el("span.size", { text: formatSize(a.size) }))))
        : null,
    );
    this.body.replaceChildren(preview);
  }

  renderState() {
    const a = this.approval;
    const status = a.status || "pending";
    this.root.dataset.status = status;
    this.expires.textContent = a.expires_at ? `expires ${localTime(a.expires_at)}` : "";
    this.expires.hidden = status !== "pending" || !a.expires_at;
    if (status === "pending") {
      this.decision.hidden = true;
      this.actions.hidden = this.mode !== null;
      return;
    }
    this.mode = null;
    this.actions.remove();
    this.panel.replaceChildren();
    const at = localTime(a.decided_at || (status === "expired" ? a.expires_at : null));
    const who = decidedBy(a.decided_by);
    const edited = a.requested_arguments && a.arguments && stableJson(a.requested_arguments) !== stableJson(a.arguments);
    let text;
    if (status === "approved") text = `Approved${who ? ` by ${who}` : ""}${at ? ` at ${at}` : ""}${edited ? " (edited)" : ""}`;
    else if (status === "rejected") text = `Rejected${who ? ` by ${who}` : ""}${at ? ` at ${at}` : ""}${a.reason ? `: ${a.reason}` : ""}`;
    else if (status === "expired") text = `Expired${at ? ` at ${at}` : ""}: not sent`;
    else if (status === "cancelled") text = `Cancelled${at ? ` at ${at}` : ""}: the turn was cancelled`;
    else text = status;
    this.decision.textContent = text;
    this.decision.hidden = false;
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }

  busy(on) {
    for (const button of this.root.querySelectorAll("button")) button.disabled = on;
  }

  closePanel() {
    this.mode = null;
    this.panel.replaceChildren();
    this.renderBody();
    this.renderState();
  }

  async decide(body, formError = null) {
    this.showError("");
    if (formError) { formError.textContent = ""; formError.hidden = true; }
    this.busy(true);
    try {
      const result = await api(`/approvals/${encodeURIComponent(this.approval.id)}`, {
        method: "POST", body, headers: { "Idempotency-Key": uuid() },
      });
      if (body.arguments) {
        // The edited call's preview, built here; the sender stays the server's.
        result.preview = buildEmailPreview(result.arguments || body.arguments, this.serverFrom);
        if (!this.isEmail) delete result.preview;
      }
      updateApproval(result);
      context.onDecided(result);
    } catch (err) {
      this.busy(false);
      if (!(err instanceof ApiError)) {
        this.showError(`Could not reach the server: ${err.message}`);
        return;
      }
      if (err.status === 422 && formError) {
        formError.textContent = problemText(err);
        formError.hidden = false;
        return;
      }
      this.showError(problemText(err));
      if (err.status === 409 || err.status === 404) {
        try {
          const fresh = await api(`/approvals/${encodeURIComponent(this.approval.id)}`);
          updateApproval(fresh);
          context.onDecided(fresh);
        } catch { /* the error shown says enough */ }
      }
    }
  }

  openReject() {
    this.mode = "reject";
    this.actions.hidden = true;
    const reason = el("textarea.reject-reason", { rows: 2, "aria-label": "Reason for rejecting (optional)", placeholder: "Reason (optional)" });
    const confirm = el("button.confirm-reject", { type: "button", text: "Reject", "aria-label": "Confirm rejection" });
    const cancel = el("button.cancel-panel", { type: "button", text: "Cancel", "aria-label": "Keep the approval open" });
    confirm.addEventListener("click", () => {
      const text = reason.value.trim();
      this.decide({ decision: "reject", ...(text ? { reason: text } : {}) });
    });
    cancel.addEventListener("click", () => this.closePanel());
    this.panel.replaceChildren(el("div.reject-box", {}, el("label", {}, "Why not? ", reason), el("div.buttons", {}, confirm, cancel)));
    reason.focus();
  }

  async openEdit() {
    this.mode = "edit";
    this.actions.hidden = true;
    const schema = await context.toolSchema(this.approval.tool).catch(() => null);
    if (this.mode !== "edit") return;
    const form = el("form.edit-form", { novalidate: true, "aria-label": "Edit before approving" });
    const formError = el("div.form-error", { role: "alert", hidden: true });
    const args = this.approval.arguments || {};
    const fields = this.isEmail && schema ? schemaFields(schema, args) : null;
    let readArgs;
    if (fields) {
      for (const f of fields) form.append(f.row);
      readArgs = () => {
        const out = { ...args };
        for (const f of fields) {
          const value = f.read();
          if (value === undefined) delete out[f.name];
          else out[f.name] = value;
        }
        return out;
      };
      form.addEventListener("input", () => {
        if (this.frameTimer) return;
        this.frameTimer = requestAnimationFrame(() => {
          this.frameTimer = null;
          if (this.mode === "edit") this.renderBody(readArgs());
        });
      });
    } else {
      const area = el("textarea", { name: "arguments", rows: 10, spellcheck: "false", "aria-label": "Arguments (JSON)" });
      area.value = JSON.stringify(args, null, 2);
      form.append(el("label.field", {}, el("span", { text: "Arguments (JSON)" }), area));
      readArgs = () => {
        let parsed;
        try { parsed = JSON.parse(area.value); } catch (err) { throw new Error(`Not valid JSON: ${err.message}`); }
        if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("The arguments must be a JSON object.");
        return parsed;
      };
    }
    const save = el("button.save-approve", { type: "submit", text: "Approve edited", "aria-label": "Approve the edited call" });
    const cancel = el("button.cancel-panel", { type: "button", text: "Cancel", "aria-label": "Discard the edits" });
    cancel.addEventListener("click", () => this.closePanel());
    form.append(formError, el("div.buttons", {}, save, cancel));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      let edited;
      try { edited = readArgs(); } catch (err) {
        formError.textContent = err.message;
        formError.hidden = false;
        return;
      }
      const errors = schema ? validate(schema, edited) : [];
      if (errors.length) {
        formError.textContent = errors.map((e) => `${e.field}: ${e.message}`).join("\n");
        formError.hidden = false;
        return;
      }
      this.decide({ decision: "approve", arguments: edited }, formError);
    });
    this.panel.replaceChildren(form);
    form.querySelector("input, textarea")?.focus();
  }
}

export function problemText(err) {
  const p = err.problem || {};
  const lines = [p.detail || p.title || err.message];
  for (const e of Array.isArray(p.errors) ? p.errors : []) {
    const where = String(e.field || e.loc || "").replace(/^body\./, "");
    lines.push(`${where ? `${where}: ` : ""}${e.message || e.msg || ""}`);
  }
  return lines.filter(Boolean).join("\n");
}

const LABELS = { to: "To", cc: "Cc", bcc: "Bcc", reply_to: "Reply-To", subject: "Subject", body: "Body" };
const ORDER = ["to", "cc", "bcc", "reply_to", "subject", "body"];

function isStringList(s) {
  return s && s.type === "array" && (!s.items || s.items.type === "string");
}

/** Form rows for the schema's properties (lists as comma-separated text); complex ones are kept as they were. */
function schemaFields(schema, args) {
  const properties = schema.properties || {};
  const required = new Set(schema.required || []);
  const names = [...ORDER.filter((n) => n in properties), ...Object.keys(properties).filter((n) => !ORDER.includes(n))];
  const fields = [];
  for (const name of names) {
    const s = properties[name];
    const variants = s.anyOf || s.oneOf || [s];
    const label = `${LABELS[name] || name.replace(/_/g, " ")}${required.has(name) ? "" : " (optional)"}`;
    const current = args[name];
    let input;
    let read;
    if (variants.some(isStringList)) {
      input = el("input", { type: "text", name, autocomplete: "off", spellcheck: "false" });
      input.value = current === undefined || current === null ? "" : [].concat(current).join(", ");
      read = () => {
        const list = splitAddresses(input.value);
        return list.length || required.has(name) ? list : undefined;
      };
      fields.push({ name, read, row: el("label.field", {}, el("span", {}, label, el("small", { text: " comma-separated" })), input) });
      continue;
    }
    const type = variants.map((v) => v.type).find(Boolean);
    if (type === "string") {
      const long = name === "body" || (s.maxLength ?? 0) > 1000;
      input = long ? el("textarea", { name, rows: 8 }) : el("input", { type: name.includes("email") || name === "reply_to" ? "text" : "text", name, autocomplete: "off" });
      input.value = current === undefined || current === null ? "" : String(current);
      read = () => (input.value === "" && !required.has(name) ? undefined : input.value);
    } else if (type === "integer" || type === "number") {
      input = el("input", { type: "number", name, step: type === "integer" ? "1" : "any" });
      input.value = current === undefined || current === null ? "" : String(current);
      read = () => (input.value === "" ? undefined : Number(input.value));
    } else if (type === "boolean") {
      input = el("input", { type: "checkbox", name });
      input.checked = Boolean(current);
      read = () => input.checked;
    } else {
      if (current !== undefined && !(Array.isArray(current) && !current.length)) {
        const note = Array.isArray(current) ? `${current.length} kept as they are` : "kept as it is";
        fields.push({ name, read: () => current, row: el("div.field.kept", {}, el("span", { text: `${LABELS[name] || name}: ${note}` })) });
      }
      continue;
    }
    fields.push({ name, read, row: el("label.field", {}, el("span", { text: label }), input) });
  }
  return fields;
}
