// The API key lives in sessionStorage only: it goes when the tab closes, never travels in a
// URL or a cookie, and no other tab (or localStorage reader) sees it.

export const SESSION_KEY = "imageiq.apiKey";

function storage(): Storage | null {
  try {
    return window.sessionStorage;
  } catch {
    return null; // storage blocked: the key lives in memory for this page only
  }
}

export function loadKey(): string | null {
  const value = storage()?.getItem(SESSION_KEY) ?? null;
  return value && value.trim() ? value : null;
}

export function saveKey(key: string): void {
  storage()?.setItem(SESSION_KEY, key);
}

export function clearKey(): void {
  storage()?.removeItem(SESSION_KEY);
}

/** What a user pasted, as a key: trimmed, and a leading "Bearer " dropped. */
export function normaliseKey(text: string): string {
  return text.trim().replace(/^Bearer\s+/i, "").trim();
}
