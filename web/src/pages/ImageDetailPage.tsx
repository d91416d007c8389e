import { useState } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { deleteImage, getImage } from "../api/catalog";
import { messageOf } from "../api/errors";
import { useApi, useAuth } from "../auth/context";
import { AuthImage } from "../components/AuthImage";
import { ConfirmDialog } from "../components/ConfirmDialog";
import { ErrorNote, Loading } from "../components/ErrorNote";
import { FeedbackForm } from "../components/FeedbackForm";
import { formatBytes, formatDateTime, formatPercent, shortId } from "../lib/format";
import { usePageTitle } from "../lib/usePageTitle";
import { useQuery } from "../lib/useQuery";

function describeAttributes(attributes: Record<string, { label: string; score?: number } | string>): string {
  return Object.entries(attributes)
    .map(([head, v]) =>
      typeof v === "string" ? `${head}: ${v}` : `${head}: ${v.label}${v.score !== undefined ? ` (${formatPercent(v.score)})` : ""}`,
    )
    .join(", ");
}

export function ImageDetailPage() {
  const { id = "" } = useParams();
  usePageTitle(`Image ${shortId(id)}`);
  const api = useApi();
  const { can } = useAuth();
  const navigate = useNavigate();
  const image = useQuery(`image:${id}`, (signal) => getImage(api, id, signal));
  const [confirming, setConfirming] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [deleteError, setDeleteError] = useState<string | null>(null);

  const remove = async () => {
    setDeleting(true);
    setDeleteError(null);
    try {
      await deleteImage(api, id);
      navigate("/images", { state: { notice: `Image ${shortId(id)} was deleted.` } });
    } catch (error) {
      setDeleting(false);
      setConfirming(false);
      setDeleteError(messageOf(error));
    }
  };

  // While a reload runs (after feedback), the answer before it stays on screen.
  const data = image.data ?? (image.previous?.id === id ? image.previous : undefined);
  const latest = data?.predictions[0] ?? data?.prediction ?? null;
  return (
    <section>
      <p>
        <Link to="/images">← All images</Link>
      </p>
      <h1>
        Image <code>{shortId(id)}</code>
      </h1>
      {image.error !== undefined && <ErrorNote error={image.error} />}
      {image.loading && !data && <Loading what="the image" />}
      {data && (
        <div className="detail" data-testid="image-detail" data-id={data.id}>
          <div className="detail-image">
            <AuthImage id={data.id} alt={`Stored image ${shortId(data.id)}`} className="preview-image" />
          </div>
          <div className="detail-facts">
            <dl className="facts">
              <div>
                <dt>Id</dt>
                <dd className="break">
                  <code>{data.id}</code>
                </dd>
              </div>
              <div>
                <dt>Stored</dt>
                <dd>{formatDateTime(data.created_at)}</dd>
              </div>
              <div>
                <dt>Size</dt>
                <dd>
                  {data.width}×{data.height} · {data.content_type} · {formatBytes(data.bytes)}
                </dd>
              </div>
              <div>
                <dt>Uploaded by key</dt>
                <dd>{data.uploaded_by ?? "–"}</dd>
              </div>
            </dl>
            {can("admin") && (
              <button type="button" className="danger" onClick={() => setConfirming(true)} data-testid="image-delete">
                Delete image
              </button>
            )}
            {deleteError && (
              <p className="error-note" role="alert" data-testid="image-delete-error">
                {deleteError}
              </p>
            )}
            {latest && (
              <FeedbackForm
                imageId={data.id}
                topLabel={latest.label}
                model={`${latest.model.name}:${latest.model.version}`}
                predictedLabels={latest.predictions.map((p) => p.label)}
                onSaved={() => image.reload()}
              />
            )}
          </div>
          <div className="detail-tables">
            <h2>Predictions</h2>
            <div className="table-scroll">
              <table className="data" data-testid="prediction-history">
                <thead>
                  <tr>
                    <th scope="col">When</th>
                    <th scope="col">Model</th>
                    <th scope="col">Label</th>
                    <th scope="col">Top labels</th>
                    <th scope="col">Attributes</th>
                  </tr>
                </thead>
                <tbody>
                  {data.predictions.length === 0 && (
                    <tr>
                      <td colSpan={5} className="muted">
                        None kept.
                      </td>
                    </tr>
                  )}
                  {data.predictions.map((p, i) => (
                    <tr key={`${p.created_at}-${i}`}>
                      <td className="nowrap">{formatDateTime(p.created_at)}</td>
                      <td className="nowrap">
                        {p.model.name}:{p.model.version}
                        {p.cached ? " (cached)" : ""}
                      </td>
                      <td>
                        {p.label} <span className="muted">{formatPercent(p.score)}</span>
                      </td>
                      <td>{p.predictions.map((s) => `${s.label} ${formatPercent(s.score)}`).join(", ")}</td>
                      <td>{describeAttributes(p.attributes) || "–"}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
            <h2>Labels</h2>
            <div className="table-scroll">
              <table className="data" data-testid="label-history">
                <thead>
                  <tr>
                    <th scope="col">When</th>
                    <th scope="col">Label</th>
                    <th scope="col">Attributes</th>
                    <th scope="col">Source</th>
                    <th scope="col">By key</th>
                  </tr>
                </thead>
                <tbody>
                  {data.labels.length === 0 && (
                    <tr>
                      <td colSpan={5} className="muted">
                        No label given yet.
                      </td>
                    </tr>
                  )}
                  {data.labels.map((l) => (
                    <tr key={l.id} data-testid="label-row">
                      <td className="nowrap">{formatDateTime(l.created_at)}</td>
                      <td>{l.label ?? "–"}</td>
                      <td>{describeAttributes(l.attributes) || "–"}</td>
                      <td>{l.source}</td>
                      <td>{l.created_by ?? "–"}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </div>
        </div>
      )}
      {confirming && (
        <ConfirmDialog
          title="Delete this image?"
          confirmLabel="Delete"
          cancelLabel="Keep it"
          danger
          busy={deleting}
          onConfirm={() => void remove()}
          onCancel={() => setConfirming(false)}
        >
          <p>
            Image <code>{shortId(id)}</code>, its predictions and its labels are removed for good.
          </p>
        </ConfirmDialog>
      )}
    </section>
  );
}
