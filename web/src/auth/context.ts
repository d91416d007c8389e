import { createContext, useContext } from "react";
import type { ApiClient } from "../api/client";
import type { Scope, WhoAmI } from "../api/types";

export type AuthState =
  | { status: "signed-out"; notice: string | null }
  | { status: "checking"; key: string }
  | { status: "signed-in"; key: string; who: WhoAmI; api: ApiClient };

export interface Auth {
  state: AuthState;
  /** Checks the key with the service; resolves to an error message, or null once signed in. */
  signIn: (key: string) => Promise<string | null>;
  signOut: (notice?: string) => void;
  can: (scope: Scope) => boolean;
}

export const AuthContext = createContext<Auth | null>(null);

export function useAuth(): Auth {
  const auth = useContext(AuthContext);
  if (auth === null) throw new Error("useAuth outside <AuthProvider>");
  return auth;
}

/** The signed-in user's API client (pages under <RequireAuth> only). */
export function useApi(): ApiClient {
  const { state } = useAuth();
  if (state.status !== "signed-in") throw new Error("useApi while not signed in");
  return state.api;
}
