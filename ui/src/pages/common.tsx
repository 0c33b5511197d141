const COLORS = ["#4f8cff", "#f5a524", "#17c964", "#f31260", "#9353d3", "#06b7db"];

export function versionColor(i: number): string {
  return COLORS[i % COLORS.length];
}

/** A function's traffic split as one bar: a segment per version, labelled with its share. */
export function TrafficBar({ traffic }: { traffic: Record<string, number> }) {
  const entries = Object.entries(traffic).sort((a, b) => Number(a[0]) - Number(b[0]));
  if (entries.length === 0) return <span class="muted">no traffic</span>;
  return (
    <div class="traffic" data-testid="traffic-bar">
      {entries.map(([version, weight], i) => (
        <span
          key={version}
          class="segment"
          // Preact sets styles through the CSSOM, which the page's CSP allows.
          style={{ flexGrow: weight, background: versionColor(i) }}
          title={`v${version}: ${weight}%`}
        >
          v{version} {weight}%
        </span>
      ))}
    </div>
  );
}

export function ErrorLine({ error }: { error: Error | null }) {
  return error ? (
    <p class="error" role="alert">
      {error.message}
    </p>
  ) : null;
}

export function ago(epoch: number): string {
  const s = Math.max(0, Date.now() / 1000 - epoch);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(epoch * 1000).toLocaleDateString();
}

export function time(epoch: number): string {
  return new Date(epoch * 1000).toLocaleTimeString([], { hour12: false });
}
