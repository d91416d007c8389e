import { useId, useState, type FormEvent } from "react";
import { addLabel } from "../api/catalog";
import { messageOf } from "../api/errors";
import type { LabelIn } from "../api/types";
import { useApi } from "../auth/context";
import { useCategories } from "../lib/useCategories";

type Status = { kind: "idle" } | { kind: "saving" } | { kind: "saved"; text: string } | { kind: "failed"; text: string };

/**
 * Feedback for a stored image: confirm the top label in one click, or pick another (or a
 * new) label and attribute values. Without an image id (not stored) the controls are off
 * and say why.
 */
export function FeedbackForm({
  imageId,
  topLabel,
  model,
  predictedLabels,
  onSaved,
}: {
  imageId: string | undefined;
  topLabel: string | undefined;
  /** The model tag (name:version) whose labels are offered. */
  model: string;
  predictedLabels: readonly string[];
  onSaved?: (label: string | undefined) => void;
}) {
  const api = useApi();
  const ids = { label: useId(), fresh: useId(), freshText: useId(), why: useId() };
  const categories = useCategories(imageId ? model : null);
  const [label, setLabel] = useState("");
  const [isNew, setIsNew] = useState(false);
  const [newText, setNewText] = useState("");
  const [attributes, setAttributes] = useState<Record<string, string>>({});
  const [status, setStatus] = useState<Status>({ kind: "idle" });

  const labels = categories.data?.labels ?? [...predictedLabels];
  const heads = Object.entries(categories.data?.attributes ?? {});
  const disabled = imageId === undefined;
  const busy = status.kind === "saving";

  const send = async (body: LabelIn) => {
    if (!imageId) return;
    setStatus({ kind: "saving" });
    try {
      const saved = await addLabel(api, imageId, body);
      const parts = [
        saved.label !== null ? `label “${saved.label}”` : null,
        ...Object.entries(saved.attributes).map(([h, v]) => `${h} “${v}”`),
      ].filter(Boolean);
      setStatus({ kind: "saved", text: `Saved ${parts.join(", ")}.` });
      onSaved?.(saved.label ?? undefined);
    } catch (error) {
      setStatus({ kind: "failed", text: messageOf(error) });
    }
  };

  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const chosen = isNew ? newText.trim() : label;
    const attrs = Object.fromEntries(Object.entries(attributes).filter(([, v]) => v !== ""));
    if (!chosen && Object.keys(attrs).length === 0) {
      setStatus({ kind: "failed", text: "Choose a label or an attribute value first." });
      return;
    }
    const body: LabelIn = {};
    if (chosen) body.label = chosen;
    if (Object.keys(attrs).length) body.attributes = attrs;
    if (chosen && isNew) body.new_label = true;
    void send(body);
  };

  return (
    <form className="feedback" onSubmit={submit} aria-label="Feedback">
      <fieldset disabled={disabled || busy} aria-describedby={disabled ? ids.why : undefined}>
        <legend>Correct</legend>
        {disabled && (
          <p id={ids.why} className="muted small" data-testid="feedback-disabled-reason">
            Store the image to give feedback: turn on “Store images” and classify it again.
          </p>
        )}
        {topLabel !== undefined && (
          <button
            type="button"
            className="primary"
            onClick={() => void send({ label: topLabel })}
            data-testid="feedback-confirm"
          >
            Confirm “{topLabel}”
          </button>
        )}
        <div className="field">
          <label htmlFor={ids.label}>Or another label</label>
          <select
            id={ids.label}
            value={label}
            onChange={(e) => setLabel(e.target.value)}
            disabled={isNew}
            data-testid="feedback-label"
          >
            <option value="">Choose…</option>
            {labels.map((l) => (
              <option key={l} value={l}>
                {l}
              </option>
            ))}
          </select>
        </div>
        <div className="field-inline">
          <input
            id={ids.fresh}
            type="checkbox"
            checked={isNew}
            onChange={(e) => setIsNew(e.target.checked)}
            data-testid="feedback-new-label"
          />
          <label htmlFor={ids.fresh}>A new label</label>
        </div>
        {isNew && (
          <div className="field">
            <label htmlFor={ids.freshText}>New label</label>
            <input
              id={ids.freshText}
              type="text"
              maxLength={255}
              value={newText}
              onChange={(e) => setNewText(e.target.value)}
              data-testid="feedback-new-label-text"
            />
          </div>
        )}
        {heads.map(([head, values]) => (
          <AttributePicker
            key={head}
            head={head}
            values={values}
            value={attributes[head] ?? ""}
            onChange={(v) => setAttributes((a) => ({ ...a, [head]: v }))}
          />
        ))}
        <button type="submit" data-testid="feedback-submit">
          {busy ? "Saving…" : "Save correction"}
        </button>
      </fieldset>
      <p
        role="status"
        className={status.kind === "failed" ? "error-text" : "ok-text"}
        data-testid="feedback-status"
        data-state={status.kind}
      >
        {status.kind === "saved" || status.kind === "failed" ? status.text : ""}
      </p>
    </form>
  );
}

function AttributePicker({
  head,
  values,
  value,
  onChange,
}: {
  head: string;
  values: readonly string[];
  value: string;
  onChange: (value: string) => void;
}) {
  const id = useId();
  return (
    <div className="field">
      <label htmlFor={id}>{head}</label>
      <select id={id} value={value} onChange={(e) => onChange(e.target.value)} data-testid="feedback-attr" data-head={head}>
        <option value="">(no change)</option>
        {values.map((v) => (
          <option key={v} value={v}>
            {v}
          </option>
        ))}
      </select>
    </div>
  );
}
