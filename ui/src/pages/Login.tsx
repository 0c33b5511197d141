import { useState } from "preact/hooks";
import { api, ApiError, type Session } from "../api";

/** Paste an API key; the gateway turns it into an HttpOnly session cookie. The key is
 * sent once, in the login request body, and is not kept anywhere in the page. */
export function Login({ onLogin }: { onLogin: (s: Session) => void }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);

  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError("");
    try {
      await api.login(key.trim());
      setKey("");
      try {
        onLogin(await api.session());
      } catch {
        setError(
          "Logged in, but the browser did not keep the session cookie: it is Secure, so " +
            "open the dashboard over HTTPS (cumulo up --tls) or on localhost.",
        );
      }
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div class="login">
      <form class="card" onSubmit={submit} autocomplete="off">
        <h1>☁ cumulo</h1>
        <p class="muted">Paste an API key to open the dashboard.</p>
        <input
          type="password"
          name="api-key"
          data-testid="api-key"
          placeholder="cmo_…"
          value={key}
          autocomplete="off"
          spellcheck={false}
          onInput={(e) => setKey((e.target as HTMLInputElement).value)}
        />
        <button type="submit" data-testid="login" disabled={busy || !key.trim()}>
          {busy ? "Checking…" : "Log in"}
        </button>
        {error && (
          <p class="error" data-testid="login-error" role="alert">
            {error}
          </p>
        )}
        <p class="muted small">
          The key stays on the server: the browser keeps only an HttpOnly session cookie (12 h).
        </p>
      </form>
    </div>
  );
}
