import { api, ApiError, type Usage, type UsageRow } from "../api";
import { usePoll } from "../poll";
import { ErrorLine } from "./common";

const NUMBER = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });

export function UsagePage({ ns }: { ns: string }) {
  const { data, error } = usePoll(() => api.usage(ns), 5000, [ns]);
  const missing = error instanceof ApiError && error.status === 404;
  return (
    <div>
      <h2>
        Usage and cost <span class="muted">in {ns}</span>
      </h2>
      {missing ? (
        <p class="card muted" data-testid="usage-unavailable">
          Usage unavailable: this gateway has no metering (GET /v1/usage answered 404).
        </p>
      ) : (
        <ErrorLine error={error} />
      )}
      {data && <UsageTable usage={data} />}
    </div>
  );
}

function UsageTable({ usage }: { usage: Usage }) {
  const money = new Intl.NumberFormat(undefined, {
    style: "currency",
    currency: usage.currency || "USD",
    maximumFractionDigits: 6,
  });
  const hourly = usage.rows.some((r) => r.hour);
  const row = (r: Partial<UsageRow>, key: string, label?: string) => (
    <tr key={key} class={label ? "total" : ""}>
      <td>{label ?? r.function}</td>
      {hourly && <td>{label ? "" : r.hour}</td>}
      <td>{NUMBER.format(r.invocations ?? 0)}</td>
      <td>{NUMBER.format(r.errors ?? 0)}</td>
      <td>{NUMBER.format(r.gb_seconds ?? 0)}</td>
      <td>{NUMBER.format(r.cpu_seconds ?? 0)}</td>
      <td>{bytes(r.bytes_in ?? 0)}</td>
      <td>{bytes(r.bytes_out ?? 0)}</td>
      <td>{money.format(r.cost ?? 0)}</td>
    </tr>
  );
  return (
    <>
      <p class="muted">
        From {when(usage.since)} to {when(usage.until)}, by {usage.by}.
      </p>
      <table class="card" data-testid="usage">
        <thead>
          <tr>
            <th>function</th>
            {hourly && <th>hour</th>}
            <th>invocations</th>
            <th>errors</th>
            <th>GB-seconds</th>
            <th>CPU seconds</th>
            <th>bytes in</th>
            <th>bytes out</th>
            <th>cost</th>
          </tr>
        </thead>
        <tbody>
          {usage.rows.map((r, i) => row(r, String(i)))}
          {row(usage.total, "total", "total")}
        </tbody>
      </table>
      {Object.keys(usage.prices ?? {}).length > 0 && (
        <p class="muted small">
          Prices:{" "}
          {Object.entries(usage.prices)
            .map(([k, v]) => `${k} ${v}`)
            .join(" · ")}
        </p>
      )}
    </>
  );
}

function when(v: string | number): string {
  const d = typeof v === "number" ? new Date(v * 1000) : new Date(v);
  return isNaN(d.getTime()) ? String(v) : d.toLocaleString();
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}
