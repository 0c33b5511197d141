import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { api, onUnauthorized, type Session } from "./api";
import { Login } from "./pages/Login";
import { Functions } from "./pages/Functions";
import { FunctionPage } from "./pages/FunctionPage";
import { UsagePage } from "./pages/Usage";
import { AuditPage } from "./pages/Audit";
import "./style.css";

type Route = { page: "functions" | "function" | "usage" | "audit"; name?: string };

function parse(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "fn" && parts[1]) return { page: "function", name: parts[1] };
  if (parts[0] === "usage") return { page: "usage" };
  if (parts[0] === "audit") return { page: "audit" };
  return { page: "functions" };
}

function useRoute(): Route {
  const [route, setRoute] = useState(parse(location.hash));
  useEffect(() => {
    const changed = () => setRoute(parse(location.hash));
    window.addEventListener("hashchange", changed);
    return () => window.removeEventListener("hashchange", changed);
  }, []);
  return route;
}

function App() {
  // undefined: still asking the gateway; null: not logged in.
  const [session, setSession] = useState<Session | null | undefined>(undefined);
  const [namespace, setNamespace] = useState("default");
  const route = useRoute();

  useEffect(() => {
    onUnauthorized(() => setSession(null));
    api.session().then(start, () => setSession(null));
  }, []);

  function start(s: Session) {
    setSession(s);
    setNamespace(s.namespace === "*" ? "default" : s.namespace);
  }

  if (session === undefined) return <div class="loading">Loading…</div>;
  if (session === null) return <Login onLogin={start} />;

  const link = (href: string, label: string, active: boolean) => (
    <a href={href} class={active ? "active" : ""}>
      {label}
    </a>
  );
  return (
    <div class="shell">
      <header class="top">
        <a class="brand" href="#/">
          ☁ cumulo
        </a>
        <nav>
          {link("#/", "Functions", route.page === "functions" || route.page === "function")}
          {link("#/usage", "Usage & cost", route.page === "usage")}
          {link("#/audit", "Audit log", route.page === "audit")}
        </nav>
        <div class="who">
          <label>
            namespace{" "}
            {session.namespace === "*" ? (
              <input
                data-testid="namespace"
                value={namespace}
                onChange={(e) => setNamespace((e.target as HTMLInputElement).value.trim() || "default")}
              />
            ) : (
              <b>{namespace}</b>
            )}
          </label>
          <span class="key" title={session.scopes.join(", ")}>
            key {session.key_id}
          </span>
          <button
            class="ghost"
            data-testid="logout"
            onClick={() => api.logout().finally(() => setSession(null))}
          >
            Log out
          </button>
        </div>
      </header>
      <main>
        {route.page === "functions" && <Functions ns={namespace} />}
        {route.page === "function" && route.name && <FunctionPage ns={namespace} name={route.name} />}
        {route.page === "usage" && <UsagePage ns={namespace} />}
        {route.page === "audit" && <AuditPage ns={namespace} platform={session.namespace === "*"} />}
      </main>
    </div>
  );
}

render(<App />, document.getElementById("app")!);
