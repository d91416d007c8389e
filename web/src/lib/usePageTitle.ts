import { useEffect } from "react";

/** The document title of a page: "Review · ImageIQ". */
export function usePageTitle(title: string): void {
  useEffect(() => {
    document.title = `${title} · ImageIQ`;
  }, [title]);
}
