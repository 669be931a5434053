// The console's pages, in the order the router tries them (first match wins).
import * as overview from "./overview.js";
import * as deployment from "./deployment.js";
import * as task from "./task.js";
import * as migration from "./migration.js";
import * as traffic from "./traffic.js";
import * as tokens from "./tokens.js";
import * as audit from "./audit.js";

export const pages = [overview.page, deployment.page, task.page, migration.page, traffic.page, tokens.page, audit.page];
