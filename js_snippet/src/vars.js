// Variables (DESIGN.md §1), all 7 types: url (part href|host|path|query|hash, without the
// leading ?/#), query, data_layer (dotted key into the dataLayer model M), cookie,
// element_text, element_attribute, constant. Missing values come back null/undefined.
import { cookie } from "./util.js";

var PARTS = { host: "hostname", path: "pathname", query: "search", hash: "hash" };

export var resolve = (v, M, t, e) =>
  (t = v.type) == "constant"
    ? v.value
    : t == "url"
      ? location[PARTS[v.part] || "href"].replace(/^[?#]/, "")
      : t == "query"
        ? new URLSearchParams(location.search).get(v.name)
        : t == "data_layer"
          ? v.key.split(".").reduce((o, k) => o && o[k], M)
          : t == "cookie"
            ? decodeURIComponent(cookie(v.name)) // a site's cookie, as GTM's cookie variable decodes it
            : (e = document.querySelector(v.selector)) &&
              (t == "element_text" ? e.textContent.trim() : e.getAttribute(v.attribute));
