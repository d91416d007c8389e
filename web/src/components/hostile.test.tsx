import { render, screen, waitFor } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import type { ClassifyResult } from "../api/types";
import type { ClassifyJob } from "../lib/classifyJobs";
import { clientFor, fakeFetch, signedIn, WithAuth } from "../test/fakeApi";
import { ErrorNote } from "./ErrorNote";
import { ApiError } from "../api/errors";
import { FlatTable } from "./FlatTable";
import { ResultCard } from "./ResultCard";

const HOSTILE = "<img src=x onerror=alert(1)>";

function result(): ClassifyResult {
  return {
    model: { name: HOSTILE, version: "v1" },
    predictions: [
      { label: HOSTILE, score: 0.9 },
      { label: "<script>alert(2)</script>", score: 0.1 },
    ],
    attributes: { [HOSTILE]: { label: HOSTILE, score: 0.8 } },
    image: { sha256: "a".repeat(64), id: "a".repeat(64), stored: true, width: 8, height: 8, format: "PNG", bytes: 125 },
    batch_size: 1,
    cached: false,
    timing_ms: { decode: 1, preprocess: 1, queue: 1, inference: 1, total: 4 },
  };
}

/** No element the hostile text could have made: only the preview image (a blob: URL). */
function expectNoInjectedElements(container: HTMLElement) {
  for (const img of Array.from(container.querySelectorAll("img"))) {
    expect(img.getAttribute("src")).toMatch(/^blob:/);
    expect(img.hasAttribute("onerror")).toBe(false);
  }
  expect(container.querySelector("script")).toBeNull();
  expect(container.querySelector("[onerror]")).toBeNull();
}

describe("user-supplied text is rendered as text", () => {
  it("a hostile label, file name and model name in a result card", async () => {
    const { fetch } = fakeFetch((call) =>
      call.url.startsWith("/v1/categories")
        ? { body: { model: { name: "m", version: "v1" }, labels: [HOSTILE, "ok"], attributes: { [HOSTILE]: [HOSTILE] } } }
        : { status: 404, body: {} },
    );
    const job: ClassifyJob = {
      id: 1,
      file: new File(["x"], `${HOSTILE}.png`, { type: "image/png" }),
      status: "done",
      model: undefined,
      store: true,
      result: result(),
    };
    const { container } = render(
      <WithAuth auth={signedIn(clientFor(fetch))}>
        <ResultCard job={job} onRemove={() => undefined} />
      </WithAuth>,
    );
    expect(screen.getByTestId("result-top-label")).toHaveTextContent(HOSTILE);
    expect(screen.getByTestId("result-card")).toHaveAttribute("data-filename", `${HOSTILE}.png`);
    expect(screen.getAllByText("<script>alert(2)</script>").length).toBeGreaterThan(0);
    expect(screen.getByTestId("feedback-confirm")).toHaveTextContent(`Confirm “${HOSTILE}”`);
    await waitFor(() => expect(screen.getAllByRole("option", { name: HOSTILE }).length).toBeGreaterThan(0));
    expectNoInjectedElements(container);
  });

  it("a hostile error message", () => {
    const error = new ApiError({ status: 422, code: "invalid_parameter", message: HOSTILE, requestId: HOSTILE });
    const { container } = render(<ErrorNote error={error} testId="result-error" />);
    expect(screen.getByTestId("result-error")).toHaveTextContent(HOSTILE);
    expect(container.querySelector("img")).toBeNull();
  });

  it("hostile keys and values in a generic report", () => {
    const { container } = render(<FlatTable value={{ [HOSTILE]: HOSTILE }} caption="Report" />);
    expect(screen.getAllByText(HOSTILE)).toHaveLength(2);
    expect(container.querySelector("img")).toBeNull();
  });
});
