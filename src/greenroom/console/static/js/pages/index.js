// The console's pages, in the order the router tries them (first match wins).
import * as overview from "./overview.js";

export const pages = [overview.page];
