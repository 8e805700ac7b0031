// The page's entry (index.html loads only this): each import sets up one part of the page, then the
// run list loads and fills them.

import "./draw.js";
import "./galleries.js";
import "./training.js";
import "./analysis.js";
import "./sweeps.js";
import { loadRuns } from "./runs.js";

loadRuns();
