// Open one OHIF v3 viewer URL in headless Chromium (puppeteer-core, Debian's /usr/bin/chromium) and
// report what a user would see, as one JSON object on stdout.
//
// Arguments: a JSON object as argv[2], or on stdin:
//   url          the OHIF route, e.g. http://127.0.0.1:PORT/viewer?StudyInstanceUIDs=..&initialSeriesInstanceUID=..
//   screenshot   where to write a full-page PNG (optional)
//   chromium     browser executable (default /usr/bin/chromium)
//   timeoutMs    the longest wait for the viewport to render (default 60000)
//   settleMs     how long to keep watching after it rendered, or after the first error (default 1500)
//   minAnnotations  keep waiting (within timeoutMs) until this many annotation shapes are drawn (default 0)
//   width, height   browser window size (default 1600 x 1000)
//
// Rendering: cornerstone3D draws each viewport into a 2D canvas (`.viewport-element canvas.cornerstone-canvas`)
// copied from its offscreen WebGL canvas, so its pixels can be read with getImageData. Annotations are
// SVG elements in each viewport's `svg.svg-layer` (polyline, line, path, circle, ellipse; labels in <text>).
import { readFileSync } from 'node:fs';
import puppeteer from 'puppeteer-core';

const started = Date.now();
const args = JSON.parse(process.argv[2] ?? readFileSync(0, 'utf8'));
const {
  url,
  screenshot = null,
  chromium = '/usr/bin/chromium',
  timeoutMs = 60000,
  settleMs = 1500,
  minAnnotations = 0,
  width = 1600,
  height = 1000,
} = args;

// OHIF's error boundary reports through console.debug; so do a few harmless libraries, hence the filter.
const ERROR_LIKE = /error|exception|cannot read|undefined|failed/i;
const ERROR_BOUNDARY = /Error Boundary/;
const pageErrors = [];
const consoleErrors = [];
const errorBoundary = [];
const httpErrors = [];
const timings = {};

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  // WebGL through SwiftShader: without it OHIF draws the image black (docs/viewer_testing.md).
  args: [
    '--no-sandbox',
    '--disable-dev-shm-usage',
    '--use-angle=swiftshader',
    '--enable-unsafe-swiftshader',
    '--no-first-run',
    '--no-default-browser-check',
    `--window-size=${width},${height}`,
  ],
  defaultViewport: { width, height },
});
// Chromium runs in its own process group; testkit/viewer.py kills that group if this script hangs.
process.stderr.write(`chromium pid ${browser.process()?.pid}\n`);

function collect() {
  // Runs in the page: canvases, annotation layers, visible text.
  const viewports = [...document.querySelectorAll('.viewport-element')].map(element => {
    const canvas = element.querySelector('canvas.cornerstone-canvas') ?? element.querySelector('canvas');
    const r = element.getBoundingClientRect();
    const out = { box: [r.x, r.y, r.width, r.height].map(Math.round), canvas: null, mean: null, std: null, shapes: 0, texts: [] };
    if (canvas && canvas.width > 0 && canvas.height > 0) {
      out.canvas = [canvas.width, canvas.height];
      try {
        const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
        let n = 0, sum = 0, sum2 = 0;
        const step = 4 * Math.max(1, Math.floor(data.length / 4 / 200000)); // at most ~200k samples
        for (let i = 0; i < data.length; i += step) {
          const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
          n++; sum += y; sum2 += y * y;
        }
        out.mean = sum / n;
        out.std = Math.sqrt(Math.max(0, sum2 / n - out.mean * out.mean));
      } catch (error) {
        out.pixelError = String(error);
      }
    }
    for (const svg of element.querySelectorAll('svg.svg-layer')) {
      out.shapes += svg.querySelectorAll('polyline, line, path, circle, ellipse, polygon').length;
      out.texts.push(...[...svg.querySelectorAll('text')].map(t => t.textContent).filter(Boolean));
    }
    return out;
  });
  return { viewports, text: document.body ? document.body.innerText : '' };
}

const isRendered = state => state.viewports.some(v => v.mean !== null && v.mean > 5 && v.std > 5);
const shapes = state => state.viewports.reduce((n, v) => n + v.shapes, 0);

let state = { viewports: [], text: '' };
let fatal = null;
try {
  const page = await browser.newPage();
  await page.evaluateOnNewDocument(() => {
    localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
  });
  page.on('pageerror', error => pageErrors.push(String(error?.stack ?? error).split('\n').slice(0, 4).join('\n')));
  page.on('console', message => {
    const type = message.type();
    const text = message.text();
    if (type === 'error' || (type === 'debug' && ERROR_LIKE.test(text))) {
      consoleErrors.push({ type, text: text.slice(0, 2000) });
    }
    if (ERROR_BOUNDARY.test(text)) errorBoundary.push(text.slice(0, 2000));
  });
  page.on('response', response => {
    if (response.status() >= 400) httpErrors.push(`${response.status()} ${response.url()}`);
  });
  page.on('requestfailed', request => httpErrors.push(`failed ${request.url()} ${request.failure()?.errorText ?? ''}`));

  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: timeoutMs });
  timings.domContentLoaded = Date.now() - started;
  const deadline = started + timeoutMs;
  let settleUntil = null;
  while (Date.now() < deadline) {
    state = await page.evaluate(collect);
    const rendered = isRendered(state);
    if (rendered && timings.firstRendered === undefined) timings.firstRendered = Date.now() - started;
    const errored = pageErrors.length > 0 || errorBoundary.length > 0;
    if (settleUntil === null && (rendered || errored)) settleUntil = Date.now() + settleMs;
    const enoughShapes = shapes(state) >= minAnnotations;
    if (settleUntil !== null && Date.now() >= settleUntil && (enoughShapes || errored)) break;
    await new Promise(resolve => setTimeout(resolve, 250));
  }
  state = await page.evaluate(collect);
  timings.collected = Date.now() - started;
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
} catch (error) {
  fatal = String(error?.stack ?? error);
} finally {
  await browser.close();
}

const rendered = isRendered(state);
const result = {
  url,
  ok: fatal === null && rendered && pageErrors.length === 0 && errorBoundary.length === 0,
  rendered,
  pageErrors,
  errorBoundary,
  consoleErrors,
  httpErrors,
  text: state.text,
  svgText: state.viewports.flatMap(v => v.texts),
  annotationShapes: shapes(state),
  viewports: state.viewports.map(({ texts, ...rest }) => ({ ...rest, texts: texts.length })),
  fatal,
  timings: { ...timings, total: Date.now() - started },
  screenshot,
};
process.stdout.write(JSON.stringify(result) + '\n');
