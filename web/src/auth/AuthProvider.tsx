import { useCallback, useEffect, useMemo, useRef, useState, type ReactNode } from "react";
import { whoami } from "../api/auth";
import { ApiClient } from "../api/client";
import { ApiError, isAbort, messageOf } from "../api/errors";
import type { Scope } from "../api/types";
import { AuthContext, type Auth, type AuthState } from "./context";
import { clearKey, loadKey, normaliseKey, saveKey } from "./session";

const EXPIRED = "The service no longer accepts this API key (401). Sign in again.";

function initialState(): AuthState {
  const key = loadKey();
  return key === null ? { status: "signed-out", notice: null } : { status: "checking", key };
}

export function AuthProvider({
  children,
  fetchImpl,
}: {
  children: ReactNode;
  fetchImpl?: typeof fetch;
}) {
  const [state, setState] = useState<AuthState>(initialState);
  // Bumped at every sign-in and sign-out: an answer for an older session changes nothing.
  const generation = useRef(0);

  const signOut = useCallback((notice?: string) => {
    generation.current += 1;
    clearKey();
    setState({ status: "signed-out", notice: notice ?? null });
  }, []);

  const verify = useCallback(
    async (key: string, signal?: AbortSignal): Promise<string | null> => {
      const mine = ++generation.current;
      let live = false; // a 401 signs out only once this key was accepted
      const api = new ApiClient({
        key,
        fetchImpl,
        onUnauthorized: () => {
          if (live && generation.current === mine) signOut(EXPIRED);
        },
      });
      try {
        const who = await whoami(api, signal);
        if (generation.current !== mine) return null;
        live = true;
        saveKey(key);
        setState({ status: "signed-in", key, who, api });
        return null;
      } catch (error) {
        if (isAbort(error)) return null;
        const message =
          error instanceof ApiError && error.status === 401
            ? "The service did not accept this API key."
            : messageOf(error);
        if (generation.current === mine) {
          clearKey();
          setState({ status: "signed-out", notice: message });
        }
        return message;
      }
    },
    [fetchImpl, signOut],
  );

  // A key kept from earlier in this tab is checked once on start.
  const startKey = state.status === "checking" ? state.key : null;
  useEffect(() => {
    if (startKey === null) return;
    const controller = new AbortController();
    void verify(startKey, controller.signal);
    return () => controller.abort();
  }, [startKey, verify]);

  const signIn = useCallback(
    async (text: string): Promise<string | null> => {
      const key = normaliseKey(text);
      if (!key) return "Enter an API key.";
      return verify(key);
    },
    [verify],
  );

  const auth = useMemo<Auth>(
    () => ({
      state,
      signIn,
      signOut,
      can: (scope: Scope) => state.status === "signed-in" && state.who.scopes.includes(scope),
    }),
    [state, signIn, signOut],
  );

  return <AuthContext.Provider value={auth}>{children}</AuthContext.Provider>;
}
