import { defineConfig } from "vite";

// Served under /app/ by the local stack; any static host serves dist/ as it is.
export default defineConfig({
  base: "./",
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false },
});
