import { useId, useRef, useState, type FormEvent } from "react";
import { Navigate, useLocation } from "react-router";
import { useAuth } from "../auth/context";
import { usePageTitle } from "../lib/usePageTitle";

export function SignInPage() {
  usePageTitle("Sign in");
  const { state, signIn } = useAuth();
  const location = useLocation();
  const inputId = useId();
  const helpId = useId();
  const input = useRef<HTMLInputElement>(null);
  const [busy, setBusy] = useState(false);
  const from = (location.state as { from?: string } | null)?.from;
  const target = from && from.startsWith("/") && !from.startsWith("//") ? from : "/";

  if (state.status === "signed-in") return <Navigate to={target} replace />;

  const submit = async (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const value = input.current?.value ?? "";
    setBusy(true);
    const error = await signIn(value);
    setBusy(false);
    if (error !== null) input.current?.focus();
    else if (input.current) input.current.value = "";
  };

  const notice = state.status === "signed-out" ? state.notice : null;
  return (
    <section className="signin">
      <h1>Sign in</h1>
      <form onSubmit={submit} className="card stack" noValidate>
        <label htmlFor={inputId}>API key</label>
        <input
          id={inputId}
          ref={input}
          name="api-key"
          type="password"
          autoComplete="off"
          spellCheck={false}
          placeholder="iiq_…"
          aria-describedby={helpId}
          required
          data-testid="signin-key"
        />
        <p id={helpId} className="muted small">
          Your key stays in this browser tab only (session storage) and goes when you sign out
          or close the tab.
        </p>
        <button type="submit" className="primary" disabled={busy || state.status === "checking"} data-testid="signin-submit">
          {busy || state.status === "checking" ? "Checking…" : "Sign in"}
        </button>
        {notice && (
          <p className="error-note" role="alert" data-testid="signin-notice">
            {notice}
          </p>
        )}
      </form>
    </section>
  );
}
