// Trigger form: the operator fills a typed param (an integer the task checks), submits, lands
// on the new run's page and sees it reach `success`. Prints `RUN_ID=<id>` for the Rust side.
import {
  DATA, spec, asOperator, go, shots, waitLoaded, waitRunState, expect, Fatal,
} from './lib.mjs';

await spec('trigger', async (t) => {
  const page = await t.page();
  let runId;

  await t.step('the operator opens the pipeline page', async () => {
    try {
      await asOperator(page);
      await go(page, `#/pipelines/${DATA.pipeline}`, 'pipeline');
    } catch (e) {
      throw new Fatal(e.message);
    }
  });

  await t.step('#trigger-form has an input per param', async () => {
    for (const p of DATA.params) {
      const n = await page.locator(`#trigger-form [name="param-${p}"]`).count();
      expect(n === 1, `#trigger-form has ${n} element(s) named param-${p}`);
    }
    try {
      await page.fill(`#trigger-form [name="param-${DATA.param}"]`, String(DATA.value));
    } catch (e) {
      throw new Fatal(`cannot fill param-${DATA.param}: ${e.message}`);
    }
    await shots(page, 'trigger-form');
  });

  await t.step('submitting lands on the new run\'s page', async () => {
    try {
      await page.click('#trigger-submit');
      await page.waitForFunction(() => /^#\/runs\/[^/]+$/.test(location.hash), null, { timeout: 10000 });
      await waitLoaded(page, 'run');
    } catch (e) {
      throw new Fatal(`after #trigger-submit: ${e.message} (hash ${await page.evaluate(() => location.hash)})`);
    }
    runId = decodeURIComponent((await page.evaluate(() => location.hash)).replace('#/runs/', ''));
    console.log(`RUN_ID=${runId}`);
  });

  await t.step('the run reaches success', async () => {
    await waitRunState(page, 'success', 20000);
    await shots(page, 'trigger-run-success');
  });
});
