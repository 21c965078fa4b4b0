// Live logs: the task `ticker` of CAUCE_DATA.run waits for CAUCE_DATA.gate to exist, then
// prints `tick N` every 0.3 s (N = 1..CAUCE_DATA.lines). The page opens the run, selects
// ticker's log, opens the gate, and must show lines while #run-state is still `running`.
import fs from 'node:fs';
import {
  DATA, spec, asViewer, go, shots, runState, waitRunState, expect, until, Fatal,
} from './lib.mjs';

const ticks = (page) => page.evaluate(() => {
  const t = document.querySelector('#log-view')?.textContent || '';
  return (t.match(/tick \d+/g) || []).length;
});

await spec('logs', async (t) => {
  const page = await t.page();

  await t.step('the run page of the running run loads', async () => {
    try {
      await asViewer(page);
      await go(page, `#/runs/${DATA.run}`, 'run');
      await waitRunState(page, 'running', 5000);
    } catch (e) {
      throw new Fatal(e.message);
    }
  });

  await t.step('selecting the task\'s log shows #log-view', async () => {
    try {
      await page.click(`button[data-logs="${DATA.task}"]`);
      await page.locator('#log-view').waitFor({ state: 'visible', timeout: 5000 });
    } catch (e) {
      throw new Fatal(e.message);
    }
  });

  let opened;
  await t.step('lines appear in #log-view while the run is running', async () => {
    fs.writeFileSync(DATA.gate, 'go\n');
    opened = Date.now();
    await until(async () => (await ticks(page)) >= 1, { timeout: 5000, message: 'a first `tick` line in #log-view' });
    t.timing('gate opened to first line shown', Date.now() - opened);
    const first = await runState(page);
    expect(/running/.test(first), `#run-state says "${first}" when the first line shows`);
    // More lines keep coming while it is still running (not one load after the end).
    await until(async () => (await ticks(page)) >= 5, { timeout: 5000, message: 'five `tick` lines in #log-view' });
    const state = await runState(page);
    const n = await ticks(page);
    expect(/running/.test(state), `#run-state says "${state}" with ${n} of ${DATA.lines} lines shown`);
    expect(n < DATA.lines, `all ${n} lines were already shown`);
    console.log(`lines shown while running: ${n} of ${DATA.lines}, ${Date.now() - opened} ms after the gate opened`);
    await shots(page, 'logs-live', { dark: false });
  });

  await t.step('every line shows once the run ends, the run says success', async () => {
    await waitRunState(page, 'success', 15000);
    await until(async () => (await ticks(page)) === DATA.lines, { timeout: 5000, message: `${DATA.lines} tick lines` });
    const dupes = await page.evaluate(() => {
      const all = (document.querySelector('#log-view')?.textContent || '').match(/tick \d+/g) || [];
      return all.length - new Set(all).size;
    });
    expect(dupes === 0, `${dupes} duplicated lines in #log-view`);
    await shots(page, 'logs-done');
  });
});
