import { useEffect, useState } from "react";

/** An object URL for a blob (a picked file, a fetched image), revoked when it changes or unmounts. */
export function useObjectUrl(blob: Blob | null | undefined): string | null {
  const [url, setUrl] = useState<{ blob: Blob; url: string } | null>(null);
  useEffect(() => {
    if (!blob) return;
    // The URL is a resource the effect owns: made here and revoked by its cleanup, so it
    // cannot come from render (StrictMode's second mount would get a revoked one).
    const made = URL.createObjectURL(blob);
    // eslint-disable-next-line react-hooks/set-state-in-effect -- see above
    setUrl({ blob, url: made });
    return () => URL.revokeObjectURL(made);
  }, [blob]);
  return blob && url?.blob === blob ? url.url : null;
}
