"""report.html renders self-contained: every image present and decodable, the verdict first."""

from __future__ import annotations

import base64
import io
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from PIL import Image

from paritybed.parity import synthetic as sy
from paritybed.parity.evaluate import evaluate


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str]] = []
        self.text: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.external.append(a.get("href") or a.get("src"))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rep")
    (tmp / "s.yaml").write_text("name: s\n")
    prod = sy.make_trace("production", days=1, seed=3, attacks=True)
    stag = sy.make_trace("staging", days=1, seed=4, arrivals="uniform", break_glass="drill")
    evaluate(sy.scenario(), tmp / "s.yaml", prod, stag, tmp / "run")
    return tmp / "run"


def test_every_embedded_image_decodes_as_png(run_dir):
    p = _Imgs()
    p.feed((run_dir / "report.html").read_text(encoding="utf-8"))
    assert not p.external, "the report must be self-contained"
    alts = [i["alt"] for i in p.imgs]
    assert {"rate_ambient_scribe", "rate_cds", "rate_prior_auth", "coverage", "break_glass", "over_blocks", "scope"} <= set(alts)
    for img in p.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), img["alt"]
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        im.verify()
        assert im.format == "PNG" and im.size[0] > 300
    for f in ("rate_cds", "coverage", "break_glass", "over_blocks", "scope"):
        assert (run_dir / "plots" / f"{f}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verdict_and_scorecard_come_first_then_criteria_then_consequences(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    i_verdict = html.index('class="verdict fail"')
    i_score = html.index("<h2>Scorecard</h2>")
    i_fid = html.index("<h2>Synthetic-PHI fidelity")
    i_cons = html.index("<h2>Consequences")
    assert i_verdict < i_score < i_fid < i_cons
    # the plain reading of a failing metric is there (flat staging: its rate limit is under production's bursts;
    # its burst ratio passes the burst minimum calibrated on 4 December, 0.2008)
    assert "rate_headroom" in html and "will be rate-limited" in html


def test_junit_has_a_testcase_per_criterion_and_class_and_per_attack(run_dir):
    root = ET.parse(run_dir / "junit.xml").getroot()
    names = {tc.get("name") for tc in root.iter("testcase")}
    for crit in ("fidelity", "coverage"):
        for cls in ("ambient_scribe", "cds", "prior_auth"):
            assert f"{crit}[{cls}]" in names
    assert "break_glass[cds]" in names and "attack:bulk-read" in names and "attack:exfil" in names
    failed = {tc.get("name") for tc in root.iter("testcase") if tc.find("failure") is not None}
    assert "fidelity[cds]" in failed and "coverage[cds]" not in failed
    assert int(root.get("failures")) == len(failed)


def test_each_metric_shows_its_interval_and_margin_and_the_oracle_is_named(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "95 % interval</th>" in html and "<th>Margin</th>" in html
    assert "The oracle policy (learned the same way from production" in html
    assert "Replay threshold" in html and "under_blocks" in html


def test_a_marginal_verdict_reads_as_too_close_to_call(run_dir, tmp_path):
    import json

    from paritybed.parity.report import render_report

    doc = json.loads((run_dir / "parity.json").read_text(encoding="utf-8"))
    doc["verdict"] = "marginal"
    m = doc["criteria"]["fidelity"]["metrics"][0]
    m["status"] = "marginal"
    html = render_report(doc, {}, [], tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'class="verdict marginal"' in html and "Too close to call" in html
    assert f"{m['agent_class']} {m['name']}" in html and 'class="near">marginal' in html
