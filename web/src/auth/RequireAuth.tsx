import type { ReactNode } from "react";
import { Navigate, useLocation } from "react-router";
import type { Scope } from "../api/types";
import { useAuth } from "./context";

/** The page when signed in with the scope; the sign-in page (or a note) otherwise. */
export function RequireAuth({ scope, title, children }: { scope: Scope; title: string; children: ReactNode }) {
  const { state, can } = useAuth();
  const location = useLocation();
  if (state.status === "checking") {
    return (
      <p className="muted" role="status">
        Checking your API key…
      </p>
    );
  }
  if (state.status === "signed-out") {
    return <Navigate to="/signin" replace state={{ from: location.pathname + location.search }} />;
  }
  if (!can(scope)) {
    return (
      <section>
        <h1>{title}</h1>
        <p role="alert" data-testid="scope-missing">
          This page needs an API key with the “{scope}” scope; yours has{" "}
          {state.who.scopes.length ? state.who.scopes.join(", ") : "none"}.
        </p>
      </section>
    );
  }
  return <>{children}</>;
}
