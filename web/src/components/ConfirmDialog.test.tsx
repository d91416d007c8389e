import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { useState } from "react";
import { describe, expect, it, vi } from "vitest";
import { ConfirmDialog } from "./ConfirmDialog";

function Harness({ onConfirm }: { onConfirm: () => void }) {
  const [open, setOpen] = useState(false);
  return (
    <>
      <button onClick={() => setOpen(true)}>Delete</button>
      {open && (
        <ConfirmDialog title="Delete this image?" confirmLabel="Delete" onConfirm={onConfirm} onCancel={() => setOpen(false)}>
          <p>Gone for good.</p>
        </ConfirmDialog>
      )}
    </>
  );
}

describe("ConfirmDialog", () => {
  it("focuses the safe answer, keeps Tab inside, closes on Escape and gives focus back", async () => {
    const onConfirm = vi.fn();
    render(<Harness onConfirm={onConfirm} />);
    const opener = screen.getByText("Delete");
    await userEvent.click(opener);
    const dialog = screen.getByRole("dialog", { name: "Delete this image?" });
    expect(dialog).toHaveAttribute("aria-modal", "true");
    expect(screen.getByTestId("confirm-no")).toHaveFocus();
    await userEvent.tab();
    expect(screen.getByTestId("confirm-yes")).toHaveFocus();
    await userEvent.tab();
    expect(screen.getByTestId("confirm-no")).toHaveFocus();
    await userEvent.keyboard("{Escape}");
    expect(screen.queryByRole("dialog")).toBeNull();
    expect(opener).toHaveFocus();
    expect(onConfirm).not.toHaveBeenCalled();
  });

  it("confirms", async () => {
    const onConfirm = vi.fn();
    render(<Harness onConfirm={onConfirm} />);
    await userEvent.click(screen.getByText("Delete"));
    await userEvent.click(screen.getByTestId("confirm-yes"));
    expect(onConfirm).toHaveBeenCalledTimes(1);
  });
});
