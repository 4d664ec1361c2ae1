// Which React the suite runs on (npm test runs it on React 19 and on React 18).
import { version } from "react";
import { version as domVersion } from "react-dom";
import { expect, it } from "vitest";

it("react and react-dom are the same version", () => {
  console.log(`React ${version}`);
  expect(domVersion).toBe(version);
  expect(process.env.EXPECT_REACT ? version.split(".")[0] : undefined).toBe(process.env.EXPECT_REACT);
});
