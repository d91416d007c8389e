import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";
import type { ClassifyResult } from "../api/types";
import type { ClassifyJob } from "../lib/classifyJobs";
import { clientFor, fakeFetch, signedIn, WithAuth } from "../test/fakeApi";
import { ResultCard } from "./ResultCard";

function job(stored: boolean): ClassifyJob {
  const result: ClassifyResult = {
    model: { name: "digits", version: "v1" },
    predictions: [{ label: "7", score: 0.9 }],
    attributes: {},
    image: { sha256: "b".repeat(64), width: 8, height: 8, format: "PNG", bytes: 125, ...(stored ? { id: "b".repeat(64), stored: true } : {}) },
    batch_size: 1,
    cached: false,
    timing_ms: { decode: 1, preprocess: 1, queue: 1, inference: 1, total: 4 },
  };
  return { id: 1, file: new File(["x"], "seven.png", { type: "image/png" }), status: "done", model: undefined, store: stored, result };
}

const CATEGORIES = { model: { name: "digits", version: "v1" }, labels: ["1", "7"], attributes: {} };

describe("ResultCard", () => {
  it("explains: draws the heat map over the preview and names the target", async () => {
    const { fetch, calls } = fakeFetch((call) =>
      call.url === "/v1/explain"
        ? {
            body: {
              model: { name: "digits", version: "v1" },
              head: "label",
              target: { label: "7", score: 0.93 },
              method: "grad-cam",
              heatmap: { width: 8, height: 8, png: "iVBORw0KGgo=", grid: [[0.5]] },
              timing_ms: 12,
            },
          }
        : { body: CATEGORIES },
    );
    render(
      <WithAuth auth={signedIn(clientFor(fetch))}>
        <ResultCard job={job(true)} onRemove={() => undefined} />
      </WithAuth>,
    );
    await userEvent.click(screen.getByTestId("explain-toggle"));
    const overlay = await screen.findByTestId("explain-overlay");
    expect(overlay).toHaveAttribute("src", "data:image/png;base64,iVBORw0KGgo=");
    expect(screen.getByTestId("explain-target")).toHaveTextContent("“7”");
    const call = calls.find((c) => c.url === "/v1/explain");
    expect((call?.body as FormData).get("model")).toBe("digits:v1");
    await userEvent.click(screen.getByTestId("explain-toggle"));
    expect(screen.queryByTestId("explain-overlay")).toBeNull();
  });

  it("confirms the top label with one click", async () => {
    const { fetch, calls } = fakeFetch((call) =>
      call.url.endsWith("/labels")
        ? { status: 201, body: { id: 1, image: "b", label: "7", attributes: {}, source: "user", created_by: "k", created_at: "2026-01-01T00:00:00Z" } }
        : { body: CATEGORIES },
    );
    render(
      <WithAuth auth={signedIn(clientFor(fetch))}>
        <ResultCard job={job(true)} onRemove={() => undefined} />
      </WithAuth>,
    );
    await userEvent.click(screen.getByTestId("feedback-confirm"));
    expect(await screen.findByText("Saved label “7”.")).toBeInTheDocument();
    const post = calls.find((c) => c.url.endsWith("/labels"));
    expect(post?.url).toBe(`/v1/images/${"b".repeat(64)}/labels`);
    expect(post?.body).toBe('{"label":"7"}');
  });

  it("sends a new label with new_label", async () => {
    const { fetch, calls } = fakeFetch((call) =>
      call.url.endsWith("/labels")
        ? { status: 201, body: { id: 1, image: "b", label: "seven", attributes: {}, source: "user", created_by: "k", created_at: "2026-01-01T00:00:00Z" } }
        : { body: CATEGORIES },
    );
    render(
      <WithAuth auth={signedIn(clientFor(fetch))}>
        <ResultCard job={job(true)} onRemove={() => undefined} />
      </WithAuth>,
    );
    await userEvent.click(screen.getByTestId("feedback-new-label"));
    await userEvent.type(screen.getByTestId("feedback-new-label-text"), "seven");
    await userEvent.click(screen.getByTestId("feedback-submit"));
    await screen.findByText("Saved label “seven”.");
    expect(calls.find((c) => c.url.endsWith("/labels"))?.body).toBe('{"label":"seven","new_label":true}');
  });

  it("an image that was not stored cannot get feedback, and says why", () => {
    const { fetch } = fakeFetch(() => ({ body: CATEGORIES }));
    render(
      <WithAuth auth={signedIn(clientFor(fetch))}>
        <ResultCard job={job(false)} onRemove={() => undefined} />
      </WithAuth>,
    );
    expect(screen.getByTestId("feedback-confirm")).toBeDisabled();
    expect(screen.getByTestId("feedback-disabled-reason")).toHaveTextContent("Store the image");
  });

  it("no feedback controls without the label scope", () => {
    const { fetch } = fakeFetch(() => ({ body: CATEGORIES }));
    render(
      <WithAuth auth={signedIn(clientFor(fetch), ["classify"])}>
        <ResultCard job={job(true)} onRemove={() => undefined} />
      </WithAuth>,
    );
    expect(screen.queryByTestId("feedback-confirm")).toBeNull();
  });
});
