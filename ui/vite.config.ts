import { defineConfig } from "vite";
import preact from "@preact/preset-vite";

// Built into the Python package (served by the gateway at /ui/, see gateway/ui.py): hashed
// file names under assets/ are cached for a year, index.html is revalidated.
export default defineConfig({
  base: "/ui/",
  plugins: [preact()],
  build: {
    outDir: "../src/cumulo/gateway/ui_dist",
    emptyOutDir: true,
    // The gateway's CSP allows no inline code: keep everything in files.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    target: "es2022",
  },
});
