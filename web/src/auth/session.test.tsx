import { act, render, screen, waitFor } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { fakeFetch } from "../test/fakeApi";
import { AuthProvider } from "./AuthProvider";
import { useAuth } from "./context";
import { SESSION_KEY, clearKey, loadKey, normaliseKey, saveKey } from "./session";

describe("session key storage", () => {
  it("keeps the key in sessionStorage only", () => {
    saveKey("iiq_abc");
    expect(window.sessionStorage.getItem(SESSION_KEY)).toBe("iiq_abc");
    expect(loadKey()).toBe("iiq_abc");
    expect(window.localStorage.length).toBe(0);
    expect(document.cookie).toBe("");
    clearKey();
    expect(loadKey()).toBeNull();
    expect(window.sessionStorage.getItem(SESSION_KEY)).toBeNull();
  });

  it("normalises what was pasted", () => {
    expect(normaliseKey("  Bearer iiq_abc \n")).toBe("iiq_abc");
    expect(normaliseKey("iiq_x")).toBe("iiq_x");
  });
});

const WHO = { auth_enabled: true, key: { id: "k1", name: "ci", prefix: "iiq_0011" }, scopes: ["classify", "label"] };

function Probe() {
  const auth = useAuth();
  const s = auth.state;
  return (
    <div>
      <span data-testid="status">{s.status}</span>
      <span data-testid="notice">{s.status === "signed-out" ? (s.notice ?? "") : ""}</span>
      <span data-testid="label">{String(auth.can("label"))}</span>
      <span data-testid="admin">{String(auth.can("admin"))}</span>
      <button onClick={() => void auth.signIn("iiq_good")}>in</button>
      <button onClick={() => void auth.signIn("iiq_bad")}>bad</button>
      <button onClick={() => auth.signOut()}>out</button>
      <button
        onClick={() => {
          if (s.status === "signed-in") void s.api.json("/v1/models").catch(() => undefined);
        }}
      >
        call
      </button>
    </div>
  );
}

describe("AuthProvider", () => {
  it("signs in with whoami, stores the key for the tab, and clears it on sign-out", async () => {
    const { fetch, calls } = fakeFetch((call) =>
      call.headers.get("Authorization") === "Bearer iiq_good"
        ? { body: WHO }
        : { status: 401, body: { error: { code: "unauthorized", message: "no", request_id: "r" } } },
    );
    render(
      <AuthProvider fetchImpl={fetch}>
        <Probe />
      </AuthProvider>,
    );
    expect(screen.getByTestId("status")).toHaveTextContent("signed-out");
    await act(async () => screen.getByText("bad").click());
    expect(screen.getByTestId("notice")).toHaveTextContent("The service did not accept this API key.");
    expect(loadKey()).toBeNull();

    await act(async () => screen.getByText("in").click());
    await waitFor(() => expect(screen.getByTestId("status")).toHaveTextContent("signed-in"));
    expect(calls.at(-1)?.url).toBe("/v1/auth/whoami");
    expect(loadKey()).toBe("iiq_good");
    expect(screen.getByTestId("label")).toHaveTextContent("true");
    expect(screen.getByTestId("admin")).toHaveTextContent("false");
    expect(window.localStorage.length).toBe(0);

    await act(async () => screen.getByText("out").click());
    expect(screen.getByTestId("status")).toHaveTextContent("signed-out");
    expect(loadKey()).toBeNull();
  });

  it("signs out with a message when a later call answers 401", async () => {
    let revoked = false;
    const { fetch } = fakeFetch((call) =>
      call.url === "/v1/auth/whoami" && !revoked
        ? { body: WHO }
        : { status: 401, body: { error: { code: "unauthorized", message: "Unknown key.", request_id: "r" } } },
    );
    saveKey("iiq_good"); // a key kept from earlier in this tab is checked on start
    render(
      <AuthProvider fetchImpl={fetch}>
        <Probe />
      </AuthProvider>,
    );
    await waitFor(() => expect(screen.getByTestId("status")).toHaveTextContent("signed-in"));
    revoked = true;
    await act(async () => screen.getByText("call").click());
    await waitFor(() => expect(screen.getByTestId("status")).toHaveTextContent("signed-out"));
    expect(screen.getByTestId("notice")).toHaveTextContent("no longer accepts this API key");
    expect(loadKey()).toBeNull();
  });
});
