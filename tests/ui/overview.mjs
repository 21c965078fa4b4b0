// Overview: the numbers of each pipeline's row are the ones the Rust side computed from
// GET /api/v1/runs (CAUCE_DATA.expected), the running run is listed, and the filters narrow
// the table.
import {
  DATA, spec, asViewer, waitLoaded, shots, setFilter, expect, expectEq, until, Fatal,
} from './lib.mjs';

const visibleRows = (page) => page.evaluate(() =>
  [...document.querySelectorAll('#overview tr[data-pipeline]')]
    .filter((r) => r.getClientRects().length > 0 && getComputedStyle(r).visibility !== 'hidden')
    .map((r) => r.dataset.pipeline)
    .sort());

async function expectRows(page, want, what) {
  const sorted = [...want].sort();
  try {
    await until(async () => JSON.stringify(await visibleRows(page)) === JSON.stringify(sorted), { timeout: 3000, message: what });
  } catch (_) {
    expectEq(await visibleRows(page), sorted, `${what}: visible rows`);
  }
}

async function clearFilters(page) {
  for (const sel of ['#filter-name', '#filter-state', '#filter-category']) {
    const tag = await page.$eval(sel, (e) => e.tagName.toLowerCase());
    if (tag === 'select') await page.selectOption(sel, { index: 0 });
    else await page.fill(sel, '');
  }
}

await spec('overview', async (t) => {
  const page = await t.page();
  const expected = DATA.expected;

  await t.step('viewer signs in and the overview loads', async () => {
    try {
      await asViewer(page);
      await waitLoaded(page, 'overview');
    } catch (e) {
      throw new Fatal(e.message);
    }
  });

  await t.step('each pipeline row shows the success rates, run count and last state of the store', async () => {
    const problems = [];
    for (const [name, want] of Object.entries(expected)) {
      const row = `#overview tr[data-pipeline="${name}"]`;
      if (!(await page.$(row))) {
        problems.push(`no row ${row}`);
        continue;
      }
      const cell = async (col) => ((await page.textContent(`${row} td[data-col="${col}"]`)) || '').trim();
      const got = {
        success7: await cell('success7'),
        success30: await cell('success30'),
        runs7: await cell('runs7'),
        last: (await cell('last-state')).toLowerCase(),
      };
      if (got.success7 !== want.success7) problems.push(`${name} success7 "${got.success7}", expected "${want.success7}"`);
      if (got.success30 !== want.success30) problems.push(`${name} success30 "${got.success30}", expected "${want.success30}"`);
      if (got.runs7 !== String(want.runs7)) problems.push(`${name} runs7 "${got.runs7}", expected "${want.runs7}"`);
      if (want.last_state) {
        if (!new RegExp(`\\b${want.last_state}\\b`).test(got.last)) problems.push(`${name} last-state "${got.last}", expected "${want.last_state}"`);
      } else if (/success|failed|running|partial|cancelled/.test(got.last)) {
        problems.push(`${name} has no runs but last-state says "${got.last}"`);
      }
    }
    expect(problems.length === 0, problems.join('\n'));
  });

  await t.step('#running lists the running run', async () => {
    const links = await page.$$eval('#running a[data-run]', (as) => as.map((a) => a.dataset.run));
    expectEq(links, [DATA.running], '#running a[data-run]');
  });

  await t.step('screenshots of the overview', () => shots(page, 'overview'));

  await t.step('#filter-name narrows the table to matching names', async () => {
    await clearFilters(page);
    await expectRows(page, Object.keys(expected), 'no filter');
    await setFilter(page, '#filter-name', DATA.name_filter);
    await expectRows(page, DATA.name_match, `#filter-name "${DATA.name_filter}"`);
    await shots(page, 'overview-filter-name', { dark: false });
  });

  await t.step('#filter-state narrows the table to pipelines whose last run is in that state', async () => {
    await clearFilters(page);
    for (const [state, want] of Object.entries(DATA.state_match)) {
      await setFilter(page, '#filter-state', state);
      await expectRows(page, want, `#filter-state "${state}"`);
    }
    await setFilter(page, '#filter-state', 'failed');
    await shots(page, 'overview-filter-state', { dark: false });
  });

  await t.step('#filter-category narrows the table to pipelines with a task of that category', async () => {
    await clearFilters(page);
    await setFilter(page, '#filter-category', DATA.category);
    await expectRows(page, DATA.category_match, `#filter-category "${DATA.category}"`);
    await shots(page, 'overview-filter-category', { dark: false });
    await clearFilters(page);
    await expectRows(page, Object.keys(expected), 'filters cleared');
  });

  await t.step('the keyboard alone reaches a pipeline and opens it', async () => {
    const name = Object.keys(expected)[0];
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    let reached = false;
    for (let i = 0; i < 60 && !reached; i++) {
      await page.keyboard.press('Tab');
      reached = await page.evaluate(
        (n) => {
          const a = document.activeElement;
          return !!a && a.tagName === 'A' && !!a.closest(`tr[data-pipeline="${n}"]`);
        },
        name,
      );
    }
    expect(reached, `Tab never reached the link of ${name}`);
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    expect(outline !== 'none', 'the focused link shows a focus outline');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.body.dataset.page === 'pipeline', null, { timeout: 10000 });
  });
});
