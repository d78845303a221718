// Markdown → sanitised DOM. marked (window.marked) parses, DOMPurify (window.DOMPurify)
// sanitises with an explicit allow-list; links keep only http(s)/mailto targets and open in a
// new tab; images become consent buttons, so nothing remote loads before a click.

const ALLOWED_TAGS = [
  "p", "br", "strong", "em", "del", "code", "pre", "blockquote", "ul", "ol", "li",
  "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "a", "hr", "img",
];
const ALLOWED_ATTR = ["href", "title", "alt", "src", "align", "start"];
const LINK_OK = /^(https?:|mailto:)/i;
const IMAGE_OK = /^(https?:|data:)/i;

let parser = null;
let hooked = false;

function setUp() {
  if (!parser) parser = new window.marked.Marked({ gfm: true, breaks: false, async: false });
  if (!hooked) {
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.nodeName === "A") {
        const href = (node.getAttribute("href") || "").trim();
        if (!LINK_OK.test(href)) node.removeAttribute("href");
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      } else if (node.nodeName === "IMG") {
        const src = (node.getAttribute("src") || "").trim();
        if (!IMAGE_OK.test(src)) node.removeAttribute("src");
      }
    });
    hooked = true;
  }
}

/** The sanitised DOM of `markdown`, ready to append (its images replaced by consent buttons). */
export function renderMarkdown(markdown) {
  setUp();
  let html;
  try {
    html = parser.parse(String(markdown ?? ""));
  } catch {
    const pre = document.createElement("pre");
    pre.textContent = String(markdown ?? "");
    return pre;
  }
  // The fragment lives in DOMPurify's inert document: its <img> elements load nothing
  // until adopted into this page, and they are replaced before that.
  const fragment = window.DOMPurify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ALLOW_DATA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  });
  // Whitespace between top-level blocks renders as nothing; dropped, the text is the text.
  for (const node of Array.from(fragment.childNodes)) {
    if (node.nodeType === Node.TEXT_NODE && !node.data.trim()) node.remove();
  }
  for (const img of Array.from(fragment.querySelectorAll("img"))) img.replaceWith(consentButton(img));
  for (const table of Array.from(fragment.querySelectorAll("table"))) {
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    table.replaceWith(wrap);
    wrap.append(table);
  }
  return fragment; // adopted when appended (a copy would lose the buttons' listeners)
}

/** Fills `target` with the rendered markdown. */
export function setMarkdown(target, markdown) {
  target.replaceChildren(renderMarkdown(markdown));
}

function consentButton(img) {
  const src = img.getAttribute("src") || "";
  const alt = img.getAttribute("alt") || "";
  const title = img.getAttribute("title");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "image-consent";
  let host = "";
  if (/^data:/i.test(src)) host = "this message (embedded)";
  else {
    try { host = new URL(src).host; } catch { host = ""; }
  }
  if (!host) {
    // No usable source: show the alt text only.
    const span = document.createElement("span");
    span.className = "image-missing";
    span.textContent = alt ? `[image: ${alt}]` : "[image]";
    return span;
  }
  button.textContent = `Show image from ${host}${alt ? ` (${alt})` : ""}`;
  button.setAttribute("aria-label", `Show image from ${host}${alt ? `: ${alt}` : ""}`);
  button.addEventListener("click", () => {
    const image = document.createElement("img");
    image.alt = alt;
    if (title) image.title = title;
    image.referrerPolicy = "no-referrer";
    image.src = src;
    button.replaceWith(image);
  }, { once: true });
  return button;
}
