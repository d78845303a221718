// Following a turn's event stream with fetch (EventSource cannot send Authorization):
// Last-Event-ID resumes after the last seq seen, events at or below it are ignored, and a
// broken stream is resumed with backoff (0.5 s doubling to 5 s) for as long as it is wanted.
// The server sends a `: ping` every 15 s (SSE_PING_INTERVAL); a connection that brings no
// byte for IDLE_MS is taken for dead (a laptop woke up, the Wi-Fi changed) and reopened.

import { ApiError, api, request } from "./api.js";
import { sleep } from "./util.js";

const TERMINAL = new Set(["complete", "error", "cancelled"]);
const FINISHED = new Set(["completed", "failed", "cancelled"]);
export const IDLE_MS = 45000;

/**
 * Calls onEvent(json) for every SSE frame of `response`; resolves when the body ends (or
 * `signal` aborts). onChunk() is called for every chunk read, comments included.
 */
export async function readEvents(response, onEvent, signal, onChunk) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let carry = ""; // a chunk's trailing "\r": the next chunk may start with its "\n"
  const abort = () => reader.cancel().catch(() => {});
  if (signal?.aborted) abort();
  signal?.addEventListener("abort", abort, { once: true });
  const frames = () => {
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("data:")) data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
      if (!data.length) continue; // a comment (": ping") or an id-only frame
      let event;
      try { event = JSON.parse(data.join("\n")); } catch { continue; }
      onEvent(event);
    }
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        buffer += `${carry ? "\n" : ""}${decoder.decode()}`.replace(/\r\n?/g, "\n");
        frames();
        break;
      }
      onChunk?.();
      let text = carry + decoder.decode(value, { stream: true });
      carry = "";
      if (text.endsWith("\r")) {
        carry = "\r";
        text = text.slice(0, -1);
      }
      buffer += text.replace(/\r\n?/g, "\n");
      frames();
    }
  } finally {
    signal?.removeEventListener("abort", abort);
  }
}

/**
 * Follows one turn from `after` until its terminal event (or until stop()).
 * handlers: onEvent(event), onState("streaming"|"reconnecting"), onEnd(turnOrNull), onProblem(err).
 */
export class TurnFollower {
  constructor(turnId, after, handlers) {
    this.turnId = turnId;
    this.lastSeq = after;
    this.handlers = handlers;
    this.controller = new AbortController();
    this.ended = false;
    this.done = this.run();
  }

  stop() {
    this.controller.abort();
  }

  get stopped() {
    return this.controller.signal.aborted;
  }

  async run() {
    const signal = this.controller.signal;
    let delay = 500;
    while (!signal.aborted && !this.ended) {
      let progressed = false;
      // One connection: aborted by stop(), or by the watchdog when nothing arrives for IDLE_MS.
      const attempt = new AbortController();
      const stopAttempt = () => attempt.abort();
      signal.addEventListener("abort", stopAttempt, { once: true });
      let watchdog = null;
      const arm = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(stopAttempt, IDLE_MS);
      };
      arm();
      try {
        const response = await request(`/turns/${this.turnId}/events`, {
          headers: { Accept: "text/event-stream", "Last-Event-ID": String(this.lastSeq) },
          signal: attempt.signal,
        });
        if (response.status === 204) {
          // Nothing after lastSeq: the turn has ended; its record says how.
          const turn = await api(`/turns/${this.turnId}`, { signal: attempt.signal });
          if (signal.aborted) return;
          if (!turn || FINISHED.has(turn.status)) {
            this.finish(turn);
            return;
          }
          throw new Error("the stream had nothing more but the turn still runs");
        }
        if (!response.ok) {
          let problem = null;
          try { problem = await response.json(); } catch { /* not JSON */ }
          const error = new ApiError(response.status, problem);
          if (response.status === 404 || response.status === 400 || response.status === 403) {
            this.handlers.onProblem?.(error);
            this.finish(null);
            return;
          }
          throw error; // 429, 5xx: try again later
        }
        arm();
        this.handlers.onState?.("streaming");
        await readEvents(response, (event) => {
          if (typeof event.seq !== "number" || event.seq <= this.lastSeq || signal.aborted) return;
          this.lastSeq = event.seq;
          progressed = true;
          this.handlers.onEvent(event);
          if (TERMINAL.has(event.type)) this.ended = true;
        }, attempt.signal, arm);
        if (this.ended) {
          this.finish(null);
          return;
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof ApiError && err.status === 401) return; // logged out
      } finally {
        clearTimeout(watchdog);
        signal.removeEventListener("abort", stopAttempt);
      }
      if (signal.aborted) return;
      if (progressed) delay = 500;
      this.handlers.onState?.("reconnecting");
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 5000);
    }
  }

  finish(turn) {
    if (this.stopped) return;
    this.ended = true;
    this.handlers.onEnd?.(turn);
  }
}
