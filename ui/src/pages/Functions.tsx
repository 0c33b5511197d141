import { api, type FunctionInfo, type VersionInfo, type WorkerCounts } from "../api";
import { usePoll } from "../poll";
import { TrafficBar, ago, ErrorLine } from "./common";

type Row = FunctionInfo & { versions: VersionInfo[] | null };

async function load(ns: string) {
  const [{ functions }, workers] = await Promise.all([api.functions(ns), api.workers(ns)]);
  // Versions per function, for the first 50 (the list page is an overview).
  const rows: Row[] = await Promise.all(
    functions.map(async (f, i) =>
      i < 50
        ? { ...f, versions: (await api.versions(ns, f.name).catch(() => null))?.versions ?? null }
        : { ...f, versions: null },
    ),
  );
  return { rows, workers: workers.functions };
}

export function Functions({ ns }: { ns: string }) {
  const { data, error } = usePoll(() => load(ns), 2000, [ns]);
  return (
    <div>
      <h2>
        Functions <span class="muted">in {ns}</span>
      </h2>
      <ErrorLine error={error} />
      {data && data.rows.length === 0 && (
        <p class="card muted">No functions yet: deploy one with `cumulo deploy hello.py`.</p>
      )}
      {data && data.rows.length > 0 && (
        <table class="card" data-testid="functions">
          <thead>
            <tr>
              <th>Function</th>
              <th>Versions</th>
              <th>Traffic split</th>
              <th>Workers</th>
              <th>Created</th>
            </tr>
          </thead>
          <tbody>
            {data.rows.map((f) => (
              <tr key={f.name} data-testid={`function-${f.name}`}>
                <td>
                  <a href={`#/fn/${encodeURIComponent(f.name)}`}>{f.name}</a>
                </td>
                <td>
                  {f.versions
                    ? f.versions.map((v) => (
                        <span class="pill" key={v.version}>
                          v{v.version}
                        </span>
                      ))
                    : "…"}
                </td>
                <td>
                  <TrafficBar traffic={f.traffic} />
                </td>
                <td>
                  <Workers counts={data.workers[f.name]} />
                </td>
                <td class="muted">{ago(f.created_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

function Workers({ counts }: { counts?: WorkerCounts }) {
  if (!counts) return <span class="muted">0 (scaled to zero)</span>;
  return (
    <span>
      <b>{counts.total}</b> <span class="muted">({counts.busy} busy, {counts.idle} idle)</span>
    </span>
  );
}
