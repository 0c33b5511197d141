// The dashboard's only way to the gateway: same-origin fetches that carry the HttpOnly
// session cookie (the key itself never reaches the browser's storage) and the custom
// CSRF header the gateway asks of cookie-authenticated requests.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export type Session = {
  key_id: string;
  namespace: string;
  scopes: string[];
  expires_at: number | null;
};

export type FunctionInfo = {
  namespace: string;
  name: string;
  created_at: number;
  traffic: Record<string, number>;
};

export type VersionInfo = {
  version: number;
  handler: string;
  kind: string;
  created_at: number;
  config: Record<string, unknown>;
};

export type Bucket = {
  t: number;
  count: number;
  errors: number;
  cold: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
};

export type Stats = {
  window: number;
  now: number;
  buckets: Bucket[];
  total: Omit<Bucket, "t">;
};

export type WorkerCounts = {
  busy: number;
  idle: number;
  starting: number;
  queued: number;
  total: number;
  versions: Record<string, { busy: number; idle: number; starting: number; queued: number }>;
};

export type Invocation = {
  id: string;
  version: number;
  status: number;
  code: string;
  cold: boolean;
  started_at: number;
  duration_ms: number;
};

export type LogLine = {
  ts: number;
  version: number;
  invocation_id: string;
  level: string;
  message: string;
  fields: Record<string, unknown>;
};

export type UsageRow = {
  namespace: string;
  function: string;
  hour?: string;
  invocations: number;
  errors: number;
  gb_seconds: number;
  cpu_seconds: number;
  bytes_in: number;
  bytes_out: number;
  cost: number;
};

export type Usage = {
  namespace: string;
  since: string | number;
  until: string | number;
  by: string;
  currency: string;
  prices: Record<string, number>;
  rows: UsageRow[];
  total: Partial<UsageRow>;
};

export type AuditEvent = {
  seq: number;
  ts: number;
  actor: string;
  action: string;
  target: string;
  result: string;
  source: string;
  details: Record<string, unknown>;
};

type Listener = () => void;
const unauthorized: Listener[] = [];

/** Called whenever the gateway answers 401 (the session ended): back to the login page. */
export function onUnauthorized(listener: Listener): void {
  unauthorized.push(listener);
}

export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { "X-Cumulo-CSRF": "1", Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  const text = await response.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) {
    const error = (data as { error?: { code?: string; message?: string } } | null)?.error;
    if (response.status === 401 && !path.startsWith("/ui/login")) {
      unauthorized.forEach((listener) => listener());
    }
    throw new ApiError(
      response.status,
      error?.code ?? "error",
      error?.message ?? `${response.status} ${response.statusText}`,
    );
  }
  return data as T;
}

export type InvokeResult = { status: number; ms: number; body: string };

/** Invoke a function as its HTTP clients do, with the session instead of a bearer key. */
export async function invoke(ns: string, name: string, body: string): Promise<InvokeResult> {
  const started = performance.now();
  const response = await fetch(`/fn/${enc(ns)}/${enc(name)}`, {
    method: "POST",
    headers: { "X-Cumulo-CSRF": "1", "Content-Type": "application/json" },
    body,
    credentials: "same-origin",
  });
  const text = await response.text();
  return { status: response.status, ms: performance.now() - started, body: text };
}

export const enc = encodeURIComponent;

export const api = {
  session: () => request<Session>("GET", "/ui/session"),
  login: (key: string) => request<Session>("POST", "/ui/login", { key }),
  logout: () => request<unknown>("POST", "/ui/logout"),
  functions: (ns: string) =>
    request<{ functions: FunctionInfo[] }>("GET", `/v1/namespaces/${enc(ns)}/functions`),
  versions: (ns: string, name: string) =>
    request<{ versions: VersionInfo[]; traffic: Record<string, number> }>(
      "GET",
      `/v1/namespaces/${enc(ns)}/functions/${enc(name)}/versions`,
    ),
  setTraffic: (ns: string, name: string, weights: Record<string, number>) =>
    request<{ traffic: Record<string, number> }>(
      "PUT",
      `/v1/namespaces/${enc(ns)}/functions/${enc(name)}/traffic`,
      { weights },
    ),
  stats: (ns: string, name: string, window: number) =>
    request<Stats>(
      "GET",
      `/v1/namespaces/${enc(ns)}/functions/${enc(name)}/stats?window=${window}`,
    ),
  workers: (ns: string) =>
    request<{ functions: Record<string, WorkerCounts> }>("GET", `/v1/namespaces/${enc(ns)}/workers`),
  invocations: (ns: string, name: string, limit = 20) =>
    request<{ invocations: Invocation[] }>(
      "GET",
      `/v1/namespaces/${enc(ns)}/functions/${enc(name)}/invocations?limit=${limit}`,
    ),
  logs: (ns: string, name: string, limit = 200) =>
    request<{ lines: LogLine[] }>(
      "GET",
      `/v1/namespaces/${enc(ns)}/functions/${enc(name)}/logs?limit=${limit}`,
    ),
  usage: (ns: string) => request<Usage>("GET", `/v1/usage?namespace=${enc(ns)}`),
  audit: (ns: string, before?: number) =>
    request<{ events: AuditEvent[]; next_before: number | null }>(
      "GET",
      `/v1/audit?namespace=${enc(ns)}&limit=50${before ? `&before=${before}` : ""}`,
    ),
};
