// The same tests on React 18, installed in test/react18 (`npm ci --prefix test/react18`).
// Testing Library goes through vite too (inlined), so that it renders with that React.
import { fileURLToPath } from "node:url";
import { defineConfig, mergeConfig } from "vitest/config";
import base from "./vitest.config.js";

const r18 = fileURLToPath(new URL("./test/react18/node_modules/", import.meta.url));

export default mergeConfig(
  base,
  defineConfig({
    resolve: {
      alias: [
        { find: /^react$/, replacement: `${r18}react/index.js` },
        { find: /^react\/(.*)$/, replacement: `${r18}react/$1` },
        { find: /^react-dom$/, replacement: `${r18}react-dom/index.js` },
        { find: /^react-dom\/(.*)$/, replacement: `${r18}react-dom/$1` },
        // Its ESM build, whose imports of react and react-dom the aliases above catch.
        { find: /^@testing-library\/react$/, replacement: fileURLToPath(new URL("./node_modules/@testing-library/react/dist/@testing-library/react.esm.js", import.meta.url)) },
      ],
    },
    test: { server: { deps: { inline: [/@testing-library/] } } },
  }),
);
