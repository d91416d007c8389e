import { useId, type FormEvent } from "react";
import { Link, useLocation, useSearchParams } from "react-router";
import { listImages } from "../api/catalog";
import { useApi } from "../auth/context";
import { AuthImage } from "../components/AuthImage";
import { ErrorNote, Loading } from "../components/ErrorNote";
import { Pager } from "../components/Pager";
import { formatBytes, formatDateTime, formatPercent, shortId } from "../lib/format";
import {
  FILTER_FIELDS,
  PAGE_LIMIT,
  apiFilters,
  filtersFromSearch,
  offsetFromSearch,
  searchFromFilters,
  type FilterField,
  type FilterValues,
} from "../lib/imageFilters";
import { usePageTitle } from "../lib/usePageTitle";
import { useQuery } from "../lib/useQuery";

const FIELD_LABELS: Record<FilterField, string> = {
  label: "Given label",
  predicted_label: "Predicted label",
  source: "Label source",
  attribute: "Attribute (name:value)",
  model: "Model (name or name:version)",
  from: "Stored from",
  to: "Stored to",
};

export function ImagesPage() {
  usePageTitle("Images");
  const api = useApi();
  const location = useLocation();
  const notice = (location.state as { notice?: string } | null)?.notice;
  const [search, setSearch] = useSearchParams();
  const filters = filtersFromSearch(search);
  const offset = offsetFromSearch(search);
  const key = searchFromFilters(filters, offset).toString();
  const page = useQuery(`images?${key}`, (signal) =>
    listImages(api, { ...apiFilters(filters), limit: PAGE_LIMIT, offset }, signal),
  );
  const shown = page.data ?? page.previous;

  const apply = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    const values = Object.fromEntries(FILTER_FIELDS.map((f) => [f, String(form.get(f) ?? "")])) as FilterValues;
    setSearch(searchFromFilters(values));
  };

  return (
    <section>
      <h1>Images</h1>
      {notice && (
        <p className="ok-text" role="status" data-testid="images-notice">
          {notice}
        </p>
      )}
      <FilterForm key={key} values={filters} onSubmit={apply} onClear={() => setSearch(new URLSearchParams())} />
      {page.error !== undefined && <ErrorNote error={page.error} />}
      {!shown && page.loading && <Loading what="images" />}
      {shown && (
        <>
          <Pager
            offset={shown.offset}
            shown={shown.items.length}
            total={shown.total}
            limit={PAGE_LIMIT}
            busy={page.loading}
            onMove={(o) => setSearch(searchFromFilters(filters, o))}
          />
          <div className="table-scroll" aria-busy={page.loading}>
            <table className="data images-table">
              <caption className="visually-hidden">Stored images, newest first</caption>
              <thead>
                <tr>
                  <th scope="col">Image</th>
                  <th scope="col">Id</th>
                  <th scope="col">Stored</th>
                  <th scope="col">Predicted</th>
                  <th scope="col">Label</th>
                  <th scope="col">Size</th>
                </tr>
              </thead>
              <tbody>
                {shown.items.length === 0 && (
                  <tr>
                    <td colSpan={6} className="muted">
                      No stored image matches.
                    </td>
                  </tr>
                )}
                {shown.items.map((image) => (
                  <tr key={image.id} data-testid="image-row" data-id={image.id}>
                    <td>
                      <Link to={`/images/${image.id}`} aria-label={`Open image ${shortId(image.id)}`} className="thumb-link">
                        <AuthImage id={image.id} alt="" lazy className="thumb" />
                      </Link>
                    </td>
                    <td>
                      <Link to={`/images/${image.id}`}>
                        <code>{shortId(image.id)}</code>
                      </Link>
                    </td>
                    <td className="nowrap">{formatDateTime(image.created_at)}</td>
                    <td>
                      {image.prediction ? (
                        <>
                          {image.prediction.label}{" "}
                          <span className="muted">{formatPercent(image.prediction.score)}</span>
                        </>
                      ) : (
                        <span className="muted">–</span>
                      )}
                    </td>
                    <td>
                      {image.label?.label ?? <span className="muted">–</span>}
                      {image.label && <span className="muted small"> ({image.label.source})</span>}
                    </td>
                    <td className="nowrap">
                      {image.width}×{image.height} · {formatBytes(image.bytes)}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      )}
    </section>
  );
}

function FilterForm({
  values,
  onSubmit,
  onClear,
}: {
  values: FilterValues;
  onSubmit: (event: FormEvent<HTMLFormElement>) => void;
  onClear: () => void;
}) {
  const base = useId();
  const id = (f: FilterField) => `${base}-${f}`;
  const text = (f: FilterField, type = "text") => (
    <div className="field" key={f}>
      <label htmlFor={id(f)}>{FIELD_LABELS[f]}</label>
      <input id={id(f)} name={f} type={type} defaultValue={values[f]} data-testid={`filter-${f}`} />
    </div>
  );
  return (
    <form className="card filters" onSubmit={onSubmit} aria-label="Filters">
      {text("label")}
      {text("predicted_label")}
      <div className="field">
        <label htmlFor={id("source")}>{FIELD_LABELS.source}</label>
        <select id={id("source")} name="source" defaultValue={values.source} data-testid="filter-source">
          <option value="">Any</option>
          <option value="user">user</option>
          <option value="admin">admin</option>
          <option value="model">model</option>
        </select>
      </div>
      {text("attribute")}
      {text("model")}
      {text("from", "date")}
      {text("to", "date")}
      <div className="filter-actions">
        <button type="submit" className="primary" data-testid="filter-apply">
          Apply
        </button>
        <button type="button" onClick={onClear} data-testid="filter-clear">
          Clear
        </button>
      </div>
    </form>
  );
}
