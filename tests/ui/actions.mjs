// Cancel and retry from the run page, as the operator:
// - CAUCE_DATA.slow_run (a `sleep 30`): #cancel-run ends it `cancelled` within a few seconds;
// - CAUCE_DATA.fixable_run (failed; the Rust side has since created the file it needs):
//   #retry-run makes it succeed;
// - CAUCE_DATA.pair_run (partial: q and r failed, only q's file was created since):
//   button[data-retry-task="q"] re-runs q alone (the Rust side counts attempts afterwards).
import {
  DATA, spec, asOperator, go, shots, waitRunState, text, expect, until, Fatal,
} from './lib.mjs';

const taskState = (page, id) => page.evaluate(
  (i) => document.querySelector(`#tasks tr[data-task="${i}"]`)?.dataset.state || '', id,
);

await spec('actions', async (t) => {
  const page = await t.page();

  await t.step('the operator signs in', async () => {
    try {
      await asOperator(page);
    } catch (e) {
      throw new Fatal(e.message);
    }
  });

  await t.step('#cancel-run cancels a running run within a few seconds', async () => {
    await go(page, `#/runs/${DATA.slow_run}`, 'run');
    await waitRunState(page, 'running', 5000);
    await shots(page, 'cancel-before', { dark: false });
    const t0 = Date.now();
    await page.click('#cancel-run');
    await waitRunState(page, 'cancelled', 6000);
    t.timing('cancel click to cancelled', Date.now() - t0);
    await shots(page, 'cancel-after');
  });

  await t.step('#retry-run re-runs a failed run whose cause was fixed: success', async () => {
    await go(page, `#/runs/${DATA.fixable_run}`, 'run');
    await waitRunState(page, 'failed', 5000);
    await shots(page, 'retry-run-before', { dark: false });
    const t0 = Date.now();
    await page.click('#retry-run');
    await waitRunState(page, 'success', 20000);
    t.timing('retry click to success', Date.now() - t0);
    await shots(page, 'retry-run-after');
  });

  await t.step('button[data-retry-task] re-runs one task', async () => {
    await go(page, `#/runs/${DATA.pair_run}`, 'run');
    await waitRunState(page, ['partial', 'failed'], 5000);
    expect(await taskState(page, 'q') === 'failed', `task q shows "${await taskState(page, 'q')}" before the retry`);
    await page.click('button[data-retry-task="q"]');
    await until(async () => (await taskState(page, 'q')) === 'success', {
      timeout: 20000, message: 'tr[data-task="q"] to show success',
    });
    await until(async () => !/running/.test(await text(page, '#run-state')), {
      timeout: 10000, message: '#run-state to leave running',
    });
    expect(await taskState(page, 'r') === 'failed', `task r shows "${await taskState(page, 'r')}"; it was not retried`);
    await shots(page, 'retry-task-after');
  });
});
