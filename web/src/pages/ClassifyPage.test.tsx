import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";
import { clientFor, fakeFetch, signedIn, WithAuth } from "../test/fakeApi";
import { ClassifyPage } from "./ClassifyPage";

const MODELS = {
  active: "digits:v2",
  ready: true,
  models: [
    { name: "digits", version: "v2", requested: "digits:latest", active: true, state: "ready", architecture: "resnet18", labels_count: 10, attributes: {}, input_size: 32, metrics: {}, created_at: "2026-01-01T00:00:00Z", batching: {} },
  ],
  unavailable: {},
};

describe("ClassifyPage", () => {
  it("sends each file on its own; a non-image gets its own error card and the others go on", async () => {
    const { fetch, calls } = fakeFetch((call) => {
      if (call.url === "/v1/models") return { body: MODELS };
      const form = call.body as FormData;
      const file = form.get("image") as File;
      if (file.name.endsWith(".txt")) {
        return {
          status: 415,
          body: { error: { code: "unsupported_image_format", message: "The upload is not an image in a supported format.", request_id: "r1" } },
        };
      }
      return {
        body: {
          model: { name: "digits", version: "v2" },
          predictions: [{ label: file.name[0], score: 0.8 }],
          attributes: {},
          image: { sha256: "c".repeat(64), id: "c".repeat(64), stored: true, width: 8, height: 8, format: "PNG", bytes: 10 },
          batch_size: 1,
          cached: false,
          timing_ms: { decode: 1, preprocess: 1, queue: 1, inference: 1, total: 4 },
        },
      };
    });
    render(
      <WithAuth auth={signedIn(clientFor(fetch))}>
        <ClassifyPage />
      </WithAuth>,
    );
    await waitFor(() => expect(screen.getByTestId("classify-model")).toHaveValue("digits:v2"));
    await userEvent.click(screen.getByTestId("classify-store"));
    const files = [
      new File(["a"], "3.png", { type: "image/png" }),
      new File(["b"], "notes.txt", { type: "text/plain" }),
      new File(["c"], "8.png", { type: "image/png" }),
    ];
    await userEvent.upload(screen.getByTestId("classify-files"), files, { applyAccept: false });
    await waitFor(() => expect(screen.getByTestId("classify-progress")).toHaveTextContent("3 classified"));

    const cards = screen.getAllByTestId("result-card");
    expect(cards.map((c) => c.getAttribute("data-filename"))).toEqual(["3.png", "notes.txt", "8.png"]);
    const failed = cards.find((c) => c.dataset.filename === "notes.txt") as HTMLElement;
    expect(within(failed).getByTestId("result-error")).toHaveTextContent("The upload is not an image in a supported format.");
    const eight = cards.find((c) => c.dataset.filename === "8.png") as HTMLElement;
    expect(within(eight).getByTestId("result-top-label")).toHaveTextContent("8");

    const posts = calls.filter((c) => c.url === "/v1/classify");
    expect(posts).toHaveLength(3);
    for (const post of posts) {
      const form = post.body as FormData;
      expect(form.getAll("image")).toHaveLength(1);
      expect(form.get("store")).toBe("true");
    }
  });
});
