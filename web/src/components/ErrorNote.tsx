import { ApiError, messageOf } from "../api/errors";

/** An error as text: the service's message, its code and request id (for a bug report). */
export function ErrorNote({ error, testId }: { error: unknown; testId?: string }) {
  const meta =
    error instanceof ApiError
      ? [error.status ? `${error.status} ${error.code}` : error.code, error.requestId && `request ${error.requestId}`]
          .filter(Boolean)
          .join(" · ")
      : "";
  return (
    <div className="error-note" role="alert" data-testid={testId}>
      <p>{messageOf(error)}</p>
      {meta && <p className="muted small">{meta}</p>}
    </div>
  );
}

export function Loading({ what }: { what: string }) {
  return (
    <p className="muted" role="status">
      Loading {what}…
    </p>
  );
}
