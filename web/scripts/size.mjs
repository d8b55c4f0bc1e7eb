// Prints, and holds to its budget, the gzipped JavaScript a browser loads
// before a desktop shows: each page's entry chunk and everything it imports
// statically. Dynamic imports (noVNC, loaded only when used) are listed apart.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const BUDGET_KB = 150;
const dist = new URL("../dist/", import.meta.url);
const manifest = JSON.parse(readFileSync(new URL(".vite/manifest.json", dist), "utf8"));
const gz = (file) => gzipSync(readFileSync(new URL(file, dist)), { level: 9 }).length;

let failed = false;
for (const [key, entry] of Object.entries(manifest)) {
  if (!entry.isEntry) continue;
  const seen = new Set();
  const walk = (k) => {
    if (seen.has(k)) return;
    seen.add(k);
    for (const i of manifest[k].imports ?? []) walk(i);
  };
  walk(key);
  const files = [...seen].map((k) => manifest[k].file).filter((f) => f.endsWith(".js"));
  const kb = files.reduce((sum, f) => sum + gz(f), 0) / 1024;
  const lazy = new Set();
  for (const k of seen) for (const d of manifest[k].dynamicImports ?? []) lazy.add(manifest[d].file);
  const lazyKb = [...lazy].reduce((sum, f) => sum + gz(f), 0) / 1024;
  const verdict = kb <= BUDGET_KB ? "within" : "OVER";
  console.log(
    `web: ${key}: ${kb.toFixed(1)} KB gzipped JS before a desktop (${verdict} the ${BUDGET_KB} KB budget); ` +
      `${lazyKb.toFixed(1)} KB more loaded only when used (noVNC and the like)`,
  );
  if (kb > BUDGET_KB) failed = true;
}
process.exit(failed ? 1 : 0);
