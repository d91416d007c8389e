import { Link, isRouteErrorResponse, useRouteError } from "react-router";

/** What a page that crashed (or failed to load its code) shows instead of a blank screen. */
export function RouteError() {
  const error = useRouteError();
  const text = isRouteErrorResponse(error)
    ? `${error.status} ${error.statusText}`
    : error instanceof Error
      ? error.message
      : "Unknown error";
  return (
    <main id="main" className="route-error">
      <h1>Something went wrong</h1>
      <p role="alert">{text}</p>
      <p>
        <Link to="/" reloadDocument>
          Reload the app
        </Link>
      </p>
    </main>
  );
}
