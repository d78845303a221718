// The public API under /api/v1, with the key from localStorage. Any 401 logs out.

const KEY = "assistant.key";
let unauthorized = () => {};

export const auth = {
  get key() { return localStorage.getItem(KEY); },
  set key(value) {
    if (value) localStorage.setItem(KEY, value);
    else localStorage.removeItem(KEY);
  },
  onUnauthorized(callback) { unauthorized = callback; },
};

/** An HTTP problem (RFC 9457 body when the server sent one). */
export class ApiError extends Error {
  constructor(status, problem) {
    super(describeProblem(status, problem));
    this.status = status;
    this.problem = problem || {};
    this.code = this.problem.code || null;
  }
}

export function describeProblem(status, problem) {
  if (problem && (problem.detail || problem.title)) return String(problem.detail || problem.title);
  return `the server answered ${status}`;
}

/** The raw Response; throws ApiError on 401 (after logging out) and TypeError on network failure. */
export async function request(path, { method = "GET", body, headers = {}, signal, key } = {}) {
  const options = {
    method,
    signal,
    headers: { Authorization: `Bearer ${key ?? auth.key ?? ""}`, ...headers },
  };
  if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(`/api/v1${path}`, options);
  if (response.status === 401 && key === undefined) {
    unauthorized();
    throw new ApiError(401, await problemOf(response));
  }
  return response;
}

async function problemOf(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

/** The JSON body of a successful answer (null for 204); ApiError otherwise. */
export async function api(path, options = {}) {
  const response = await request(path, { ...options, headers: { Accept: "application/json", ...(options.headers || {}) } });
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  if (response.status === 204) return null;
  return response.json();
}

/** Every item of a list endpoint, following has_more with ?after=. */
export async function listAll(path, { max = 1000 } = {}) {
  const items = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    items.push(...page.data);
    if (!page.has_more || !page.last_id || items.length >= max) return items;
    after = page.last_id;
  }
}
