import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

// `rollcall-react` is this package's source (an app would install it from npm).
export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  resolve: { alias: { "rollcall-react": fileURLToPath(new URL("../src/index.ts", import.meta.url)) } },
  esbuild: { jsx: "automatic" },
  build: { outDir: "dist", emptyOutDir: true },
});
