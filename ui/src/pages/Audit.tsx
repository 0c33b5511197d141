import { useEffect, useState } from "preact/hooks";
import { api, type AuditEvent } from "../api";
import { usePoll } from "../poll";
import { ErrorLine } from "./common";

/** The newest audit events (polled), and older pages on demand. */
export function AuditPage({ ns, platform }: { ns: string; platform: boolean }) {
  const [chain, setChain] = useState(ns);
  useEffect(() => setChain(ns), [ns]);
  const head = usePoll(() => api.audit(chain), 3000, [chain]);
  const [older, setOlder] = useState<AuditEvent[]>([]);
  const [next, setNext] = useState<number | null>(null);
  useEffect(() => {
    setOlder([]);
    setNext(null);
  }, [chain]);

  const newest = head.data?.events ?? [];
  const cursor = older.length ? next : (head.data?.next_before ?? null);
  const seen = new Set(newest.map((e) => e.seq));
  const events = [...newest, ...older.filter((e) => !seen.has(e.seq))];

  async function more() {
    if (cursor == null) return;
    const page = await api.audit(chain, cursor);
    setOlder([...older, ...page.events]);
    setNext(page.next_before);
  }

  return (
    <div>
      <h2>
        Audit log <span class="muted">of {chain === "*" ? "the platform" : chain}</span>
      </h2>
      {platform && (
        <div class="toolbar">
          <button class={chain === ns ? "small on" : "small ghost"} onClick={() => setChain(ns)}>
            namespace {ns}
          </button>
          <button class={chain === "*" ? "small on" : "small ghost"} onClick={() => setChain("*")}>
            platform (auth failures, platform keys)
          </button>
        </div>
      )}
      <ErrorLine error={head.error} />
      {head.data && events.length === 0 && <p class="card muted">No events yet.</p>}
      {events.length > 0 && (
        <table class="card" data-testid="audit">
          <thead>
            <tr>
              <th>#</th>
              <th>time</th>
              <th>actor</th>
              <th>action</th>
              <th>result</th>
              <th>source</th>
              <th>details</th>
            </tr>
          </thead>
          <tbody>
            {events.map((e) => (
              <tr key={e.seq} data-testid="audit-event">
                <td class="muted">{e.seq}</td>
                <td>{new Date(e.ts * 1000).toLocaleString()}</td>
                <td>
                  <code>{e.actor}</code>
                </td>
                <td>{e.action}</td>
                <td class={e.result === "ok" ? "ok" : "bad"}>{e.result}</td>
                <td class="muted">{e.source}</td>
                <td class="muted small">{Object.keys(e.details).length ? JSON.stringify(e.details) : ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {cursor != null && (
        <button class="ghost" onClick={more}>
          Older events
        </button>
      )}
    </div>
  );
}
