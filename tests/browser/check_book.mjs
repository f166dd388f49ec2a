// Drive Debian's chromium (playwright-core) through the built book, served on 127.0.0.1, with the network
// cut off: every request outside the local server is aborted and reported.
//
//   node tests/browser/check_book.mjs --url http://127.0.0.1:8000/ [--shots DIR] [--chromium /usr/bin/chromium]
//
// Prints one JSON object: {ok, failures[], external[], errors[], steps{...}}; exit status 0 iff ok.
// Checks: the scrubber widget renders on layers.html; moving the sample slider (keyboard), pressing play,
// picking another layer and another test image each change the images shown; samples are numbered from 1
// and the filmstrip marks the sample the slider selects, with its predicted class in the caption; MathJax
// typesets on background.html; on every page, at 1280 and 390 px wide, nothing is wider than the text
// column unless it scrolls or is a full-width cell; every picture is a figure with a numbered caption, shown at
// least as wide as the figures were drawn for; no page error; no request leaves 127.0.0.1.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const base = arg("--url");
const shots = arg("--shots", null);
const exe = arg("--chromium", "/usr/bin/chromium");
if (!base) throw new Error("--url is required");
const origin = new URL(base).origin;
if (!/^http:\/\/127\.0\.0\.1(:\d+)?$/.test(origin)) throw new Error(`serve the book on 127.0.0.1, got ${origin}`);
if (shots) fs.mkdirSync(shots, { recursive: true });

const result = { ok: false, failures: [], external: [], errors: [], steps: {} };
const fail = (msg) => result.failures.push(msg);
const FIGURE_COLUMN_PX = 672; // = inversion.reports.common.COLUMN_PX (tests/test_reports_common.py keeps them equal)

const browser = await chromium.launch({
  executablePath: exe,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-default-apps", "--disable-sync"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(origin + "/") || url === origin) return route.continue();
    result.external.push(url);
    return route.abort();
  });
  const page = await context.newPage();
  page.on("pageerror", (e) => result.errors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") result.errors.push(`console: ${m.text()}`); });
  page.on("requestfailed", (r) => {
    if (r.url().startsWith(origin)) result.errors.push(`failed local request: ${r.url()}`);
  });

  // ---- the layer-inversion page and its scrubber ---------------------------------------------------
  await page.goto(new URL("layers.html", base).href, { waitUntil: "load" });
  const scrubber = page.locator(".inversion-scrubber");
  await scrubber.waitFor({ state: "visible", timeout: 30000 });
  await page.waitForFunction(() => {
    const imgs = [...document.querySelectorAll(".inversion-scrubber img")];
    return imgs.length >= 3 && imgs.every((i) => i.complete);
  }, null, { timeout: 30000 });
  await scrubber.scrollIntoViewIfNeeded();

  // The src of the image currently shown in one view (the Stack shows one child at a time).
  const shown = (cls) => page.evaluate((c) => {
    const vis = [...document.querySelectorAll(`.inversion-scrubber .${c} img`)].filter((i) => {
      const r = i.getBoundingClientRect();
      return r.width > 0 && r.height > 0 && i.offsetParent !== null;
    });
    return vis.map((i) => i.src.slice(-64)).join("|");
  }, cls);
  const readout = () => page.locator(".inversion-scrubber .scrub-slider .widget-readout").innerText();
  // The visible filmstrip: how many items, which one carries the marker (1-based), and its caption.
  const film = () => page.evaluate(() => {
    const items = [...document.querySelectorAll(".inversion-scrubber .scrub-filmstrip .scrub-film-item")]
      .filter((i) => i.offsetParent !== null && i.getBoundingClientRect().width > 0);
    const idx = items.findIndex((it) => [...it.querySelectorAll(".scrub-marker")].some((m) => m.innerText.includes("▲")));
    return { items: items.length, marked: idx + 1, caption: idx >= 0 ? items[idx].innerText : "" };
  });

  const s0 = await shown("scrub-samples");
  const r0 = await readout();
  result.steps.initial = { readout: r0, visible_samples: s0 ? s0.split("|").length : 0 };
  if (!s0) fail("no sample image is visible in the scrubber");
  if (s0 && s0.split("|").length !== 1) fail(`expected exactly one visible sample image, got ${s0.split("|").length}`);
  const f0 = await film();
  result.steps.filmstrip = { initial: f0 };
  if (r0.trim() !== "1") fail(`samples should be numbered from 1, the slider starts at ${r0}`);
  if (f0.items < 2) fail(`the filmstrip shows ${f0.items} samples`);
  if (f0.marked !== 1) fail(`the filmstrip marks sample ${f0.marked}, the slider shows 1`);
  if (!/class \d+ [✓✗]/.test(f0.caption)) fail(`the marked sample's caption has no predicted class: ${f0.caption}`);
  if (shots) await scrubber.screenshot({ path: path.join(shots, "scrubber-0.png") });

  // 1. move the slider with the keyboard
  const handle = page.locator(".inversion-scrubber .scrub-slider .noUi-handle").first();
  await handle.focus();
  await page.keyboard.press("ArrowRight");
  await page.keyboard.press("ArrowRight");
  await page.waitForTimeout(300);
  const s1 = await shown("scrub-samples");
  const r1 = await readout();
  result.steps.slider = { readout: r1, changed: s1 !== s0 };
  if (r1 === r0) fail(`the slider readout did not move (${r0})`);
  if (s1 === s0) fail("moving the slider did not change the sample image");
  const f1 = await film();
  result.steps.filmstrip.after_slider = f1;
  if (String(f1.marked) !== r1.trim()) fail(`the filmstrip marks sample ${f1.marked}, the slider shows ${r1}`);
  if (shots) await scrubber.screenshot({ path: path.join(shots, "scrubber-slider.png") });

  // 2. play: the value must advance on its own (this is what the Font Awesome clash used to break).
  //    Sample the readout while playing (from sample 3, it plays on to the last one): >= 2 distinct values.
  const playButton = page.locator(".inversion-scrubber .scrub-play button").first();
  await playButton.click();
  const seen = new Set();
  const seenImages = new Set();
  for (let t = 0; t < 16; t++) {
    await page.waitForTimeout(120);
    seen.add(await readout());
    seenImages.add(await shown("scrub-samples"));
  }
  await playButton.click().catch(() => {});  // the first button toggles play/pause
  const s2 = await shown("scrub-samples");
  result.steps.play = { readouts_seen: [...seen], distinct_images_seen: seenImages.size };
  if (seen.size < 2) fail(`play did not advance the slider (readouts seen: ${[...seen]})`);
  if (seenImages.size < 2) fail("play did not change the sample image");

  // 3. another layer: the reconstruction must change
  const rec0 = await shown("scrub-recon");
  const layerButtons = page.locator(".inversion-scrubber .scrub-layer button");
  const nLayers = await layerButtons.count();
  await layerButtons.nth(nLayers - 1).click();
  await page.waitForTimeout(300);
  const rec1 = await shown("scrub-recon");
  result.steps.layer = { buttons: nLayers, changed: rec1 !== rec0 };
  if (nLayers < 2) fail(`expected several layer buttons, got ${nLayers}`);
  if (rec1 === rec0) fail("choosing another layer did not change the MSE reconstruction");

  // 4. another test image: the input must change
  const in0 = await shown("scrub-input");
  const select = page.locator(".inversion-scrubber .scrub-image select");
  const nImages = await select.locator("option").count();
  if (nImages >= 2) {
    await select.selectOption({ index: 1 });
    await page.waitForTimeout(300);
    const in1 = await shown("scrub-input");
    result.steps.image = { options: nImages, changed: in1 !== in0 };
    if (in1 === in0) fail("choosing another test image did not change the input image");
  }
  if (shots) {
    await scrubber.screenshot({ path: path.join(shots, "scrubber-final.png") });
    await page.screenshot({ path: path.join(shots, "layers-page.png"), fullPage: true });
  }

  // ---- MathJax on the background page --------------------------------------------------------------
  await page.goto(new URL("background.html", base).href, { waitUntil: "load" });
  await page.waitForFunction(() => document.querySelectorAll("mjx-container").length > 0, null, { timeout: 30000 })
    .catch(() => fail("MathJax did not typeset background.html"));
  result.steps.mathjax = { containers: await page.locator("mjx-container").count() };
  if (shots) await page.screenshot({ path: path.join(shots, "background-page.png"), fullPage: true });

  await page.goto(new URL("index.html", base).href, { waitUntil: "load" });
  await page.waitForTimeout(500);
  if (shots) await page.screenshot({ path: path.join(shots, "intro-page.png"), fullPage: true });

  // ---- nothing wider than its column, at a desktop and at a phone width ------------------------------
  // An element may pass the article's right edge only inside a container that scrolls it (wide tables,
  // code) or in a cell tagged full-width (the theme widens those into the margin, within the window).
  result.steps.overflow = {};
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: 900 });
    for (const name of ["index", "background", "layers", "architectures", "dynamics", "inverters", "estimators"]) {
      // networkidle: leaving a page while its fonts still load would abort them (a failed local request)
      await page.goto(new URL(`${name}.html`, base).href, { waitUntil: "networkidle" });
      await page.waitForTimeout(200);
      const bad = await page.evaluate(() => {
        const art = document.querySelector(".bd-article");
        if (!art) return ["no .bd-article"];
        const right = art.getBoundingClientRect().right;
        const windowRight = document.documentElement.clientWidth;
        const out = [];
        for (const el of art.querySelectorAll("*")) {
          const r = el.getBoundingClientRect();
          if (r.width === 0) continue;
          const limit = el.closest(".tag_full-width") ? windowRight : right;
          if (r.right <= limit + 1) continue;
          let a = el.parentElement, scrolled = false;
          while (a && a !== art) {
            const ox = getComputedStyle(a).overflowX;
            if (["auto", "scroll", "hidden"].includes(ox) && a.getBoundingClientRect().right <= limit + 1) { scrolled = true; break; }
            a = a.parentElement;
          }
          if (!scrolled) out.push(`${el.tagName.toLowerCase()}${el.className && typeof el.className === "string" ? "." + el.className.split(" ")[0] : ""} +${Math.round(r.right - right)}px`);
        }
        return [...new Set(out)].slice(0, 5);
      });
      result.steps.overflow[`${name}@${width}`] = bad.length;
      if (bad.length) fail(`${name}.html at ${width} px: wider than the column: ${bad.join(", ")}`);
      // Every picture outside a widget is a numbered figure with a caption, and at 1280 px the figure's
      // column is at least FIGURE_COLUMN_PX wide: the width the figures' text sizes were checked for.
      const figs = await page.evaluate(() => [...document.querySelectorAll(".bd-article img")]
        .filter((i) => !i.closest(".jupyter-widgets, .widget-image, .inversion-scrubber"))
        .map((i) => {
          const f = i.closest("figure");
          const cap = f ? (f.querySelector("figcaption")?.innerText || "").trim() : "";
          return { cap: cap.slice(0, 60), box: f ? Math.round(f.getBoundingClientRect().width) : 0,
                   shown: Math.round(i.getBoundingClientRect().width), natural: i.naturalWidth };
        }));
      result.steps.figures = result.steps.figures || {};
      result.steps.figures[`${name}@${width}`] = figs.map((f) => f.cap.split(" ").slice(0, 2).join(" "));
      for (const f of figs) {
        if (!/^Fig\. \d+\.\d+ \S/.test(f.cap)) fail(`${name}.html: a picture without a numbered caption (${f.cap || "none"})`);
        if (width === 1280 && Math.min(f.natural, FIGURE_COLUMN_PX) > f.shown + 1)
          fail(`${name}.html at 1280 px: a figure of ${f.natural} px is shown at ${f.shown} px, narrower than ` +
               `the ${FIGURE_COLUMN_PX} px its text was sized for (inversion.reports.common.COLUMN_PX)`);
      }
    }
  }
  await page.setViewportSize({ width: 1280, height: 900 });

  if (result.external.length) fail(`${result.external.length} request(s) tried to leave 127.0.0.1`);
  if (result.errors.length) fail(`${result.errors.length} page error(s)`);
} catch (e) {
  fail(`exception: ${e.message}`);
} finally {
  await browser.close();
}
result.ok = result.failures.length === 0;
console.log(JSON.stringify(result, null, 1));
process.exit(result.ok ? 0 : 1);
