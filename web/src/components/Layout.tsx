import { useState } from "react";
import { NavLink, Outlet, useLocation } from "react-router";
import type { Scope } from "../api/types";
import { useAuth } from "../auth/context";

const LINKS: { to: string; label: string; scope: Scope; testId: string }[] = [
  { to: "/", label: "Classify", scope: "classify", testId: "nav-classify" },
  { to: "/review", label: "Review", scope: "label", testId: "nav-review" },
  { to: "/images", label: "Images", scope: "label", testId: "nav-images" },
  { to: "/models", label: "Models", scope: "classify", testId: "nav-models" },
  { to: "/stats", label: "Stats", scope: "label", testId: "nav-stats" },
];

export function Layout() {
  const { state, can, signOut } = useAuth();
  const location = useLocation();
  // The menu (narrow screens) closes whenever the page changes.
  const [openAt, setOpenAt] = useState<string | null>(null);
  const open = openAt === location.pathname;
  const signedIn = state.status === "signed-in";
  const who = signedIn ? state.who : null;
  const keyName = who?.key ? `${who.key.name} (${who.key.prefix}…)` : who ? "auth off" : "";

  return (
    <>
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <header className="site-header">
        <div className="brand">
          <span className="brand-mark" aria-hidden="true" />
          ImageIQ
        </div>
        {signedIn && (
          <>
            <button
              type="button"
              className="nav-toggle"
              aria-expanded={open}
              aria-controls="site-nav"
              onClick={() => setOpenAt(open ? null : location.pathname)}
              data-testid="nav-toggle"
            >
              Menu
            </button>
            <nav id="site-nav" className={`site-nav${open ? " open" : ""}`} aria-label="Main">
              <ul>
                {LINKS.filter((l) => can(l.scope)).map((l) => (
                  <li key={l.to}>
                    <NavLink to={l.to} end={l.to === "/"} data-testid={l.testId}>
                      {l.label}
                    </NavLink>
                  </li>
                ))}
              </ul>
              <div className="session">
                <span className="muted small" data-testid="whoami">
                  {keyName}
                </span>
                <button type="button" onClick={() => signOut()} data-testid="signout">
                  Sign out
                </button>
              </div>
            </nav>
          </>
        )}
      </header>
      <main id="main" tabIndex={-1}>
        <Outlet />
      </main>
    </>
  );
}
