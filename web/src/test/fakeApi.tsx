// Test helpers: a fetch that answers from a table of routes, and a signed-in auth context.
import type { ReactNode } from "react";
import { MemoryRouter } from "react-router";
import { ApiClient } from "../api/client";
import type { Scope } from "../api/types";
import { AuthContext, type Auth } from "../auth/context";

export interface Call {
  url: string;
  method: string;
  headers: Headers;
  body: unknown;
}

export type Answer = { status?: number; body?: unknown; headers?: Record<string, string> };

/** A fetch that records every call and answers with `route(call)` (JSON). */
export function fakeFetch(route: (call: Call) => Answer | Promise<Answer>): { fetch: typeof fetch; calls: Call[] } {
  const calls: Call[] = [];
  const impl = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const call: Call = {
      url: String(input),
      method: init?.method ?? "GET",
      headers: new Headers(init?.headers),
      body: init?.body,
    };
    calls.push(call);
    const answer = await route(call);
    return new Response(answer.body === undefined ? null : JSON.stringify(answer.body), {
      status: answer.status ?? 200,
      headers: { "Content-Type": "application/json", ...answer.headers },
    });
  };
  return { fetch: impl as typeof fetch, calls };
}

export function signedIn(api: ApiClient, scopes: Scope[] = ["classify", "label", "admin"]): Auth {
  return {
    state: {
      status: "signed-in",
      key: "iiq_test",
      who: { auth_enabled: true, key: { id: "k1", name: "test", prefix: "iiq_0000" }, scopes },
      api,
    },
    signIn: async () => null,
    signOut: () => undefined,
    can: (scope) => scopes.includes(scope),
  };
}

export function WithAuth({ auth, children }: { auth: Auth; children: ReactNode }) {
  return (
    <AuthContext.Provider value={auth}>
      <MemoryRouter>{children}</MemoryRouter>
    </AuthContext.Provider>
  );
}

export function clientFor(fetchImpl: typeof fetch): ApiClient {
  return new ApiClient({ key: "iiq_test", fetchImpl });
}
