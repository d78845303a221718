// A small JSON Schema checker (the parts tool schemas use), address lists, and the
// client-side preview of a send_email call (the shape the server's `preview` has).

const TYPE_WORDS = { string: "a string", array: "a list", object: "an object", integer: "a whole number",
  number: "a number", boolean: "true or false", null: "empty" };

function typeOf(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (Number.isInteger(value)) return "integer";
  return typeof value;
}

function hasType(value, type) {
  const actual = typeOf(value);
  if (type === "number") return actual === "number" || actual === "integer";
  return actual === type;
}

function addrSpec(value) {
  const match = /<([^<>]*)>\s*$/.exec(value);
  return (match ? match[1] : value).trim();
}

const FORMATS = {
  email: (v) => /^[^\s@<>(),;:"]+@[^\s@<>(),;:"]+$/.test(addrSpec(v)),
  uri: (v) => { try { new URL(v); return true; } catch { return false; } },
};

/** Errors of `value` against `schema`: [{field, message}], empty when it fits. */
export function validate(schema, value, field = "") {
  if (!schema || typeof schema !== "object") return [];
  const errors = [];
  const where = field || "arguments";
  const push = (message) => errors.push({ field: where, message });
  const alternatives = schema.anyOf || schema.oneOf;
  if (alternatives) {
    const results = alternatives.map((s) => validate(s, value, field));
    if (!results.some((r) => r.length === 0)) {
      const typed = alternatives.findIndex((s) => !s.type || [].concat(s.type).some((t) => hasType(value, t)));
      if (typed >= 0) errors.push(...results[typed]);
      else push(`must be ${alternatives.map((s) => TYPE_WORDS[s.type] || "valid").join(" or ")}`);
    }
  }
  if (schema.type) {
    const types = [].concat(schema.type);
    if (!types.some((t) => hasType(value, t))) {
      push(`must be ${types.map((t) => TYPE_WORDS[t] || t).join(" or ")}`);
      return errors;
    }
  }
  if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) {
    push(`must be one of ${schema.enum.map((e) => JSON.stringify(e)).join(", ")}`);
  }
  if ("const" in schema && JSON.stringify(schema.const) !== JSON.stringify(value)) push(`must be ${JSON.stringify(schema.const)}`);
  if (typeof value === "string") {
    const length = Array.from(value).length;
    if (schema.minLength !== undefined && length < schema.minLength) {
      push(schema.minLength === 1 ? "must not be empty" : `must be at least ${schema.minLength} characters`);
    }
    if (schema.maxLength !== undefined && length > schema.maxLength) push(`must be at most ${schema.maxLength} characters`);
    if (schema.pattern) {
      let re = null;
      try { re = new RegExp(schema.pattern, "u"); } catch { /* a pattern JS cannot read: the server checks it */ }
      if (re && !re.test(value)) push(/\\x00-\\x1f/.test(schema.pattern) ? "must not contain line breaks or control characters" : "has an invalid form");
    }
    if (schema.format && FORMATS[schema.format] && !FORMATS[schema.format](value)) {
      push(schema.format === "email" ? `"${value}" is not an email address` : `must be a valid ${schema.format}`);
    }
  }
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) push(`must be at least ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) push(`must be at most ${schema.maximum}`);
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) {
      push(schema.minItems === 1 ? "needs at least one entry" : `needs at least ${schema.minItems} entries`);
    }
    if (schema.maxItems !== undefined && value.length > schema.maxItems) push(`takes at most ${schema.maxItems} entries`);
    if (schema.items) value.forEach((item, i) => errors.push(...validate(schema.items, item, `${where}[${i}]`)));
  }
  if (typeOf(value) === "object") {
    for (const name of schema.required || []) {
      if (!(name in value)) errors.push({ field: field ? `${field}.${name}` : name, message: "is required" });
    }
    const properties = schema.properties || {};
    for (const [name, item] of Object.entries(value)) {
      const path = field ? `${field}.${name}` : name;
      if (properties[name]) errors.push(...validate(properties[name], item, path));
      else if (schema.additionalProperties === false) errors.push({ field: path, message: "is not an accepted field" });
    }
  }
  return errors;
}

/** "A <a@x>, \"Doe, J\" <j@x>" → ["A <a@x>", "\"Doe, J\" <j@x>"] (commas in quotes or <> kept). */
export function splitAddresses(text) {
  const parts = [];
  let current = "";
  let quoted = false;
  let angle = 0;
  for (const ch of String(text || "")) {
    if (ch === '"') quoted = !quoted;
    else if (!quoted && ch === "<") angle += 1;
    else if (!quoted && ch === ">") angle = Math.max(0, angle - 1);
    if ((ch === "," || ch === ";" || ch === "\n") && !quoted && angle === 0) {
      parts.push(current);
      current = "";
    } else current += ch;
  }
  parts.push(current);
  return parts.map((p) => p.trim()).filter(Boolean);
}

export function asList(value) {
  if (value === undefined || value === null || value === "") return [];
  return Array.isArray(value) ? value.map(String) : [String(value)];
}

const HTML_HINT = /<\/?[a-zA-Z][a-zA-Z0-9]*(?:\s[^>]*)?\/?>|&(?:[a-zA-Z]+|#[0-9]+|#x[0-9a-fA-F]+);/;

function escapeHtml(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#x27;");
}

export function textToHtml(text) {
  return `<html><body>${escapeHtml(text).replace(/\n/g, "<br>\n")}</body></html>\n`;
}

const PARAGRAPHS = new Set(["P", "H1", "H2", "H3", "H4", "H5", "H6", "BLOCKQUOTE", "PRE", "TABLE", "UL", "OL", "DL", "HR"]);
const LINES = new Set(["DIV", "SECTION", "ARTICLE", "HEADER", "FOOTER", "MAIN", "ASIDE", "NAV", "TR", "LI", "DT", "DD",
  "ADDRESS", "FIGURE", "FIGCAPTION", "FORM", "FIELDSET", "DETAILS", "SUMMARY"]);
const HIDDEN = new Set(["SCRIPT", "STYLE", "HEAD", "TEMPLATE", "NOSCRIPT", "TITLE"]);

/** A readable plain-text rendering of an HTML body (what the server derives, roughly). */
export function htmlToText(html) {
  // DOMParser documents are inert: no script runs, nothing loads.
  const doc = new DOMParser().parseFromString(html, "text/html");
  const parts = [];
  let pre = 0;
  const tailBreaks = () => {
    const tail = parts.slice(-4).join("");
    return tail.length - tail.replace(/\n+$/, "").length;
  };
  const lineBreak = (n) => { const have = tailBreaks(); if (parts.length && have < n) parts.push("\n".repeat(n - have)); };
  const block = (tag) => { if (PARAGRAPHS.has(tag)) lineBreak(2); else if (LINES.has(tag)) lineBreak(1); };
  const text = (data) => {
    if (!pre) {
      data = data.replace(/\s+/g, " ");
      if (!parts.length || parts[parts.length - 1].endsWith("\n")) data = data.replace(/^ /, "");
    }
    parts.push(data);
  };
  const walk = (node) => {
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) { text(child.data); continue; }
      if (child.nodeType !== Node.ELEMENT_NODE) continue;
      const tag = child.tagName;
      if (HIDDEN.has(tag)) continue;
      if (tag === "BR") { parts.push("\n"); continue; }
      if (tag === "IMG") { text(child.getAttribute("alt") || ""); continue; }
      if (tag === "TD" || tag === "TH") text(" ");
      block(tag);
      if (tag === "LI") parts.push("- ");
      if (tag === "PRE") pre += 1;
      const start = parts.length;
      walk(child);
      if (tag === "PRE") pre -= 1;
      if (tag === "A") {
        const href = child.getAttribute("href");
        const label = parts.slice(start).join("").trim();
        if (href && /^(https?:|mailto:)/.test(href) && href.replace(/^mailto:/, "") !== label) parts.push(` (${href})`);
      }
      block(tag);
    }
  };
  walk(doc.documentElement || doc);
  const lines = parts.join("").split("\n").map((l) => l.trimEnd());
  return `${lines.join("\n").replace(/\n{3,}/g, "\n\n").trim()}\n`;
}

function base64Size(text) {
  const compact = String(text || "").replace(/\s+/g, "");
  const padding = compact.endsWith("==") ? 2 : compact.endsWith("=") ? 1 : 0;
  return Math.max(0, Math.floor((compact.length * 3) / 4) - padding);
}

/** The preview of send_email `args` (same shape as the server's; `from` is the server's). */
export function buildEmailPreview(args, from = null) {
  const a = args && typeof args === "object" ? args : {};
  const body = typeof a.body === "string" ? a.body : "";
  const html = HTML_HINT.test(body) ? body : textToHtml(body);
  const text = HTML_HINT.test(body) ? htmlToText(body) : body;
  return {
    from,
    to: asList(a.to),
    cc: asList(a.cc),
    bcc: asList(a.bcc),
    reply_to: a.reply_to ? String(a.reply_to) : null,
    subject: a.subject === undefined || a.subject === null ? "" : String(a.subject),
    html,
    text,
    attachments: (Array.isArray(a.attachments) ? a.attachments : []).map((item) => ({
      filename: String(item?.filename ?? "(unnamed)"),
      content_type: String(item?.content_type || "application/octet-stream"),
      size: base64Size(item?.content_base64),
    })),
  };
}
