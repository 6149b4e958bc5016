#!/usr/bin/env node
// Real-browser check of nerfstudio's web viewer with the `unified-lift` plugin.
//
// Opens the viewer (viser 0.2.7, served by `ns-viewer`) in headless Chromium, waits for a
// rendered frame, switches "Output type" to `instance` and saves docs/viewer_instance.png.
// Then (best effort) clears the selection, ticks our "Click to select" checkbox (Control tab,
// "Custom Elements" folder), clicks a compact flat-coloured object found in the instance frame,
// switches the output to `selection` and saves docs/viewer_selection.png.
// Note: the viewer's GUI state (output type, selection) lives in the ns-viewer process and is
// shared by all browser tabs; the script sets what it needs but leaves it changed.
// Exits non-zero if the instance screenshot could not be taken; the selection one is optional.
//
// This is a developer tool, not part of CI.  Usually run through the wrapper, which also
// starts and stops the viewer:
//     scripts/viewer_screenshot.sh outputs/<scene>/unified-lift/<timestamp>/config.yml
// or directly, against a viewer that is already running:
//     node scripts/viewer_screenshot.mjs [--url http://127.0.0.1:7007] [--out-dir docs]
//                                        [--timeout 180] [--no-selection] [--overwrite]
//
// Needs (nothing is downloaded by this script; never run `npx playwright install`):
//   * Chromium from Debian:   apt-get update -qq && apt-get install -y chromium
//     (override the binary with CHROMIUM=/path/to/chrome)
//   * playwright-core from npm, somewhere git ignores:   npm install --prefix /tmp/pw playwright-core
//     (override the location with PLAYWRIGHT_CORE=/path/to/node_modules/playwright-core)
//   * Node >= 18.
// Everything happens on loopback: the page only talks to the viewer's URL.
//
// Rendering on CPU is slow, so every wait polls for up to --timeout seconds (default 180).

import { createRequire } from "node:module";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

// ---------------------------------------------------------------------------------------------
// Arguments
const argv = process.argv.slice(2);
function opt(name, fallback) {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
}
const URL = opt("url", "http://127.0.0.1:7007");
const OUT_DIR = opt("out-dir", "docs");
const TIMEOUT_S = Number(opt("timeout", "180"));
const WANT_SELECTION = !argv.includes("--no-selection");
// Smallest share of the canvas an object may cover to be clicked (MIN_SHARE=0.02 skips tiny ones).
const MIN_SHARE = Number(process.env.MIN_SHARE || 0.002);
const OVERWRITE = argv.includes("--overwrite"); // replace existing screenshots (never by default)
const DUMP_DOM = argv.includes("--dump-dom"); // debugging: write the panel's HTML to OUT_DIR
const VIEWPORT = { width: 1280, height: 800 };

const require = createRequire(import.meta.url);
const PW_PATH = process.env.PLAYWRIGHT_CORE || "/tmp/pw/node_modules/playwright-core";
let chromium;
try {
  ({ chromium } = require(PW_PATH));
} catch (err) {
  console.error(`Cannot load playwright-core from ${PW_PATH}: ${err.message}`);
  console.error("Install it with: npm install --prefix /tmp/pw playwright-core  (or set PLAYWRIGHT_CORE)");
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

const log = (...a) => console.log(`[${new Date().toISOString().slice(11, 19)}]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Canvas analysis.  WebGL canvases cannot be read back reliably (no preserveDrawingBuffer), so we
// screenshot the visible canvas area and decode the PNG in a second, blank page.
let analysisPage;

/** The visible part of the three.js canvas in page coordinates: the <canvas> with the largest
 *  area that is actually on top (viser has more than one canvas, and the control panel floats
 *  over part of the window). */
async function canvasClip(page) {
  return page.evaluate(() => {
    const step = 4;
    // Longest run of indices i in [0, n] with at(i) true.
    function run(n, at) {
      let best = [0, 0], cur = null;
      for (let i = 0; i <= n; i += step) {
        if (at(i)) { if (cur === null) cur = i; if (i - cur > best[1] - best[0]) best = [cur, i]; } else cur = null;
      }
      return best;
    }
    let best = null;
    for (const cv of document.querySelectorAll("canvas")) {
      const r = cv.getBoundingClientRect();
      const right = Math.min(r.right, window.innerWidth) - 1;
      const bottom = Math.min(r.bottom, window.innerHeight) - 1;
      if (right - r.left < 50 || bottom - r.top < 50) continue;
      const hit = (x, y) => document.elementFromPoint(x, y) === cv;
      const [x0, x1] = run(right - r.left, (i) => hit(r.left + i, (r.top + bottom) / 2));
      if (x1 - x0 < 50) continue;
      const midX = r.left + (x0 + x1) / 2;
      const [y0, y1] = run(bottom - r.top, (i) => hit(midX, r.top + i));
      const clip = { x: r.left + x0, y: r.top + y0, width: x1 - x0, height: y1 - y0 };
      if (!best || clip.width * clip.height > best.width * best.height) best = clip;
    }
    return best;
  });
}

/** Stats of a PNG: mean/std luminance, fraction of near-black pixels, distinct (quantised)
 *  colours, a spot on an object to click (`target`), and the mean absolute difference in grey
 *  levels per channel to `previous` (`diff`) and to `reference` (`refDiff`), if given. */
async function analyse(png, previous = null, reference = null) {
  const b64 = png.toString("base64");
  const prevB64 = previous ? previous.toString("base64") : null;
  const refB64 = reference ? reference.toString("base64") : null;
  return analysisPage.evaluate(
    async ({ b64, prevB64, refB64, minShare }) => {
      async function pixels(data) {
        const img = await createImageBitmap(await (await fetch(`data:image/png;base64,${data}`)).blob());
        const cv = new OffscreenCanvas(img.width, img.height);
        const ctx = cv.getContext("2d");
        ctx.drawImage(img, 0, 0);
        return { w: img.width, h: img.height, d: ctx.getImageData(0, 0, img.width, img.height).data };
      }
      const { w, h, d } = await pixels(b64);
      const n = w * h;
      let sum = 0;
      let sum2 = 0;
      let black = 0;
      const colours = new Map();
      for (let i = 0; i < n; i++) {
        const r = d[4 * i], g = d[4 * i + 1], b = d[4 * i + 2];
        const y = 0.299 * r + 0.587 * g + 0.114 * b;
        sum += y;
        sum2 += y * y;
        if (r < 24 && g < 24 && b < 24) black++;
        const key = ((r >> 4) << 8) | ((g >> 4) << 4) | (b >> 4);
        colours.set(key, (colours.get(key) || 0) + 1);
      }
      const mean = sum / n;
      const std = Math.sqrt(Math.max(0, sum2 / n - mean * mean));
      // A spot to click on an object: split the flat colours covering 0.3-25% of the canvas
      // (objects, not the floor or background) into connected regions and take the one that is
      // biggest and most compact (fills its bounding box: a blob, not a ragged fragment), then
      // its "solid" pixel (whole neighbourhood the same colour) nearest to the region's centre.
      const q = (i) => ((d[4 * i] >> 4) << 8) | ((d[4 * i + 1] >> 4) << 4) | (d[4 * i + 2] >> 4);
      const wanted = new Set(
        [...colours.entries()]
          .filter(([k, c]) => k > 0x222 && c / n > 0.003 && c / n < 0.25)
          .sort((a, b) => b[1] - a[1])
          .slice(0, 16)
          .map(([k]) => k),
      );
      const seen = new Uint8Array(n);
      const R = 6;
      // Same flat colour, up to JPEG noise.
      const TOL = 40;
      const near = (i, j) =>
        Math.abs(d[4 * i] - d[4 * j]) < TOL && Math.abs(d[4 * i + 1] - d[4 * j + 1]) < TOL && Math.abs(d[4 * i + 2] - d[4 * j + 2]) < TOL;
      const solid = (x, y, seed) => {
        if (x < R || y < R || x >= w - R || y >= h - R) return false;
        for (let dy = -R; dy <= R; dy += 3) for (let dx = -R; dx <= R; dx += 3) if (!near((y + dy) * w + x + dx, seed)) return false;
        return true;
      };
      let target = null;
      let bestScore = 0;
      const stack = new Int32Array(n);
      for (let start = 0; start < n; start++) {
        const key = q(start);
        if (seen[start] || !wanted.has(key)) continue;
        let top = 0, size = 0, sx = 0, sy = 0, x0 = w, x1 = 0, y0 = h, y1 = 0;
        const members = [];
        stack[top++] = start;
        seen[start] = 1;
        while (top) {
          const i = stack[--top];
          const x = i % w, y = (i / w) | 0;
          size++; sx += x; sy += y;
          if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
          if (x % 3 === 0 && y % 3 === 0) members.push(i);
          for (const j of [x > 0 ? i - 1 : -1, x < w - 1 ? i + 1 : -1, y > 0 ? i - w : -1, y < h - 1 ? i + w : -1]) {
            if (j >= 0 && !seen[j] && near(j, start)) { seen[j] = 1; stack[top++] = j; }
          }
        }
        if (size / n < minShare || size / n > 0.15) continue;
        const fill = size / ((x1 - x0 + 1) * (y1 - y0 + 1));
        const score = size * fill * fill;
        if (score <= bestScore) continue;
        const cx = sx / size, cy = sy / size;
        let pick = null, pickDist = Infinity;
        for (const i of members) {
          const x = i % w, y = (i / w) | 0;
          const dist = Math.hypot(x - cx, y - cy);
          if (dist < pickDist && solid(x, y, start)) { pick = i; pickDist = dist; }
        }
        if (pick === null) continue;
        // Skip a piece of something huge (floor, background) that happens to be cut into parts.
        let family = 0;
        for (let i = 0; i < n; i += 7) if (near(i, start)) family++;
        if ((7 * family) / n > 0.15) continue;
        bestScore = score;
        target = { x: (pick % w) / w, y: ((pick / w) | 0) / h, share: size / n, fill, rgb: [d[4 * pick], d[4 * pick + 1], d[4 * pick + 2]] };
      }
      async function meanDiff(otherB64) {
        if (!otherB64) return null;
        const p = await pixels(otherB64);
        if (p.w !== w || p.h !== h) return 255;
        let s = 0;
        for (let i = 0; i < d.length; i += 4) s += Math.abs(d[i] - p.d[i]) + Math.abs(d[i + 1] - p.d[i + 1]) + Math.abs(d[i + 2] - p.d[i + 2]);
        return s / (3 * n);
      }
      const diff = await meanDiff(prevB64);
      const refDiff = await meanDiff(refB64);
      return { w, h, mean, std, blackFrac: black / n, distinct: colours.size, target, diff, refDiff };
    },
    { b64, prevB64, refB64, minShare: MIN_SHARE },
  );
}

async function resolutionText(page) {
  // nerfstudio's stats markdown: "Step: N  \nResolution: WxHpx".
  const body = await page.locator("body").innerText().catch(() => "");
  const m = body.match(/Resolution:\s*(\d+)x(\d+)px/);
  return m ? { w: Number(m[1]), h: Number(m[2]) } : null;
}

/**
 * Poll the canvas until `accept(stats)` holds and the image is stable over two polls
 * (nerfstudio renders a low-res frame first, then the full-res one once the camera is still).
 * `reference` (a PNG) makes `stats.refDiff` available to `accept`.
 */
async function waitForFrame(page, what, accept, { reference = null, timeoutS = TIMEOUT_S, intervalMs = 3000 } = {}) {
  const deadline = Date.now() + timeoutS * 1000;
  let last = null;
  let lastStats = null;
  const fmt = (v) => (v === null || v === undefined ? "-" : v.toFixed(1));
  while (Date.now() < deadline) {
    const clip = await canvasClip(page);
    if (clip && clip.width > 50 && clip.height > 50) {
      const png = await page.screenshot({ clip });
      const stats = await analyse(png, last, reference);
      const res = await resolutionText(page);
      const ok = accept(stats, res);
      const stable = stats.diff !== null && stats.diff < 1.0;
      log(`${what}: std=${fmt(stats.std)} black=${fmt(100 * stats.blackFrac)}% colours=${stats.distinct} ` +
          `diffPrev=${fmt(stats.diff)} diffRef=${fmt(stats.refDiff)} res=${res ? `${res.w}x${res.h}` : "?"} ok=${ok}`);
      if (ok && stable) return { png, stats, clip };
      last = ok ? png : null; // only count stability once the frame is acceptable
      lastStats = stats;
    }
    await sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutS}s waiting for ${what} (last: ${JSON.stringify(lastStats)})`);
}

// ---------------------------------------------------------------------------------------------
// Viser (Mantine) controls, found by their label text.

/** The row of a viser GUI input whose label is exactly `label`. */
function rowOf(page, label) {
  // viser renders `<label>` text next to the input inside a flex row.
  return page
    .locator("label", { hasText: new RegExp(`^\\s*${label.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\s*$`) })
    .first();
}

async function chooseDropdown(page, label, value) {
  let input = page.getByLabel(label, { exact: true }).first();
  if (!(await input.count())) {
    // Fallback: the first input after the label in document order.
    input = rowOf(page, label).locator("xpath=following::input[1]");
  }
  await input.scrollIntoViewIfNeeded();
  await input.click();
  const option = page.getByRole("option", { name: value, exact: true }).first();
  await option.waitFor({ state: "visible", timeout: 10000 });
  await option.click();
  await page.keyboard.press("Escape").catch(() => {});
  const now = await input.inputValue().catch(() => "?");
  log(`"${label}" is now "${now}"`);
  if (now !== value) throw new Error(`could not set "${label}" to "${value}" (shows "${now}")`);
}

/** Cosmetics for the picture: hide images that could not load (the nerfstudio logo is fetched
 *  from the internet, which we block) and the training-camera frustums. */
async function tidy(page) {
  await page.evaluate(() => {
    for (const img of document.querySelectorAll("img")) if (!img.complete || img.naturalWidth === 0) img.style.visibility = "hidden";
  });
  const hide = page.getByRole("button", { name: "Hide Train Cams" }).first();
  if (await hide.isVisible().catch(() => false)) {
    await hide.click();
    log("hid the training cameras");
  }
}

async function openTab(page, name) {
  const tab = page.getByRole("tab", { name, exact: true }).first();
  if (await tab.count()) await tab.click();
}

// ---------------------------------------------------------------------------------------------
async function main() {
  const targets = ["viewer_instance.png", "viewer_selection.png", "viewer_only_selection.png"].map((n) => path.join(OUT_DIR, n));
  const existing = targets.filter((t) => fs.existsSync(t));
  if (existing.length && !OVERWRITE) {
    console.error(`${existing.join(", ")} already exist(s): pass --overwrite to replace, or --out-dir another folder.`);
    process.exit(2);
  }
  fs.mkdirSync(OUT_DIR, { recursive: true });
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "ulift-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: VIEWPORT,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // WebGL through SwiftShader: the viewer's canvas is three.js.
      "--use-angle=swiftshader",
      "--enable-unsafe-swiftshader",
    ],
  });
  let failed = false;
  try {
    // Only loopback traffic: block anything else the client might ask for.
    await context.route("**/*", (route) => {
      const u = new globalThis.URL(route.request().url());
      if (["127.0.0.1", "localhost"].includes(u.hostname) || u.protocol === "data:" || u.protocol === "blob:") return route.continue();
      return route.abort();
    });
    analysisPage = await context.newPage();
    const page = await context.newPage();
    page.on("pageerror", (e) => log("page error:", e.message));
    log(`opening ${URL}`);
    await page.goto(URL, { waitUntil: "domcontentloaded", timeout: 60000 });
    await page.getByText("Output type", { exact: true }).first().waitFor({ timeout: TIMEOUT_S * 1000 });
    log("control panel is up");
    if (DUMP_DOM) fs.writeFileSync(path.join(OUT_DIR, "viewer_dom.html"), await page.content());
    await tidy(page);
    await openTab(page, "Control");
    // The GUI state lives on the server, so a previous run may have left another output selected.
    await chooseDropdown(page, "Output type", "rgb");

    // 1. An RGB frame: a real render is not uniform and has many colours.
    const rgb = await waitForFrame(page, "rgb frame", (s) => s.std > 8 && s.distinct > 150);

    // 2. The `instance` output: same view, clearly different pixels (flat palette colours).
    await chooseDropdown(page, "Output type", "instance");
    const inst = await waitForFrame(page, "instance frame", (s) => s.refDiff > 8 && s.distinct > 8, { reference: rgb.png });
    await page.mouse.move(VIEWPORT.width / 2, 5); // off the panel: no tooltips in the picture
    await sleep(1000);
    const instPath = path.join(OUT_DIR, "viewer_instance.png");
    await page.screenshot({ path: instPath });
    log(`saved ${instPath}`);

    // 3. Optional: tick "Click to select", click an object, show the `selection` output.
    if (WANT_SELECTION) {
      try {
        const t = inst.stats.target;
        if (!t) throw new Error("found no object-sized flat colour region to click");
        // The selection lives on the server: start from an empty one.
        await page.getByRole("button", { name: "Clear selection", exact: true }).first().click();
        log("cleared the selection");
        const checkbox = page.getByLabel("Click to select", { exact: true }).first();
        await checkbox.scrollIntoViewIfNeeded();
        await checkbox.check();
        log("ticked 'Click to select'");
        await sleep(2000); // let the server register its pointer callback
        const box = inst.clip;
        const x = box.x + t.x * box.width;
        const y = box.y + t.y * box.height;
        log(`clicking the region coloured rgb(${t.rgb}) (${(100 * t.share).toFixed(1)}% of the canvas, ` +
            `fills ${(100 * t.fill).toFixed(0)}% of its box) at (${x.toFixed(0)}, ${y.toFixed(0)})`);
        await page.mouse.click(x, y);
        await sleep(3000); // the click renders a label image on the server
        await chooseDropdown(page, "Output type", "selection");
        // Default "Show" mode is "highlight": the picked object tinted, everything else dimmed.
        const sel = await waitForFrame(page, "selection frame", (s) => s.refDiff > 8, { reference: inst.png });
        // Keep our controls in view for the picture, and the pointer off any tooltip.
        await page.getByText("Custom Elements", { exact: true }).first().scrollIntoViewIfNeeded().catch(() => {});
        await page.mouse.move(VIEWPORT.width / 2, 5);
        await sleep(1000);
        const selPath = path.join(OUT_DIR, "viewer_selection.png");
        await page.screenshot({ path: selPath });
        log(`saved ${selPath}`);
        // "only selection": the picked object's Gaussians alone (per-Gaussian 3D labels, as export uses).
        await chooseDropdown(page, "Show", "only selection");
        await waitForFrame(page, "only-selection frame", (s) => s.refDiff > 4, { reference: sel.png });
        await page.mouse.move(VIEWPORT.width / 2, 5);
        await sleep(1000);
        const onlyPath = path.join(OUT_DIR, "viewer_only_selection.png");
        await page.screenshot({ path: onlyPath });
        log(`saved ${onlyPath}`);
      } catch (err) {
        log(`selection screenshot skipped: ${err.message}`);
      }
    }
  } catch (err) {
    failed = true;
    console.error(`FAILED: ${err.stack || err.message}`);
  } finally {
    await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.exit(failed ? 1 : 0);
}

main();
