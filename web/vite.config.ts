// Builds the pages the gate embeds: index.html (the user's) and admin.html
// (the operator's), their hashed assets under assets/, and a manifest that
// scripts/size.mjs reads to hold the JS budget.
import { defineConfig } from "vitest/config";

export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    // noVNC uses top-level await.
    target: "es2022",
    outDir: "dist",
    emptyOutDir: true,
    manifest: true,
    // No inline scripts or data: URLs, so the CSP can stay strict.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    rollupOptions: {
      input: { index: "index.html", admin: "admin.html" },
    },
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
