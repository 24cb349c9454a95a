// Validates ServiceMonitor, PodMonitor and PrometheusRule objects (a JSON array, from
// `checks.py split`) against the prometheus-operator's own schemas, as shipped in npm
// `@kubernetes-models/prometheus-operator` (generated from the upstream CRDs):
//   1. the package's validators: required fields, types, enums, patterns (durations, ...);
//   2. unknown fields, which those validators let through but the API server refuses
//      (kubectl --validate=strict): every field must be one the package's type declarations
//      name for that object.
// Run from the directory holding node_modules (scripts/setup.sh installs it in .cache/tools/node).
// Usage: node monitoring.mjs OBJECTS.json

import { readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const require = createRequire(join(process.cwd(), "package.json"));
const pkgDir = dirname(require.resolve("@kubernetes-models/prometheus-operator/package.json"));
const modulesDir = dirname(dirname(pkgDir));

// --- field lists from the .d.ts files -------------------------------------------------------

const classes = new Map(); // d.ts path -> Map(field -> type text) | null (not an object)

function resolveImport(fromFile, spec) {
  const base = spec.startsWith(".") ? join(dirname(fromFile), spec) : join(modulesDir, spec);
  const file = base.replace(/\.js$/, "") + ".d.ts";
  return existsSync(file) ? file : null;
}

// The fields of the class declared in `file` and, for each, its type text; imports map the
// type names used there to their files.
function parse(file) {
  if (classes.has(file)) return classes.get(file);
  const text = readFileSync(file, "utf8").replace(/\/\*\*[\s\S]*?\*\//g, "");
  const imports = new Map();
  for (const m of text.matchAll(/import \{ ([^}]+) \} from "([^"]+)";/g)) {
    for (const name of m[1].split(",").map((s) => s.trim())) imports.set(name, m[2]);
  }
  const m = text.match(/export declare class \w+ extends Model<[^>]*>[^{]*\{\n([\s\S]*?)\n    constructor\(/);
  if (!m) {
    classes.set(file, null);
    return null;
  }
  const fields = new Map();
  // `    "name"?: Type;` at class depth (4 spaces); a type may span lines (`{ ... }`).
  const body = m[1];
  const re = /^    "([^"]+)"\??: ([\s\S]*?);$(?=\n    "|\n?$)/gm;
  for (const f of body.matchAll(re)) fields.set(f[1], f[2].trim());
  const info = { file, fields, imports };
  classes.set(file, info);
  return info;
}

// What a type text says about the value: {kind: "class", file} | {kind: "array", of} |
// {kind: "map"} | {kind: "leaf"}.
function typeOf(info, type) {
  type = type.trim();
  const arr = type.match(/^Array<([\s\S]*)>$/);
  if (arr) return { kind: "array", of: typeOf(info, arr[1]) };
  if (/^\{\s*\[key: string\]/.test(type)) return { kind: "map" };
  if (/^I\w+$/.test(type) && info.imports.has(type)) {
    const file = resolveImport(info.file, info.imports.get(type));
    if (file && parse(file)) return { kind: "class", file };
  }
  return { kind: "leaf" };
}

function unknownFields(value, file, path, problems) {
  const info = parse(file);
  if (!info || value === null || typeof value !== "object" || Array.isArray(value)) return;
  for (const [key, v] of Object.entries(value)) {
    if (!info.fields.has(key)) {
      problems.push(`${path}.${key}: unknown field`);
      continue;
    }
    walk(v, typeOf(info, info.fields.get(key)), `${path}.${key}`, problems);
  }
}

function walk(value, t, path, problems) {
  if (t.kind === "class") unknownFields(value, t.file, path, problems);
  else if (t.kind === "array" && Array.isArray(value)) value.forEach((v, i) => walk(v, t.of, `${path}[${i}]`, problems));
}

// --- main -----------------------------------------------------------------------------------

const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failed = 0;
for (const obj of objects) {
  const where = `${obj.kind} ${obj.metadata?.name}`;
  const problems = [];
  const [group, version] = obj.apiVersion.split("/");
  const modFile = join(pkgDir, group, version, `${obj.kind}.js`);
  let Model;
  try {
    ({ [obj.kind]: Model } = await import(pathToFileURL(modFile).href));
  } catch {
    problems.push(`no schema for ${obj.apiVersion} ${obj.kind}`);
  }
  if (Model) {
    try {
      new Model(obj).validate();
    } catch (e) {
      problems.push(...String(e.message ?? e).split(", ").map((s) => s.replace(/^data/, "")));
    }
    const dts = join(pkgDir, group, version, `${obj.kind}.d.ts`);
    unknownFields(obj, dts, "", problems);
  }
  if (problems.length) {
    failed++;
    console.error(`${where}:`);
    for (const p of problems) console.error(`  ${p}`);
  }
}
if (failed) process.exit(1);
const counts = objects.map((o) => o.kind).join(", ");
console.log(`${objects.length} objects valid against the prometheus-operator schemas, no unknown fields (${counts || "none"})`);
