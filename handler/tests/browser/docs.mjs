// Drives /api/docs in headless Chromium as a person would: authorise with a bearer token, run a
// list query and a POST with "Try it out", and read both answers off the page. Prints one JSON
// line of what it read; exits non-zero (with the reason) when a step fails.
//
//   node docs.mjs BASE_URL TOKEN [CHROMIUM]     (tests/browser.rs runs it against `handler serve`)
import { chromium } from "playwright-core";

const [base, token, executablePath = "/usr/bin/chromium"] = process.argv.slice(2);
if (!base || !token) {
  console.error("usage: node docs.mjs BASE_URL TOKEN [CHROMIUM]");
  process.exit(2);
}
const origin = new URL(base).origin;

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // Root in a container, no GPU, and a closed network: nothing in the background either.
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const result = { elsewhere: [], console_errors: [] };
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(20_000);
  // The page must load nothing from anywhere else: such a request is recorded and refused.
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(origin) || url.startsWith("data:")) return route.continue();
    result.elsewhere.push(url);
    return route.abort();
  });
  page.on("console", (m) => m.type() === "error" && result.console_errors.push(m.text()));

  await page.goto(`${base}/api/docs`);
  result.title = (await page.locator(".swagger-ui .info .title").first().innerText()).trim();

  // Authorize: the bearer scheme's dialog.
  await page.locator("button.btn.authorize").first().click();
  const dialog = page.locator(".modal-ux");
  await dialog.locator("input").first().fill(token);
  await dialog.locator("button.authorize").click();
  await dialog.locator("button.btn-done").click();

  result.list = await execute(page, "ListItems_movies", async (op) => {
    await op.locator('tr[data-param-name="genres"] input').fill("Western");
    await op.locator('tr[data-param-name="limit"] input').fill("5");
  });
  result.create = await execute(page, "CreateItem_movies", async (op) => {
    await op.locator("textarea.body-param__text").fill(
      JSON.stringify({ title: "Made on the docs page", year: 2026, genres: ["Western"] }),
    );
  });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));

/** Opens an operation, fills it in with `fill`, executes it and reads the status and body shown. */
async function execute(page, operationId, fill) {
  const op = page.locator(`#operations-default-${operationId}`);
  await op.locator(".opblock-summary").first().click();
  const tryOut = op.locator("button.try-out__btn").first();
  if ((await tryOut.innerText()).trim() === "Try it out") await tryOut.click();
  await fill(op);
  await op.locator("button.execute").click();
  const response = op.locator(".live-responses-table .response").first();
  const status = (await response.locator(".response-col_status").innerText()).trim();
  const body = await response.locator(".response-col_description pre").first().innerText();
  // The request Swagger UI shows it sent: it must carry the token.
  const curl = await op.locator(".curl-command").innerText().catch(() => "");
  return { status: Number(status), body: JSON.parse(body), sent_token: curl.includes(token) };
}
