// A viewer sees no trigger form and no cancel/retry buttons, and the API refuses its POSTs
// with 403 even when they are made straight from the page. Then it signs out.
import {
  DATA, VIEWER, spec, asViewer, go, shots, anyVisible, api, waitRunState, expect, expectEq, Fatal,
} from './lib.mjs';

await spec('viewer', async (t) => {
  const page = await t.page();

  await t.step('the viewer signs in; #whoami shows its name and role', async () => {
    try {
      await asViewer(page);
    } catch (e) {
      throw new Fatal(e.message);
    }
  });

  await t.step('the pipeline page has no trigger form', async () => {
    await go(page, `#/pipelines/${DATA.pipeline}`, 'pipeline');
    expect(!(await anyVisible(page, '#trigger-form')), 'a viewer sees #trigger-form');
    expect(!(await anyVisible(page, '#trigger-submit')), 'a viewer sees #trigger-submit');
    await shots(page, 'viewer-pipeline');
  });

  await t.step('a running run has no cancel button', async () => {
    await go(page, `#/runs/${DATA.running_run}`, 'run');
    await waitRunState(page, 'running', 5000);
    expect(!(await anyVisible(page, '#cancel-run')), 'a viewer sees #cancel-run');
    await shots(page, 'viewer-running-run', { dark: false });
  });

  await t.step('a failed run has no retry buttons', async () => {
    await go(page, `#/runs/${DATA.failed_run}`, 'run');
    await waitRunState(page, 'failed', 5000);
    expect(!(await anyVisible(page, '#retry-run')), 'a viewer sees #retry-run');
    expect(!(await anyVisible(page, 'button[data-retry-task]')), 'a viewer sees button[data-retry-task]');
    expect(!(await anyVisible(page, '#cancel-run')), 'a viewer sees #cancel-run on an ended run');
    await shots(page, 'viewer-failed-run', { dark: false });
  });

  await t.step('POSTs with the viewer token get 403', async () => {
    const calls = [
      ['POST', `/api/v1/pipelines/${DATA.pipeline}/runs`, {}],
      ['POST', `/api/v1/runs/${DATA.running_run}/cancel`, {}],
      ['POST', `/api/v1/runs/${DATA.failed_run}/retry`, {}],
      ['POST', `/api/v1/runs/${DATA.failed_run}/tasks/${DATA.failed_task}/retry`, {}],
    ];
    const got = [];
    for (const [m, url, body] of calls) {
      const r = await api(page, m, url, VIEWER, body);
      got.push(`${m} ${url} -> ${r.status}`);
    }
    expectEq(got, calls.map(([m, url]) => `${m} ${url} -> 403`), 'answers to the viewer');
  });

  await t.step('#signout shows the sign-in form again', async () => {
    await page.click('#signout');
    await page.locator('#token').waitFor({ state: 'visible', timeout: 5000 });
    expect(!(await anyVisible(page, '#whoami')) || !(await page.textContent('#whoami')).includes('viewer'),
      '#whoami still shows the viewer after signing out');
    await shots(page, 'signed-out', { dark: false });
  });
});
