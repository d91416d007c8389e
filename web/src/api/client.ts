// The one place that talks HTTP to the service: every call sends the API key as a bearer
// token, turns an error answer into an ApiError, and reports a 401 (the key no longer
// works) to whoever signs the user out.
import { ApiError, errorFromResponse, isAbort } from "./errors";

export type Query = Record<string, string | number | boolean | null | undefined>;

export interface RequestOptions {
  method?: "GET" | "POST" | "DELETE";
  query?: Query;
  /** A JSON body. */
  json?: unknown;
  /** A multipart body (files and form fields). */
  form?: FormData;
  signal?: AbortSignal;
  /** The Accept header (JSON unless said). */
  accept?: string;
}

export interface ApiClientOptions {
  key: string;
  /** Called once per 401 answer, before the ApiError is thrown. */
  onUnauthorized?: (error: ApiError) => void;
  fetchImpl?: typeof fetch;
  /** Origin-relative by default: the app is served by the service itself. */
  baseUrl?: string;
}

export function buildUrl(baseUrl: string, path: string, query?: Query): string {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value === undefined || value === null || value === "") continue;
    params.append(name, String(value));
  }
  const search = params.toString();
  return `${baseUrl}${path}${search ? `?${search}` : ""}`;
}

async function readBody(response: Response): Promise<unknown> {
  const type = response.headers.get("Content-Type") ?? "";
  if (!type.includes("json")) return null;
  try {
    return await response.json();
  } catch {
    return null;
  }
}

export class ApiClient {
  private readonly key: string;
  private readonly onUnauthorized: ((error: ApiError) => void) | undefined;
  private readonly fetchImpl: typeof fetch;
  private readonly baseUrl: string;

  constructor(options: ApiClientOptions) {
    this.key = options.key;
    this.onUnauthorized = options.onUnauthorized;
    this.fetchImpl = options.fetchImpl ?? ((input, init) => fetch(input, init));
    this.baseUrl = options.baseUrl ?? "";
  }

  /** The raw response of a successful request; an ApiError otherwise. */
  async send(path: string, options: RequestOptions = {}): Promise<Response> {
    const headers = new Headers({
      Authorization: `Bearer ${this.key}`,
      Accept: options.accept ?? "application/json",
    });
    let body: BodyInit | undefined;
    if (options.form !== undefined) {
      body = options.form; // the browser sets the multipart boundary
    } else if (options.json !== undefined) {
      headers.set("Content-Type", "application/json");
      body = JSON.stringify(options.json);
    }
    let response: Response;
    try {
      response = await this.fetchImpl(buildUrl(this.baseUrl, path, options.query), {
        method: options.method ?? (body === undefined ? "GET" : "POST"),
        headers,
        body,
        signal: options.signal,
        credentials: "omit",
        cache: "no-store",
      });
    } catch (error) {
      if (isAbort(error)) throw error;
      throw new ApiError({
        status: 0,
        code: "network_error",
        message: "Could not reach the service; check the connection and try again.",
      });
    }
    if (!response.ok) {
      const error = errorFromResponse(
        response.status,
        response.statusText,
        response.headers,
        await readBody(response),
      );
      if (response.status === 401) this.onUnauthorized?.(error);
      throw error;
    }
    return response;
  }

  async json<T>(path: string, options: RequestOptions = {}): Promise<T> {
    const response = await this.send(path, options);
    return (await response.json()) as T;
  }

  async blob(path: string, options: RequestOptions = {}): Promise<Blob> {
    const response = await this.send(path, { accept: "image/*", ...options });
    return response.blob();
  }
}
