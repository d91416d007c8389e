import { useState } from "react";
import type { ExplainResult } from "../api/types";
import { formatPercent } from "../lib/format";

/** An image preview, and the explanation's heat map over it (same box) when there is one. */
export function PreviewWithHeatmap({
  src,
  alt,
  explanation,
}: {
  src: string | null;
  alt: string;
  explanation: ExplainResult | null;
}) {
  // A file the browser cannot draw (not an image, or a format it lacks, such as TIFF).
  const [broken, setBroken] = useState<string | null>(null);
  if (src !== null && broken === src) {
    return (
      <div className="preview">
        <p className="preview-none">No preview</p>
      </div>
    );
  }
  return (
    <div className="preview">
      {src ? (
        <img className="preview-image" src={src} alt={alt} onError={() => setBroken(src)} />
      ) : (
        <div className="preview-empty" />
      )}
      {explanation && (
        <img
          className="preview-overlay"
          src={`data:image/png;base64,${explanation.heatmap.png}`}
          alt=""
          aria-hidden="true"
          data-testid="explain-overlay"
        />
      )}
    </div>
  );
}

export function ExplainCaption({ explanation }: { explanation: ExplainResult }) {
  return (
    <p className="small" data-testid="explain-target">
      Heat map ({explanation.method}) for “{explanation.target.label}” (
      {formatPercent(explanation.target.score)}): warm areas weighed most.
    </p>
  );
}
