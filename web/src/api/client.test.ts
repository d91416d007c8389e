import { describe, expect, it, vi } from "vitest";
import { fakeFetch } from "../test/fakeApi";
import { ApiClient, buildUrl } from "./client";
import { ApiError, messageOf, parseRetryAfter } from "./errors";

describe("ApiClient", () => {
  it("sends the key as a bearer token, and never as a cookie", async () => {
    const { fetch, calls } = fakeFetch(() => ({ body: { ok: true } }));
    const api = new ApiClient({ key: "iiq_abc", fetchImpl: fetch });
    await expect(api.json("/v1/models")).resolves.toEqual({ ok: true });
    expect(calls[0]?.headers.get("Authorization")).toBe("Bearer iiq_abc");
    expect(calls[0]?.url).toBe("/v1/models");
    expect(calls[0]?.url).not.toContain("iiq_abc");
  });

  it("sends JSON bodies with their content type, and forms as they are", async () => {
    const { fetch, calls } = fakeFetch(() => ({ status: 201, body: {} }));
    const api = new ApiClient({ key: "k", fetchImpl: fetch });
    await api.json("/v1/images/x/labels", { method: "POST", json: { label: "7" } });
    expect(calls[0]?.method).toBe("POST");
    expect(calls[0]?.headers.get("Content-Type")).toBe("application/json");
    expect(calls[0]?.body).toBe('{"label":"7"}');
    const form = new FormData();
    form.append("store", "true");
    await api.json("/v1/classify", { form });
    expect(calls[1]?.method).toBe("POST");
    expect(calls[1]?.body).toBe(form);
    expect(calls[1]?.headers.get("Content-Type")).toBeNull(); // the browser adds the boundary
  });

  it("builds query strings without empty values", () => {
    expect(buildUrl("", "/v1/images", { label: "a b", model: undefined, offset: 0, source: "" })).toBe(
      "/v1/images?label=a+b&offset=0",
    );
  });

  it("turns the error envelope into an ApiError", async () => {
    const { fetch } = fakeFetch(() => ({
      status: 415,
      body: {
        error: {
          code: "unsupported_image_format",
          message: "The upload is not an image in a supported format.",
          request_id: "req-1",
          details: { field: "image" },
        },
      },
    }));
    const api = new ApiClient({ key: "k", fetchImpl: fetch });
    const error = await api.json("/v1/classify").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    const e = error as ApiError;
    expect(e.status).toBe(415);
    expect(e.code).toBe("unsupported_image_format");
    expect(e.message).toBe("The upload is not an image in a supported format.");
    expect(e.requestId).toBe("req-1");
    expect(e.details).toEqual({ field: "image" });
    expect(e.retryAfterS).toBeNull();
  });

  it("falls back on headers and the status when the body is not the envelope", async () => {
    const fetchImpl = (async () =>
      new Response("<html>Bad gateway</html>", {
        status: 502,
        statusText: "Bad Gateway",
        headers: { "Content-Type": "text/html", "X-Request-ID": "r-9" },
      })) as typeof fetch;
    const api = new ApiClient({ key: "k", fetchImpl });
    const e = (await api.json("/v1/stats").catch((x: unknown) => x)) as ApiError;
    expect(e.status).toBe(502);
    expect(e.code).toBe("http_502");
    expect(e.message).toBe("The service answered 502 Bad Gateway.");
    expect(e.requestId).toBe("r-9");
  });

  it("reports a 401 to onUnauthorized, then throws", async () => {
    const { fetch } = fakeFetch(() => ({
      status: 401,
      body: { error: { code: "unauthorized", message: "Missing or unknown API key.", request_id: "r" } },
    }));
    const onUnauthorized = vi.fn();
    const api = new ApiClient({ key: "k", fetchImpl: fetch, onUnauthorized });
    await expect(api.json("/v1/models")).rejects.toMatchObject({ status: 401, code: "unauthorized" });
    expect(onUnauthorized).toHaveBeenCalledTimes(1);
  });

  it("does not sign out on 403", async () => {
    const { fetch } = fakeFetch(() => ({
      status: 403,
      body: { error: { code: "insufficient_scope", message: "This API key lacks the 'admin' scope." } },
    }));
    const onUnauthorized = vi.fn();
    const api = new ApiClient({ key: "k", fetchImpl: fetch, onUnauthorized });
    await expect(api.json("/v1/admin/rollouts")).rejects.toMatchObject({ status: 403 });
    expect(onUnauthorized).not.toHaveBeenCalled();
  });

  it("reads Retry-After on 429", async () => {
    const { fetch } = fakeFetch(() => ({
      status: 429,
      headers: { "Retry-After": "7" },
      body: { error: { code: "rate_limited", message: "Rate limit exceeded.", request_id: "r" } },
    }));
    const api = new ApiClient({ key: "k", fetchImpl: fetch });
    const e = (await api.json("/v1/classify").catch((x: unknown) => x)) as ApiError;
    expect(e.code).toBe("rate_limited");
    expect(e.retryAfterS).toBe(7);
    expect(messageOf(e)).toBe("Rate limit exceeded. Try again in 7 s.");
  });

  it("says when the service cannot be reached", async () => {
    const fetchImpl = (async () => {
      throw new TypeError("Failed to fetch");
    }) as typeof fetch;
    const api = new ApiClient({ key: "k", fetchImpl });
    await expect(api.json("/v1/models")).rejects.toMatchObject({ status: 0, code: "network_error" });
  });

  it("lets an abort through as it is", async () => {
    const fetchImpl = (async () => {
      throw new DOMException("aborted", "AbortError");
    }) as typeof fetch;
    const api = new ApiClient({ key: "k", fetchImpl });
    await expect(api.json("/v1/models")).rejects.toMatchObject({ name: "AbortError" });
  });
});

describe("parseRetryAfter", () => {
  it("reads seconds and HTTP dates", () => {
    expect(parseRetryAfter("3")).toBe(3);
    expect(parseRetryAfter(null)).toBeNull();
    expect(parseRetryAfter("soon")).toBeNull();
    const now = Date.parse("2026-01-01T00:00:00Z");
    expect(parseRetryAfter("Thu, 01 Jan 2026 00:00:30 GMT", now)).toBe(30);
    expect(parseRetryAfter("Wed, 31 Dec 2025 00:00:00 GMT", now)).toBe(0);
  });
});
