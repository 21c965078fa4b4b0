// Pipeline page: the DAG's task states after a failing run (a -> b (fails) -> c, d alone),
// and after choosing the earlier, successful run in #run-select.
import {
  DATA, spec, asViewer, go, shots, expect, expectEq, until, Fatal,
} from './lib.mjs';

const dagStates = (page) => page.evaluate(() => Object.fromEntries(
  [...document.querySelectorAll('#dag svg g[data-task]')]
    .map((g) => [g.dataset.task, g.dataset.state])
    .sort((x, y) => (x[0] < y[0] ? -1 : 1)),
));
const sorted = (o) => Object.fromEntries(Object.entries(o).sort((x, y) => (x[0] < y[0] ? -1 : 1)));

async function expectStates(page, wanted, what) {
  const want = sorted(wanted);
  try {
    await until(async () => JSON.stringify(await dagStates(page)) === JSON.stringify(want), { timeout: 5000, message: what });
  } catch (_) {
    expectEq(await dagStates(page), want, what);
  }
}

await spec('dag', async (t) => {
  const page = await t.page();
  const route = `#/pipelines/${DATA.pipeline}`;

  await t.step('the pipeline page loads', async () => {
    try {
      await asViewer(page);
      t.timing('pipeline page load', await go(page, route, 'pipeline'));
    } catch (e) {
      throw new Fatal(e.message);
    }
  });

  await t.step('the DAG has one node per task', async () => {
    const tasks = Object.keys(await dagStates(page)).sort();
    expectEq(tasks, ['a', 'b', 'c', 'd'], '#dag svg g[data-task]');
  });

  await t.step('the latest run is selected: a=success, b=failed, c=skipped, d=success', async () => {
    await expectStates(page, DATA.failed_states, 'DAG states of the failing run');
  });

  await t.step('#history lists both runs and #source shows the pipeline file', async () => {
    const history = await page.$eval('#history', (e) => e.innerHTML);
    for (const id of [DATA.failed_run, DATA.ok_run]) expect(history.includes(id), `#history does not mention run ${id}`);
    const source = await page.$eval('#source', (e) => e.textContent);
    expect(source.includes('depends_on'), `#source does not show the pipeline file: "${source.slice(0, 200)}"`);
  });

  await t.step('screenshots of the failed run\'s DAG', () => shots(page, 'dag-failed'));

  await t.step('#run-select picks the earlier run: every task success', async () => {
    const opts = await page.$$eval('#run-select option', (os) => os.map((o) => ({ v: o.value, l: o.textContent })));
    const hit = opts.find((o) => o.v === DATA.ok_run) || opts.find((o) => o.l.includes(DATA.ok_run));
    expect(hit, `#run-select has no option for run ${DATA.ok_run}: ${JSON.stringify(opts)}`);
    await page.selectOption('#run-select', hit.v);
    await expectStates(page, { a: 'success', b: 'success', c: 'success', d: 'success' }, 'DAG states of the successful run');
    await shots(page, 'dag-success', { dark: false });
  });
});
