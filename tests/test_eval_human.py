"""Human evaluation: packet composition, blinding, import validation, and the annotation page in a real
headless Chromium (rate with clicks and keys, reload, export, import, agreement against a hand computation)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evalsuite import agreement
from evalsuite.data import LANGS, N_EVAL, load_eval, load_modifiers, load_tasks
from records.files import atomic_write_parquet
from records.schemas import JUDGE_CRITERIA
from reporting import human

REPO = Path(__file__).resolve().parents[1]
RUNS = {  # run name -> run.json fields
    "tiny-anchor-lr0.0001": {"group": "Tiny / Dolly-En / FT", "lr": 1e-4, "anchor": True},
    "tiny-lima-lr0.0001": {"group": "Tiny / LIMA-En / FT", "lr": 1e-4, "anchor": False},
    "tiny-base": {"group": "Tiny / base", "lr": None, "anchor": False, "method": "none"},
}
HOSTILE = '<script>window.pwned = 1</script><b>bold?</b> & "quotes"\n    indented line'


def _generation_rows(run: str, k: int) -> list[dict]:
    rows = []
    records = [r for lang in LANGS for r in load_eval(lang)] + [r for r in load_modifiers("en")[:5]]
    for j, rec in enumerate(records):
        text = HOSTILE if (rec.item == 0 and k == 0) else f"Answer {k}.{j}:\n  keep   spacing"
        rows.append(
            {
                **rec.to_row(),
                "response": text,
                "prompt_tokens": 10,
                "response_tokens": 5,
                "finish_reason": "stop",
                "model": f"model-{k}",
                "decoding": "{}",
            }
        )
    return rows


def make_runs(root: Path, runs: dict[str, dict] = RUNS) -> Path:
    for k, (name, meta) in enumerate(runs.items()):
        d = root / name
        d.mkdir(parents=True)
        full = {
            "run": name,
            "config": f"configs/{name}.py",
            "config_hash": f"h{k}",
            "label": meta["group"],
            "base_model": "tiny",
            "data": "dolly_en",
            "method": "ft",
            **meta,
        }
        (d / "run.json").write_text(json.dumps(full))
        atomic_write_parquet(pa.Table.from_pylist(_generation_rows(name, k)), d / "generations.parquet")
    return root


@pytest.fixture(scope="module")
def packet(tmp_path_factory):
    root = tmp_path_factory.mktemp("human")
    runs = make_runs(root / "runs")
    key = human.export_packet(runs, root / "packet", n_items=30, seed=0)
    return runs, root / "packet", key


def test_stratified_items_cover_every_task_deterministically():
    tasks = load_tasks()
    items = human.stratified_items(range(N_EVAL), 30, seed=0)
    assert len(items) == 30 == len(set(items))
    per_task = {t.name: sum(t.first <= i <= t.last for i in items) for t in tasks}
    assert min(per_task.values()) == 1 and max(per_task.values()) == 2  # 25 once, 5 twice
    # deterministic: the same seed gives the same lines in the same (sorted) order; the seed matters
    assert items == human.stratified_items(range(N_EVAL), 30, seed=0) == sorted(items)
    assert items != human.stratified_items(range(N_EVAL), 30, seed=1)
    by_seed = {s: human.stratified_items(range(N_EVAL), 25, seed=s) for s in range(5)}
    assert by_seed[3] == human.stratified_items(range(N_EVAL), 25, seed=3)
    assert len({tuple(lines) for lines in by_seed.values()}) == 5  # five seeds, five different selections
    one_each = by_seed[3]
    assert {t.name for t in tasks} == {
        next(t.name for t in tasks if t.first <= i <= t.last) for i in one_each
    }
    assert human.stratified_items(range(N_EVAL), 500) == list(range(N_EVAL))
    few = human.stratified_items([0, 1, 2, 50], 3, seed=0)  # lines 0-2 share a task, 50 is another
    assert len(few) == 3 and 50 in few


def test_packet_composition(packet):
    runs, out, key = packet
    n_models, n_items = len(RUNS), 30
    assert sorted(key["runs"]) == sorted(RUNS) and key["anchor"] == "tiny-anchor-lr0.0001"
    assert len(key["items"]) == n_items
    tasks = load_tasks()
    assert {next(t.name for t in tasks if t.first <= i <= t.last) for i in key["items"]} == {
        t.name for t in tasks
    }
    by_lang: dict[str, list[dict]] = {}
    for e in key["responses"].values():
        by_lang.setdefault(e["lang"], []).append(e)
    assert sorted(by_lang) == sorted(LANGS)
    for lang, entries in by_lang.items():
        assert len(entries) == key["counts"][lang] == n_items * n_models + (N_EVAL - n_items)
        assert sorted(e["position"] for e in entries) == list(range(1, len(entries) + 1))
        chosen = [e for e in entries if e["item"] in key["items"]]
        extra = [e for e in entries if e["item"] not in key["items"]]
        assert sorted((e["run"], e["item"]) for e in chosen) == sorted(
            (r, i) for r in RUNS for i in key["items"]
        )
        assert {e["run"] for e in extra} == {key["anchor"]}
        assert sorted(e["item"] for e in extra) == sorted(set(range(N_EVAL)) - set(key["items"]))
        assert all(e["id"] == f"paper-{lang}-{e['item']:03d}" for e in entries)  # never a modifier row
        # shuffled: the models are interleaved, not in blocks
        order = [e["run"] for e in sorted(entries, key=lambda e: e["position"])][: n_models * 4]
        assert len(set(order[: n_models * 2])) > 1
    # same items in every language (key["items"] is global; check the entries too)
    items_per_lang = {
        lang: {e["item"] for e in es if e["run"] != key["anchor"]} for lang, es in by_lang.items()
    }
    assert all(v == set(key["items"]) for v in items_per_lang.values())
    # the pages are blind: no run name, generation id or key material
    for lang in LANGS:
        page = (out / f"annotate_{lang}.html").read_text(encoding="utf-8")
        for name, meta in RUNS.items():
            assert name not in page and meta["group"] not in page, (lang, name)
        assert not re.search(r"(paper|modifiers)-[a-z]{2}-\d{3}", page)
        assert "key.json" not in page
        uids = [u for u, e in key["responses"].items() if e["lang"] == lang]
        assert all(u in page for u in uids)
        assert "<script>window.pwned" not in page and "\\u003cscript\\u003ewindow.pwned" in page
    # deterministic: the same inputs give the same packet
    again = human.build_packet(runs, n_items=30, seed=0)
    assert again.key == key
    other = human.build_packet(runs, n_items=30, seed=1)
    assert other.key["packet"] != key["packet"] and other.key["items"] != key["items"]


def test_select_chosen_lr_and_anchor(tmp_path):
    runs_meta = {
        "a-lr1e-05": {"group": "A", "lr": 1e-5, "anchor": True},
        "a-lr0.0001": {"group": "A", "lr": 1e-4, "anchor": True},
        "b-lr0.0001": {"group": "B", "lr": 1e-4, "anchor": False},
    }
    runs = make_runs(tmp_path / "runs", runs_meta)
    for name, good in (("a-lr1e-05", False), ("a-lr0.0001", True)):
        gens = pq.read_table(runs / name / "generations.parquet").to_pylist()
        rows = [
            {
                **g,
                "lang_correct": good,
                "spell_ok_rate": 0.9 if good else 0.5,
                "relevance": 1,
                "judge_status": "ok",
            }
            for g in gens
        ]
        atomic_write_parquet(pa.Table.from_pylist(rows), runs / name / "scores.parquet")
    p = human.build_packet(runs, n_items=25, langs=["en"], select="chosen")
    assert sorted(p.key["runs"]) == ["a-lr0.0001", "b-lr0.0001"] and p.key["anchor"] == "a-lr0.0001"
    assert p.key["counts"]["en"] == 25 * 2 + (N_EVAL - 25)
    with pytest.raises(ValueError, match="anchor"):  # two anchor-marked runs selected
        human.build_packet(runs, n_items=25, langs=["en"], select="all")
    p = human.build_packet(runs, n_items=25, langs=["en"], select="all", anchor="a-lr1e-05")
    assert len(p.key["runs"]) == 3 and p.key["anchor"] == "a-lr1e-05"
    with pytest.raises(ValueError, match="no such run"):
        human.build_packet(runs, n_items=25, langs=["en"], anchor="nope")
    # a run still waiting for its generations (e.g. a grid in progress) is left out, not fatal
    (runs / "c-lr0.001").mkdir()
    (runs / "c-lr0.001" / "run.json").write_text(json.dumps({"group": "A", "lr": 1e-3, "anchor": False}))
    p = human.build_packet(runs, n_items=25, langs=["en"], select="chosen")
    assert sorted(p.key["runs"]) == ["a-lr0.0001", "b-lr0.0001"]


def test_select_chosen_needs_every_lr_metric(tmp_path):
    """The packet's LR choice is the report's strict rule: relevance missing for one LR stops the export with
    the metric and the run named; --lr_metrics without relevance chooses (and the key says how)."""
    runs = make_runs(
        tmp_path / "runs",
        {"a-lr1e-05": {"group": "A", "lr": 1e-5, "anchor": True}, "a-lr0.0001": {"group": "A", "lr": 1e-4}},
    )
    for name, rel in (("a-lr1e-05", 1), ("a-lr0.0001", None)):
        gens = pq.read_table(runs / name / "generations.parquet").to_pylist()
        rows = [
            {**g, "lang_correct": True, "spell_ok_rate": 0.9 if rel else 0.95, "relevance": rel} for g in gens
        ]
        atomic_write_parquet(pa.Table.from_pylist(rows), runs / name / "scores.parquet")
    with pytest.raises(
        ValueError, match="LR choice needs relevance for every LR; missing for runs: a-lr0.0001"
    ):
        human.build_packet(runs, n_items=25, langs=["en"], select="chosen")
    p = human.build_packet(
        runs, n_items=25, langs=["en"], select="chosen", lr_metrics=["lang_correct", "spell_ok_rate"]
    )
    assert list(p.key["runs"]) == ["a-lr0.0001"]
    assert (
        p.key["lr_choice"]
        == "maximin over lang_correct, spell_ok_rate (explicit --lr_metrics; not used: relevance)"
    )
    (runs / "a-lr0.0001" / "scores.parquet").unlink()  # a run with generations but no scores: no guess
    with pytest.raises(ValueError, match="no scores.parquet for runs: a-lr0.0001"):
        human.build_packet(runs, n_items=25, langs=["en"], select="chosen")


def _ratings_file(path: Path, key: dict, annotator: str = "ann", lang: str = "fr", **override) -> Path:
    uids = [u for u, e in key["responses"].items() if e["lang"] == (lang if lang in key["langs"] else "fr")][
        :3
    ]
    obj = {
        "packet": key["packet"],
        "lang": lang,
        "annotator": annotator,
        "ratings": {uids[0]: {c: 2 for c in human.CRITERION_KEYS}, uids[1]: {"helpfulness": 1}, uids[2]: {}},
    }
    obj.update(override)
    path.write_text(json.dumps(obj))
    return path


def test_import_merges_and_unblinds(packet, tmp_path):
    _, out, key = packet
    a = _ratings_file(tmp_path / "a.json", key, "Alice")
    b = _ratings_file(tmp_path / "b.json", key, "Bob")
    c = _ratings_file(tmp_path / "c.json", key, "Alice", lang="ru")
    table = human.import_ratings(out / "key.json", [a, b, c])
    assert table.schema == human.HUMAN_SCHEMA
    rows = table.to_pylist()
    assert len(rows) == 6  # 2 rated responses (the empty one is left out) x 3 files
    for r in rows:
        e = key["responses"][r["uid"]]
        assert (r["run"], r["id"], r["item"], r["lang"], r["task"]) == (
            e["run"],
            e["id"],
            e["item"],
            e["lang"],
            e["task"],
        )
    partial = [r for r in rows if r["helpfulness"] == 1]
    assert len(partial) == 3 and all(r["logic"] is None for r in partial)
    summary = human.summarize(table, key)
    assert "Alice, Bob" in summary and "fr: 2/" in summary and "ru: 2/" in summary


@pytest.mark.parametrize(
    "override, message",
    [
        ({"packet": "0123456789ab"}, r"bad\.json: packet '0123456789ab' does not match"),
        ({"annotator": "  "}, r"bad\.json: field 'annotator' missing or empty"),
        ({"annotator": None}, r"bad\.json: field 'annotator' missing or empty"),
        ({"lang": "de"}, r"bad\.json: field 'lang' is 'de', not one of the packet's"),
        ({"ratings": {"rdeadbeef000": {"fluency": 1}}}, r"bad\.json: unknown uid 'rdeadbeef000'"),
        ({"ratings": "x"}, r"bad\.json: field 'ratings' missing"),
    ],
)
def test_import_errors(packet, tmp_path, override, message):
    _, out, key = packet
    bad = _ratings_file(tmp_path / "bad.json", key, **override)
    with pytest.raises(human.RatingsError, match=message):
        human.import_ratings(out / "key.json", [bad])


def test_import_errors_on_scores_and_files(packet, tmp_path):
    _, out, key = packet
    fr = [u for u, e in key["responses"].items() if e["lang"] == "fr"]
    en = [u for u, e in key["responses"].items() if e["lang"] == "en"]
    cases = [
        ({fr[0]: {"fluency": 3}}, rf"uid '{fr[0]}': fluency = 3 is not a score"),
        ({fr[0]: {"fluency": True}}, rf"uid '{fr[0]}': fluency = True is not a score"),
        ({fr[0]: {"fluency": "2"}}, rf"uid '{fr[0]}': fluency = '2' is not a score"),
        ({fr[0]: {"style": 1}}, rf"uid '{fr[0]}': unknown criterion 'style'"),
        ({en[0]: {"fluency": 1}}, rf"uid '{en[0]}' belongs to the 'en' page"),
    ]
    for ratings, message in cases:
        bad = _ratings_file(tmp_path / "bad.json", key, ratings=ratings)
        with pytest.raises(human.RatingsError, match=message):
            human.import_ratings(out / "key.json", [bad])
    notjson = tmp_path / "broken.json"
    notjson.write_text("{")
    with pytest.raises(human.RatingsError, match=r"broken\.json:1: invalid JSON"):
        human.import_ratings(out / "key.json", [notjson])
    a = _ratings_file(tmp_path / "a.json", key, "Alice")
    with pytest.raises(human.RatingsError, match=r"a\.json: uid .* already rated by annotator 'Alice'"):
        human.import_ratings(out / "key.json", [a, a])
    with pytest.raises(human.RatingsError, match="key file not found"):
        human.import_ratings(tmp_path / "nokey.json", [a])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reporting.annotate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_export_and_errors_exit_2(packet, tmp_path):
    runs, out, key = packet
    res = _cli(
        "export", f"--runs={runs}", f"--out={tmp_path / 'p'}", "--langs=fr,ru", "--n_items=25", "--seed=3"
    )
    assert res.returncode == 0, res.stderr
    assert "fr: 163 responses" in res.stdout and "ru: 163 responses" in res.stdout  # 25 x 3 + 88
    assert sorted(f.name for f in (tmp_path / "p").iterdir()) == [
        "annotate_fr.html",
        "annotate_ru.html",
        "key.json",
    ]
    assert _cli("export", f"--runs={runs}").returncode == 2
    assert _cli("frob").returncode == 2
    bad = _ratings_file(tmp_path / "bad.json", key, annotator="")
    res = _cli("import", f"--key={out / 'key.json'}", f"--ratings={bad}", f"--out={tmp_path / 'r.parquet'}")
    assert res.returncode == 2 and "bad.json: field 'annotator' missing or empty" in res.stderr
    assert not (tmp_path / "r.parquet").exists()


# ----------------------------------------------------------------------------------------------------------
# The annotation page in a real browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture
def browser(tmp_path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:  # a declared requirement (Makefile APT_PACKAGES), not an optional extra: fail, never skip
        pytest.fail(
            f"{', '.join(missing)} absent: the annotation page test needs the Debian packages chromium and "
            "chromium-driver (`make setup` installs them; as root: apt-get install chromium chromium-driver)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, read by the test
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    driver.implicitly_wait(0)
    driver.downloads = downloads
    yield driver
    driver.quit()


def _displayed(driver) -> dict:
    from selenium.webdriver.common.by import By

    return {
        "uid": driver.find_element(By.ID, "item-uid").text,
        "pos": driver.find_element(By.ID, "item-pos").text,
        "selected": {
            b.get_attribute("data-crit"): int(b.get_attribute("data-val"))
            for b in driver.find_elements(By.CSS_SELECTOR, "#criteria button.selected")
        },
        "active": driver.find_element(By.CSS_SELECTOR, "#criteria .crit.active").get_attribute("data-crit"),
    }


def test_annotation_page_in_chromium(packet, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    runs, out, key = packet
    driver = browser
    page = out / "annotate_fr.html"
    driver.get(page.as_uri())
    assert "Human evaluation: Français (fr)" in driver.find_element(By.ID, "title").text
    n_fr = key["counts"]["fr"]
    assert driver.find_element(By.ID, "progress").text == f"rated 0 / {n_fr}"
    # the guidelines are there, collapsed; the shortcuts are documented
    assert driver.find_element(By.ID, "guidelines").get_attribute("open") is None
    assert "Criteria 3: Helpfulness" in driver.find_element(By.ID, "guidelines-text").get_attribute(
        "textContent"
    )
    assert "select the criterion" in driver.find_element(By.ID, "help").text

    driver.find_element(By.ID, "annotator").send_keys("Zoé Martin")
    body = driver.find_element(By.TAG_NAME, "body")
    body.click()
    given: dict[str, dict[str, int]] = {}

    # response 1: six clicks
    first = _displayed(driver)
    clicks = {"language": 2, "fluency": 2, "helpfulness": 2, "factuality": 1, "logic": 2, "harmlessness": 2}
    for crit, val in clicks.items():
        driver.find_element(
            By.CSS_SELECTOR, f'#criteria button[data-crit="{crit}"][data-val="{val}"]'
        ).click()
    given[first["uid"]] = dict(clicks)
    assert _displayed(driver)["selected"] == clicks
    assert "complete" in driver.find_element(By.ID, "item-state").get_attribute("class")

    # response 2: keys only (→ to move, 0/1/2 rate and select the next criterion)
    body.send_keys(Keys.ARROW_RIGHT)
    second = _displayed(driver)
    assert (
        second["pos"].startswith("Response 2 /") and second["active"] == "language" and not second["selected"]
    )
    body.send_keys("211012")
    given[second["uid"]] = dict(zip(human.CRITERION_KEYS, (2, 1, 1, 0, 1, 2)))
    assert _displayed(driver)["selected"] == given[second["uid"]]

    # response 3: n, then ↓ ↓ to helpfulness → 0, ↑ to fluency → 1, Tab to factuality... rate 2 then clear it (x)
    body.send_keys("n")
    third = _displayed(driver)
    assert third["pos"].startswith("Response 3 /")
    body.send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN, "0")
    assert _displayed(driver)["active"] == "factuality"
    body.send_keys(Keys.ARROW_UP, Keys.ARROW_UP, "1")  # factuality -> helpfulness -> fluency, rate 1
    assert _displayed(driver)["active"] == "helpfulness"
    body.send_keys(Keys.TAB, "2")  # factuality = 2 ...
    body.send_keys(Keys.ARROW_UP, "x")  # ... then cleared
    given[third["uid"]] = {"helpfulness": 0, "fluency": 1}
    assert _displayed(driver)["selected"] == given[third["uid"]]
    assert driver.find_element(By.ID, "progress").text == f"rated 2 / {n_fr} (+1 partly)"
    if os.environ.get("XLIT_HUMAN_SCREENSHOT"):  # manual check of the layout: look at the picture
        driver.save_screenshot(os.environ["XLIT_HUMAN_SCREENSHOT"])
    # untrusted text is shown as text, whitespace kept, never as HTML
    hostile_pos = next(
        e["position"]
        for u, e in key["responses"].items()
        if e["lang"] == "fr" and e["item"] == 0 and e["run"] == "tiny-anchor-lr0.0001"
    )
    driver.find_element(By.CSS_SELECTOR, f'#navgrid button[data-pos="{hostile_pos - 1}"]').click()
    assert driver.find_element(By.ID, "response").get_attribute("textContent") == HOSTILE
    assert not driver.find_elements(By.CSS_SELECTOR, "#response *")
    assert driver.execute_script("return window.pwned === undefined")
    driver.find_element(By.CSS_SELECTOR, '#navgrid button[data-pos="2"]').click()

    # reload: autosave restores the name, the ratings and the position
    driver.refresh()
    assert driver.find_element(By.ID, "annotator").get_attribute("value") == "Zoé Martin"
    assert driver.find_element(By.ID, "progress").text == f"rated 2 / {n_fr} (+1 partly)"
    assert _displayed(driver)["uid"] == third["uid"] and _displayed(driver)["selected"] == given[third["uid"]]
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT)
    assert _displayed(driver)["uid"] == first["uid"] and _displayed(driver)["selected"] == clicks
    classes = [
        driver.find_element(By.CSS_SELECTOR, f'#navgrid button[data-pos="{i}"]').get_attribute("class")
        for i in range(4)
    ]
    assert (
        "complete" in classes[0] and "complete" in classes[1] and "partial" in classes[2] and classes[3] == ""
    )

    # export: JSON in the textarea and a downloaded file
    driver.find_element(By.ID, "export").click()
    exported = json.loads(driver.find_element(By.ID, "export-json").get_attribute("value"))
    assert exported == {"packet": key["packet"], "lang": "fr", "annotator": "Zoé Martin", "ratings": given}
    deadline = time.time() + 10
    files: list[Path] = []
    while time.time() < deadline and not files:
        files = [f for f in driver.downloads.glob("*.json")]
        time.sleep(0.2)
    assert len(files) == 1 and files[0].name == f"ratings-{key['packet']}-fr-Zo_Martin.json"
    assert json.loads(files[0].read_text(encoding="utf-8")) == exported

    # judge scores for the three rated responses: helpfulness judge (2, 2, 0) vs human (2, 1, 0)
    judge_help = {first["uid"]: 2, second["uid"]: 2, third["uid"]: 0}
    for run in RUNS:
        gens = pq.read_table(runs / run / "generations.parquet").to_pylist()
        by_id = {
            key["responses"][u]["id"]: v for u, v in judge_help.items() if key["responses"][u]["run"] == run
        }
        rows = [
            {
                "id": g["id"],
                "eval_set": g["eval_set"],
                "lang": g["lang"],
                "judge_status": "ok",
                **{f"judge_{c}": 2 for c in JUDGE_CRITERIA},
                "judge_helpfulness": by_id.get(g["id"], 2),
            }
            for g in gens
        ]
        atomic_write_parquet(pa.Table.from_pylist(rows), runs / run / "scores.parquet")

    ratings_out = tmp_path / "ratings.parquet"
    res = _cli(
        "import",
        f"--key={out / 'key.json'}",
        f"--ratings={files[0]}",
        f"--out={ratings_out}",
        f"--runs={runs}",
    )
    assert res.returncode == 0, res.stderr
    table = pq.read_table(ratings_out)
    rows = table.to_pylist()
    assert len(rows) == 3
    got = {r["uid"]: {c: r[c] for c in JUDGE_CRITERIA if r[c] is not None} for r in rows}
    assert got == given
    for r in rows:
        e = key["responses"][r["uid"]]
        assert (r["run"], r["id"], r["annotator"], r["lang"]) == (e["run"], e["id"], "Zoé Martin", "fr")
    assert table.schema.field("helpfulness").type == pa.int8()

    # agreement (Figure 5) against a hand computation: pairs (judge, human) = (2,2), (2,1), (0,0)
    #   observed weighted disagreement = (0 + 1/2 + 0) / 3 = 1/6
    #   marginals judge (0,1,2) = (1/3, 0, 2/3), human = (1/3, 1/3, 1/3)
    #   expected = 1/3 * (1/3 * 1/2 + 1/3 * 1) + 2/3 * (1/3 * 1 + 1/3 * 1/2) = 1/6 + 1/3 = 1/2
    #   kappa = 1 - (1/6) / (1/2) = 2/3; exact agreement 2/3; matrix 33.33 % in (0,0), (2,1), (2,2)
    scores = human.judge_scores(runs, RUNS)
    table_rows = {(t["criterion"], t["langs"]): t for t in agreement.agreement_table(rows, scores)}
    h = table_rows[("helpfulness", "non_en")]
    assert h["n"] == 3 and h["kappa"] == pytest.approx(2 / 3) and h["exact"] == pytest.approx(2 / 3)
    assert h["matrix"] == [[33.33, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 33.33, 33.33]]
    # fluency: judge 2 everywhere, human (2, 1, 1): observed 1/3 = expected 1/3 (judge constant), kappa = 0
    f = table_rows[("fluency", "non_en")]
    assert f["n"] == 3 and f["kappa"] == pytest.approx(0.0) and f["exact"] == pytest.approx(1 / 3)
    assert table_rows[("helpfulness", "en")]["n"] == 0
    assert re.search(r"helpfulness\s+non_en\s+3\s+0\.667\s+0\.667", res.stdout), res.stdout
    assert re.search(r"fluency\s+non_en\s+3\s+0\.333\s+0\.000", res.stdout)
    assert "Zoé Martin" in res.stdout and "fr: 3/" in res.stdout
    # the page ran without a script error or a failed resource load (it is self-contained)
    console_errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not console_errors, console_errors
