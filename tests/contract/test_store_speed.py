"""How fast the store is, printed (run with -s to see); asserts only what was
done, never a timing, so a slow machine cannot fail it."""

from __future__ import annotations

import time
from pathlib import Path

from engine.store import Store
from tests.contract.store_helpers import make_spec


def test_throughput_report(tmp_path: Path) -> None:
    n = 3000
    specs = [make_spec(f"job-{i}", argv=("python", "-m", "train", f"--seed={i}"))
             for i in range(n)]
    with Store(tmp_path / "engine.db") as store:
        t0 = time.perf_counter()
        for spec in specs:
            store.submit(spec, 1000, actor="bench", now=time.time())
        single = n / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for k in range(0, n, 100):
            store.submit_many([(s, 1000, ()) for s in specs[k:k + 100]], actor="bench",
                              now=time.time())
        batched = n / (time.perf_counter() - t0)
        store.submit_many([(s, 1000, ()) for s in specs] * 2, actor="bench", now=time.time())

    with Store(tmp_path / "engine.db") as store:
        t0 = time.perf_counter()
        cold = store.list_jobs()
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = store.list_jobs()
        t_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        pending = store.pending()
        t_pending = time.perf_counter() - t0
        t0 = time.perf_counter()
        page = store.list_jobs(limit=50)
        t_page = time.perf_counter() - t0

    assert len(cold) == len(warm) == len(pending) == 4 * n and len(page) == 50
    print(
        f"\nstore: submit {single:,.0f}/s single-threaded, {batched:,.0f}/s in batches of 100;"
        f" list_jobs of {len(cold):,}: {t_cold * 1e3:.0f} ms cold, {t_warm * 1e3:.0f} ms warm;"
        f" pending() {t_pending * 1e3:.0f} ms; first page of 50 {t_page * 1e3:.2f} ms"
    )
