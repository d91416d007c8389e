import { useRef } from "react";
import { getImageContent } from "../api/catalog";
import { useApi } from "../auth/context";
import { messageOf } from "../api/errors";
import { useInView } from "../lib/useInView";
import { useObjectUrl } from "../lib/useObjectUrl";
import { useQuery } from "../lib/useQuery";

/**
 * A stored image, fetched with the API key (an <img src> cannot send it) and shown from a
 * blob: URL that is revoked when the component goes. `lazy`: fetched once near the viewport.
 */
export function AuthImage({
  id,
  alt,
  lazy = false,
  className,
}: {
  id: string;
  alt: string;
  lazy?: boolean;
  className?: string;
}) {
  const api = useApi();
  const box = useRef<HTMLSpanElement>(null);
  const visible = useInView(box);
  const wanted = !lazy || visible;
  const query = useQuery(wanted ? `image:${id}` : null, (signal) => getImageContent(api, id, signal));
  const url = useObjectUrl(query.data);
  return (
    <span ref={box} className={`auth-image ${className ?? ""}`}>
      {url ? (
        <img src={url} alt={alt} />
      ) : query.error ? (
        <span className="auth-image-note" title={messageOf(query.error)}>
          Image unavailable
        </span>
      ) : (
        <span className="auth-image-note">Loading…</span>
      )}
    </span>
  );
}
