// The service's error envelope, {"error": {"code", "message", "request_id", "details"}},
// as an exception the pages can show (message) and branch on (status, code).

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly requestId: string | null;
  readonly details: Record<string, unknown> | null;
  /** Seconds to wait before trying again (Retry-After on 429 and 503), when the service said. */
  readonly retryAfterS: number | null;

  constructor(init: {
    status: number;
    code: string;
    message: string;
    requestId?: string | null;
    details?: Record<string, unknown> | null;
    retryAfterS?: number | null;
  }) {
    super(init.message);
    this.name = "ApiError";
    this.status = init.status;
    this.code = init.code;
    this.requestId = init.requestId ?? null;
    this.details = init.details ?? null;
    this.retryAfterS = init.retryAfterS ?? null;
  }
}

/** Seconds from a Retry-After header: delay-seconds or an HTTP date; null when absent or bad. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | null {
  if (value === null || value.trim() === "") return null;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text);
  const at = Date.parse(text);
  if (Number.isNaN(at)) return null;
  return Math.max(0, Math.ceil((at - now) / 1000));
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The ApiError of a failed response, from its body (parsed JSON or null) and headers. */
export function errorFromResponse(
  status: number,
  statusText: string,
  headers: Headers,
  body: unknown,
): ApiError {
  const envelope = isRecord(body) && isRecord(body.error) ? body.error : null;
  const text = (v: unknown): string | null => (typeof v === "string" && v !== "" ? v : null);
  const fallback = `The service answered ${status}${statusText ? ` ${statusText}` : ""}.`;
  return new ApiError({
    status,
    code: text(envelope?.code) ?? text(headers.get("X-Error-Code")) ?? `http_${status}`,
    message: text(envelope?.message) ?? fallback,
    requestId: text(envelope?.request_id) ?? text(headers.get("X-Request-ID")),
    details: envelope && isRecord(envelope.details) ? envelope.details : null,
    retryAfterS: parseRetryAfter(headers.get("Retry-After")),
  });
}

/** A message for anything a request threw: the service's message, or a generic one. */
export function messageOf(error: unknown): string {
  if (error instanceof ApiError) {
    const wait =
      error.retryAfterS !== null && (error.status === 429 || error.status === 503)
        ? ` Try again in ${error.retryAfterS} s.`
        : "";
    return error.message + wait;
  }
  if (error instanceof Error && error.message) return error.message;
  return "Something went wrong.";
}

export function isAbort(error: unknown): boolean {
  return error instanceof DOMException && error.name === "AbortError";
}
