// Placeholder until the overview lands (issue 12, in progress).
import { fill, h } from "../dom.js";

export const page = {
  pattern: /^\/$/,
  title: () => "Overview",
  async render(main) {
    fill(main, h("h1", {}, "Overview"));
  },
};
