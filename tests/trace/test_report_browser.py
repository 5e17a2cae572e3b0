"""The HTML report rendered by a real headless chromium: the DOM after its script ran."""

from __future__ import annotations

from pathlib import Path

import pytest

from decision_retry.trace import render_report
from tests.helpers import CHROMIUM, dump_dom

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed (`make install` adds it via apt-get)",
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    from decision_retry.trace import TraceStore
    from tests.trace.sample_run import record_sample

    tmp = tmp_path_factory.mktemp("report")
    with TraceStore.open(tmp / "home") as store:
        sample = record_sample(store)
        tree = store.load(sample.run_id)
    page = tmp / "report.html"
    page.write_text(render_report(tree), encoding="utf-8")
    return tree, dump_dom(page, tmp / "profile")


def test_the_script_ran(rendered):
    _, dom = rendered
    assert dom.select("html")[0].attrs.get("data-rendered") == "true"


def test_every_token_is_a_span_with_its_text(rendered):
    tree, dom = rendered
    spans = dom.select("span", "token")
    assert len(spans) == sum(len(t.tokens) for t in tree.turns)
    assert [s.text for s in spans] == [tok.text for t in tree.turns for tok in t.tokens]
    assert all("--h:hsl(" in s.attrs["style"] for s in spans)  # the heat of each signal
    # the "<b>x</b>" inside a token stayed text: no element was created inside any token
    assert not [e for e in dom.elements if any("token" in a.classes for a in e.ancestors)]


def test_decision_points_are_marked(rendered):
    tree, dom = rendered
    marked = dom.select("span", "decision")
    assert len(marked) == len({(d.turn_id, d.position) for d in tree.decisions})
    assert len(dom.select("span", "decision-tool")) == len(
        {(d.turn_id, d.position) for d in tree.decisions if d.kind == "tool"}
    )
    assert all(m.attrs.get("data-decision") for m in marked)


def test_retry_prefix_is_shown_as_kept(rendered):
    tree, dom = rendered
    assert len(dom.select("span", "kept")) == sum(b.cut.position for b in tree.branches if b.cut)
    assert len(dom.select("span", "cut-point")) == sum(
        1 for b in tree.branches if b.cut and b.cut.position
    )


def test_branch_tree_shows_each_attempt_and_its_verdict(rendered):
    tree, dom = rendered
    nodes = dom.select("li", "branch-node", inside="branch-tree")
    assert [n.attrs["data-branch"] for n in nodes] == [b.id for b in tree.branches]
    assert [n.attrs["data-passed"] for n in nodes] == ["false", "true", "false"]
    assert [("fix" in n.classes) for n in nodes] == [False, True, False]
    cut_info = [e.text for e in dom.select("span", "cut-info")]
    assert "cut turn 1 token 6 ' -'→' +' (entropy 3.10)" in cut_info
    assert "same code as #0" in [e.text for e in dom.select("span", "change-info")]


def test_entropy_plot_has_a_line_per_branch(rendered):
    tree, dom = rendered
    lines = dom.select("path", "entropy-line", inside="entropy-plot")
    assert [p.attrs["data-branch"] for p in lines] == [b.id for b in tree.branches]
    for path, branch in zip(lines, tree.branches):
        n_tokens = sum(len(t.tokens) for t in tree.trajectory(branch.id))
        d = path.attrs["d"]
        assert d.startswith("M") and d.count("L") == n_tokens - 1
    dots = dom.select("circle", "decision-dot", inside="entropy-plot")
    expected = sum(
        len({(t.id, d.position) for t in tree.trajectory(b.id) for d in tree.decisions_of(t.id)})
        for b in tree.branches
    )
    assert len(dots) == expected > 0
    assert len(dom.select("line", "cut-line", inside="entropy-plot")) == 2


def test_change_measures_and_mh_steps_are_listed(rendered):
    tree, dom = rendered
    assert len(dom.select("tr", "change-row", inside="strategy-changes")) == 2
    steps = dom.select("tr", "mh-step", inside="mh-steps")
    assert [("accepted" in s.classes) for s in steps] == [s.accepted for s in tree.mh_steps]


def test_nothing_is_loaded_from_outside(rendered):
    _, dom = rendered
    for e in dom.elements:
        for attr in ("src", "href"):
            assert not e.attrs.get(attr, "").startswith(("http:", "https:", "//")), (e.tag, e.attrs)
    csp = [m for m in dom.select("meta") if m.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0].attrs["content"]


INTERACT = """<script>
  document.querySelector(".token.decision-tool").dispatchEvent(new Event("mouseenter"));
  document.querySelectorAll(".branch-label")[1].click();
</script></body>"""


def test_hover_shows_token_details_and_click_selects_a_branch(rendered, tmp_path):
    tree, _ = rendered
    page = tmp_path / "interact.html"
    page.write_text(render_report(tree).replace("</body>", INTERACT), encoding="utf-8")
    dom = dump_dom(page, tmp_path / "profile")
    [box] = [e for e in dom.elements if e.attrs.get("id") == "token-detail"]
    assert "hidden" not in box.attrs
    details = [e.text for e in dom.elements if box in e.ancestors]
    assert any(t.startswith("position 0  H=") for t in details)
    assert "decision: tool:action 'read'" in details
    assert '"read"' in details and "60.0%" in details  # the alternatives table
    selected = dom.select("li", "selected")
    assert [e.attrs["data-branch"] for e in selected] == [tree.branches[1].id]
    hidden = {e.attrs["data-branch"] for e in dom.select("section", "hidden")}
    assert hidden == {tree.branches[0].id, tree.branches[2].id}
    dimmed = {e.attrs["data-branch"] for e in dom.select("path", "dim")}
    assert dimmed == hidden
