// Builds dist/ from src/: tag.js always; banner.js, banner.css, debug.js, debug.css when their
// sources exist (another engineer writes them). Deterministic: the same sources give
// byte-identical files; tests/test_js.py checks that the committed dist/ is a fresh build.
//
//   node build.mjs            -> js_snippet/dist/
//   node build.mjs OUTDIR     -> OUTDIR (the freshness check builds into a temporary dir)
//
// The tests import bundle() to test the current sources without writing files.
//
// tag.js starts with V8's compile hint `//# allFunctionsCalledOnLoad`: its functions are all
// compiled at once, up front, instead of each at its first call (about 2 ms less CPU at
// load here, bench/tag_mainthread.py).
import { build } from "esbuild";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const ENTRIES = ["tag.js", "tag.basic.js", "decide.js", "engine.js", "banner.js", "banner.css", "debug.js", "debug.css"];
// Builds of one source with other constants: name -> [source, defines]. tag.basic.js is the
// core without the click event and the signals of triggers other than page views (main.js).
export const VARIANTS = {
  "tag.js": ["tag.js", { TW_BASIC: "false" }],
  "tag.basic.js": ["tag.js", { TW_BASIC: "true" }],
};

// name -> the built text, or null when src/<name> does not exist.
export async function bundle(name) {
  const [source, define] = VARIANTS[name] || [name, {}];
  const entry = join(here, "src", source);
  if (!existsSync(entry)) return null;
  const r = await build({
    entryPoints: [entry],
    bundle: true,
    minify: true,
    target: "es2018",
    legalComments: "none",
    charset: "utf8",
    logLevel: "warning",
    define,
    write: false,
    // A .js entry becomes a self-contained IIFE; a .css entry a minified stylesheet. A CSS
    // file imported from banner.js would be a second output: keep it a separate entry.
    ...(name.endsWith(".js") ? { format: "iife" } : {}),
    ...(source == "tag.js" ? { banner: { js: "//# allFunctionsCalledOnLoad" } } : {}),
    outfile: join(here, "dist", name),
  });
  if (r.outputFiles.length != 1) throw new Error(`${name}: expected one output file`);
  return r.outputFiles[0].text;
}

async function main() {
  const out = resolve(process.argv[2] || join(here, "dist"));
  mkdirSync(out, { recursive: true });
  for (const name of ENTRIES) {
    const text = await bundle(name);
    if (text == null) {
      if (name == "tag.js") throw new Error("src/tag.js is missing");
      continue;
    }
    writeFileSync(join(out, name), text);
    console.log(`built ${name} (${Buffer.byteLength(text)} bytes)`);
  }
}

if (process.argv[1] && resolve(process.argv[1]) == fileURLToPath(import.meta.url)) await main();
