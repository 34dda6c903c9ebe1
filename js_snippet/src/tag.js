// Entry of dist/tag.js. The server replaces the string literal below (quotes included) with
// the live container as JSON (DESIGN.md §2); it must stay the bundle's only occurrence.
// While it is still a string the tag is not configured and does nothing.
import { start } from "./main.js";
import { safe } from "./util.js";

var C = "__TAGWERK_CONFIG__";
// Once per page: a second copy of the tag (included twice) leaves the first one alone. C.s:
// the site of a served config (the placeholder string has none; null throws, inside safe()).
safe(() => C.s && !(window.tagwerk || {}).x && start(C))();
