import { useMemo, useState } from "preact/hooks";
import { api, invoke, ApiError, type InvokeResult, type Stats } from "../api";
import { Chart, fmt, type Line } from "../Chart";
import { usePoll } from "../poll";
import { ErrorLine, TrafficBar, time, versionColor } from "./common";

const WINDOWS = [60, 300];

export function FunctionPage({ ns, name }: { ns: string; name: string }) {
  const [span, setSpan] = useState(60);
  const stats = usePoll(() => api.stats(ns, name, span), 1000, [ns, name, span]);
  return (
    <div>
      <h2>
        <a href="#/" class="muted">
          Functions
        </a>{" "}
        / <span data-testid="function-name">{name}</span>
      </h2>
      <ErrorLine error={stats.error} />
      <div class="toolbar">
        <span class="muted">live, every second · window</span>
        {WINDOWS.map((w) => (
          <button key={w} class={w === span ? "small on" : "small ghost"} onClick={() => setSpan(w)}>
            {w / 60} min
          </button>
        ))}
      </div>
      {stats.data && <Summary stats={stats.data} />}
      {stats.data && <Charts stats={stats.data} />}
      <div class="grid2">
        <InvokeForm ns={ns} name={name} onDone={stats.refresh} />
        <div>
          <Traffic ns={ns} name={name} />
          <Workers ns={ns} name={name} />
        </div>
      </div>
      <Recent ns={ns} name={name} />
    </div>
  );
}

function Summary({ stats }: { stats: Stats }) {
  const t = stats.total;
  const cell = (label: string, value: string, id: string) => (
    <div class="stat">
      <div class="value" data-testid={id}>
        {value}
      </div>
      <div class="label">{label}</div>
    </div>
  );
  const ms = (v: number | null) => (v == null ? "–" : `${fmt(v)} ms`);
  return (
    <section class="stats card" data-testid="summary">
      {cell(`invocations (${stats.window / 60} min)`, String(t.count), "total-count")}
      {cell("errors", String(t.errors), "total-errors")}
      {cell("cold starts", String(t.cold), "total-cold")}
      {cell("p50", ms(t.p50_ms), "total-p50")}
      {cell("p95", ms(t.p95_ms), "total-p95")}
      {cell("p99", ms(t.p99_ms), "total-p99")}
    </section>
  );
}

function Charts({ stats }: { stats: Stats }) {
  const { times, rate, latency, failures } = useMemo(() => {
    const b = stats.buckets;
    const times = b.map((x) => x.t);
    const rate: Line[] = [
      { label: "invocations/s", color: "#4f8cff", fill: "rgba(79,140,255,0.15)", values: b.map((x) => x.count) },
    ];
    const latency: Line[] = [
      { label: "p50", color: "#17c964", values: b.map((x) => x.p50_ms) },
      { label: "p95", color: "#f5a524", values: b.map((x) => x.p95_ms) },
      { label: "p99", color: "#f31260", values: b.map((x) => x.p99_ms) },
    ];
    const failures: Line[] = [
      { label: "errors/s", color: "#f31260", values: b.map((x) => x.errors) },
      { label: "cold starts/s", color: "#9353d3", values: b.map((x) => x.cold) },
    ];
    return { times, rate, latency, failures };
  }, [stats]);
  return (
    <div class="grid3">
      <Chart title="Invocation rate" unit="/s" times={times} lines={rate} testid="chart-rate" />
      <Chart title="Latency percentiles" unit=" ms" times={times} lines={latency} testid="chart-latency" />
      <Chart title="Errors and cold starts" unit="/s" times={times} lines={failures} testid="chart-errors" />
    </div>
  );
}

function InvokeForm({ ns, name, onDone }: { ns: string; name: string; onDone: () => void }) {
  const [body, setBody] = useState('{"name": "dashboard"}');
  const [result, setResult] = useState<InvokeResult | null>(null);
  const [problem, setProblem] = useState("");
  const [busy, setBusy] = useState(false);

  async function run(e: Event) {
    e.preventDefault();
    setProblem("");
    try {
      JSON.parse(body);
    } catch (err) {
      setProblem(`not JSON: ${(err as Error).message}`);
      return;
    }
    setBusy(true);
    try {
      setResult(await invoke(ns, name, body));
      onDone();
    } catch (err) {
      setProblem(String(err));
    } finally {
      setBusy(false);
    }
  }

  let pretty = result?.body ?? "";
  try {
    pretty = JSON.stringify(JSON.parse(pretty), null, 2);
  } catch {
    /* not JSON: shown as it came */
  }
  return (
    <form class="card" onSubmit={run} data-testid="invoke-form">
      <h3>Invoke</h3>
      <textarea
        data-testid="invoke-body"
        rows={4}
        spellcheck={false}
        value={body}
        onInput={(e) => setBody((e.target as HTMLTextAreaElement).value)}
      />
      <div class="row">
        <button type="submit" data-testid="invoke" disabled={busy}>
          {busy ? "Running…" : "Invoke"}
        </button>
        {result && (
          <span class={result.status < 400 ? "ok" : "bad"} data-testid="invoke-status">
            {result.status} · {fmt(result.ms)} ms
          </span>
        )}
      </div>
      {problem && <p class="error">{problem}</p>}
      {result && (
        <pre class="response" data-testid="invoke-response">
          {pretty}
        </pre>
      )}
    </form>
  );
}

function Traffic({ ns, name }: { ns: string; name: string }) {
  const info = usePoll(() => api.versions(ns, name), 3000, [ns, name]);
  const [draft, setDraft] = useState<Record<string, number> | null>(null);
  const [message, setMessage] = useState("");
  if (!info.data) return <section class="card"><h3>Traffic</h3><ErrorLine error={info.error} /></section>;
  const versions = info.data.versions.map((v) => String(v.version));
  const weights = draft ?? Object.fromEntries(versions.map((v) => [v, info.data!.traffic[v] ?? 0]));
  const sum = Object.values(weights).reduce((a, b) => a + b, 0);

  function set(version: string, value: number) {
    const next = { ...weights, [version]: Math.max(0, Math.min(100, Math.round(value))) };
    // With two versions, one slider moves the other: the split always sums to 100.
    if (versions.length === 2) {
      const other = versions.find((v) => v !== version)!;
      next[other] = 100 - next[version];
    }
    setDraft(next);
  }

  async function apply() {
    setMessage("");
    try {
      await api.setTraffic(ns, name, weights);
      setDraft(null);
      setMessage("Traffic updated.");
      info.refresh();
    } catch (err) {
      setMessage(err instanceof ApiError ? err.message : String(err));
    }
  }

  return (
    <section class="card" data-testid="traffic">
      <h3>Traffic</h3>
      <TrafficBar traffic={info.data.traffic} />
      {versions.map((v, i) => (
        <div class="slider" key={v}>
          <label class="version" style={{ color: versionColor(i) }}>
            v{v}
          </label>
          <input
            type="range"
            min={0}
            max={100}
            value={weights[v]}
            data-testid={`weight-range-${v}`}
            onInput={(e) => set(v, Number((e.target as HTMLInputElement).value))}
          />
          <input
            type="number"
            min={0}
            max={100}
            value={weights[v]}
            data-testid={`weight-${v}`}
            onChange={(e) => set(v, Number((e.target as HTMLInputElement).value))}
          />
          %
        </div>
      ))}
      <div class="row">
        <button data-testid="apply-traffic" disabled={draft === null || sum !== 100} onClick={apply}>
          Apply split
        </button>
        <span class={sum === 100 ? "muted" : "bad"}>total {sum}%</span>
        {draft && (
          <button class="ghost small" onClick={() => setDraft(null)}>
            reset
          </button>
        )}
      </div>
      {message && <p class="muted" data-testid="traffic-message">{message}</p>}
    </section>
  );
}

function Workers({ ns, name }: { ns: string; name: string }) {
  const { data } = usePoll(() => api.workers(ns), 2000, [ns]);
  const counts = data?.functions[name];
  return (
    <section class="card" data-testid="workers">
      <h3>Workers</h3>
      {!counts ? (
        <p class="muted">No workers: scaled to zero.</p>
      ) : (
        <table class="plain">
          <thead>
            <tr>
              <th>version</th>
              <th>busy</th>
              <th>idle</th>
              <th>starting</th>
              <th>queued</th>
            </tr>
          </thead>
          <tbody>
            {Object.entries(counts.versions).map(([v, c]) => (
              <tr key={v}>
                <td>v{v}</td>
                <td>{c.busy}</td>
                <td>{c.idle}</td>
                <td>{c.starting}</td>
                <td>{c.queued}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function Recent({ ns, name }: { ns: string; name: string }) {
  const { data, error } = usePoll(
    async () => {
      const [inv, logs] = await Promise.all([api.invocations(ns, name, 20), api.logs(ns, name, 200)]);
      return { invocations: inv.invocations, lines: logs.lines };
    },
    2000,
    [ns, name],
  );
  return (
    <section class="card" data-testid="recent">
      <h3>Recent invocations</h3>
      <ErrorLine error={error} />
      {data && data.invocations.length === 0 && <p class="muted">None yet.</p>}
      {data && data.invocations.length > 0 && (
        <table class="plain recent">
          <thead>
            <tr>
              <th>time</th>
              <th>version</th>
              <th>status</th>
              <th>start</th>
              <th>duration</th>
              <th>log lines</th>
            </tr>
          </thead>
          <tbody>
            {data.invocations.map((i) => (
              <tr key={i.id} data-testid="invocation">
                <td title={i.id}>{time(i.started_at)}</td>
                <td>v{i.version}</td>
                <td class={i.status < 400 ? "ok" : "bad"}>
                  {i.status} {i.code !== "ok" ? i.code : ""}
                </td>
                <td>{i.cold ? <span class="pill cold">cold</span> : "warm"}</td>
                <td>{fmt(i.duration_ms)} ms</td>
                <td class="logs">
                  {data.lines
                    .filter((l) => l.invocation_id === i.id)
                    .map((l, n) => (
                      <div key={n} class={`log ${l.level}`} data-testid="log-line">
                        <span class="level">{l.level}</span> {l.message}
                        {Object.keys(l.fields).length > 0 && (
                          <span class="muted"> {JSON.stringify(l.fields)}</span>
                        )}
                      </div>
                    ))}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
