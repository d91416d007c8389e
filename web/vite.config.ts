// The web app is served by the ImageIQ service under /ui/ (the service sends a strict
// Content-Security-Policy: scripts and styles only from files of its own origin). The build
// therefore emits only external .js and .css files: no inline script (no module-preload
// polyfill), no inline style.
import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

export default defineConfig({
  base: "/ui/",
  plugins: [react()],
  build: {
    outDir: "../bentos/webui",
    emptyOutDir: true,
    modulePreload: { polyfill: false },
    // Every asset is a file of its own: nothing becomes a data: URL inside the CSS or JS.
    assetsInlineLimit: 0,
    cssCodeSplit: true,
    sourcemap: false,
    rolldownOptions: {
      output: {
        // The chunk shared by the chart pages (Models, Stats) carries recharts: name it so.
        chunkFileNames: (chunk) =>
          !chunk.isDynamicEntry && chunk.moduleIds.some((id) => id.includes("/node_modules/recharts/"))
            ? "assets/charts-[hash].js"
            : "assets/[name]-[hash].js",
      },
    },
  },
  server: {
    // `npm run dev` against a local `make serve` (127.0.0.1:3000).
    proxy: { "/v1": "http://127.0.0.1:3000" },
  },
  test: {
    environment: "jsdom",
    setupFiles: ["./src/test/setup.ts"],
    include: ["src/**/*.test.{ts,tsx}"],
    css: false,
  },
});
