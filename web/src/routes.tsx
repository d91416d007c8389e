import type { ComponentType } from "react";
import type { RouteObject } from "react-router";
import type { Scope } from "./api/types";
import { RequireAuth } from "./auth/RequireAuth";
import { Layout } from "./components/Layout";
import { RouteError } from "./components/RouteError";
import { ClassifyPage } from "./pages/ClassifyPage";
import { ImageDetailPage } from "./pages/ImageDetailPage";
import { ImagesPage } from "./pages/ImagesPage";
import { NotFoundPage } from "./pages/NotFoundPage";
import { ReviewPage } from "./pages/ReviewPage";
import { SignInPage } from "./pages/SignInPage";

/** A page that needs a scope; its module is loaded on first visit (Models and Stats carry the charts). */
function guarded(scope: Scope, title: string, load: () => Promise<ComponentType>): Pick<RouteObject, "lazy"> {
  return {
    lazy: async () => {
      const Page = await load();
      return {
        Component: () => (
          <RequireAuth scope={scope} title={title}>
            <Page />
          </RequireAuth>
        ),
      };
    },
  };
}

function page(scope: Scope, title: string, Page: ComponentType): Pick<RouteObject, "element"> {
  return {
    element: (
      <RequireAuth scope={scope} title={title}>
        <Page />
      </RequireAuth>
    ),
  };
}

export const routes: RouteObject[] = [
  {
    path: "/",
    element: <Layout />,
    errorElement: <RouteError />,
    // Shown while the code of a page loaded on first visit (Models, Stats) arrives.
    hydrateFallbackElement: (
      <p className="muted" role="status">
        Loading…
      </p>
    ),
    children: [
      { index: true, ...page("classify", "Classify", ClassifyPage) },
      { path: "review", ...page("label", "Review", ReviewPage) },
      { path: "images", ...page("label", "Images", ImagesPage) },
      { path: "images/:id", ...page("label", "Image", ImageDetailPage) },
      { path: "models", ...guarded("classify", "Models", async () => (await import("./pages/ModelsPage")).ModelsPage) },
      { path: "stats", ...guarded("label", "Stats", async () => (await import("./pages/StatsPage")).StatsPage) },
      { path: "signin", element: <SignInPage /> },
      { path: "*", element: <NotFoundPage /> },
    ],
  },
];

/** The service serves the app under /ui/ (vite.config.ts `base`). */
export const BASENAME = "/ui";
