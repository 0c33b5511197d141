import { useEffect, useRef, useState } from "preact/hooks";

export type Polled<T> = { data: T | null; error: Error | null; refresh: () => void };

/** Fetch now and then every `intervalMs` while mounted (and while the tab is visible);
 * a slow answer never overlaps the next request. */
export function usePoll<T>(load: () => Promise<T>, intervalMs: number, deps: unknown[]): Polled<T> {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const kick = useRef<() => void>(() => {});
  useEffect(() => {
    let alive = true;
    let timer: number | undefined;
    let running = false;
    const tick = async () => {
      if (running) return;
      running = true;
      window.clearTimeout(timer);
      try {
        const value = await load();
        if (alive) {
          setData(value);
          setError(null);
        }
      } catch (e) {
        if (alive) setError(e as Error);
      } finally {
        running = false;
        if (alive) timer = window.setTimeout(tick, document.hidden ? intervalMs * 5 : intervalMs);
      }
    };
    kick.current = () => void tick();
    setData(null);
    void tick();
    return () => {
      alive = false;
      window.clearTimeout(timer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);
  return { data, error, refresh: () => kick.current() };
}
