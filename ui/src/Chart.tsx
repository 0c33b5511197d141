import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export type Line = { label: string; color: string; fill?: string; values: (number | null)[] };

type Props = {
  title: string;
  unit: string;
  times: number[];
  lines: Line[];
  testid: string;
  height?: number;
};

/** A live time-series chart: created once, then fed new data on every poll (no redraw of
 * the DOM around it), resized with its container. */
export function Chart({ title, unit, times, lines, testid, height = 180 }: Props) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const labels = lines.map((l) => l.label).join("|");

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const options: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: { x: { time: true }, y: { range: (_u, min, max) => [0, Math.max(max, min + 1)] } },
      axes: [
        { stroke: "#8a94a6", grid: { stroke: "#2a3142" }, ticks: { stroke: "#2a3142" } },
        {
          stroke: "#8a94a6",
          grid: { stroke: "#2a3142" },
          ticks: { stroke: "#2a3142" },
          size: 56,
          values: (_u, ticks) => ticks.map((v) => `${fmt(v)}${unit}`),
        },
      ],
      series: [
        {},
        ...lines.map((l) => ({
          label: l.label,
          stroke: l.color,
          fill: l.fill,
          width: 2,
          spanGaps: false,
          points: { show: false },
          value: (_u: uPlot, v: number | null) => (v == null ? "–" : `${fmt(v)}${unit}`),
        })),
      ],
    };
    const u = new uPlot(options, [times, ...lines.map((l) => l.values)] as uPlot.AlignedData, el);
    plot.current = u;
    const resize = new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
    // Rebuilt only when the set of lines changes; data flows in below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [labels, unit, height]);

  useEffect(() => {
    plot.current?.setData([times, ...lines.map((l) => l.values)] as uPlot.AlignedData);
  }, [times, lines]);

  return (
    <section class="card chart" data-testid={testid}>
      <h3>{title}</h3>
      <div ref={box} class="plot" />
    </section>
  );
}

export function fmt(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1000) return `${(v / 1000).toFixed(a >= 10000 ? 0 : 1)}k`;
  if (a >= 10) return v.toFixed(0);
  if (a >= 1) return v.toFixed(1).replace(/\.0$/, "");
  return v.toFixed(2);
}
