"""Trace nodes: content-derived ids, immutability, and the tree's navigation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from decision_retry.trace import Branch, Cut, Run, RunTree, TestRun, Turn
from tests.trace.sample_run import tokens


def test_id_derives_from_parent_and_content():
    toks = tokens([("a", 0.1), ("b", 2.0)])
    turn = Turn(branch_id="b1", index=0, tokens=toks, text="ab")
    assert turn.id == Turn(branch_id="b1", index=0, tokens=toks, text="ab").id
    assert turn.id != Turn(branch_id="b2", index=0, tokens=toks, text="ab").id  # other parent
    assert turn.id != Turn(branch_id="b1", index=0, tokens=toks[:1], text="a").id  # other content
    assert len(turn.id) == 20 and int(turn.id, 16) >= 0


def test_nodes_are_frozen():
    run = Run(model="m", strategy="entropy-cut")
    with pytest.raises(ValidationError):
        run.model = "other"  # type: ignore[misc]


def test_finishing_a_node_keeps_its_id():
    run = Run(model="m", strategy="entropy-cut", seed=1)
    done = run.model_copy(update={"outcome": "solved"})
    assert done.id == run.id and done.outcome == "solved"
    branch = Branch(run_id=run.id, index=0)
    assert branch.model_copy(update={"passed": True, "final_diff": "x"}).id == branch.id


def test_copy_with_new_content_gets_a_new_id():
    branch = Branch(run_id="r", index=0)
    moved = branch.model_copy(update={"index": 1})
    assert moved.id != branch.id
    assert moved.id == Branch(run_id="r", index=1).id


def test_json_round_trip_keeps_value_and_id():
    turn = Turn(branch_id="b", index=2, tokens=tokens([("x", 1.0)]), text="x", params={"top_k": 5})
    again = Turn.model_validate_json(turn.model_dump_json())
    assert again == turn and again.id == turn.id


def test_cut_requires_parent():
    with pytest.raises(ValidationError, match="parent"):
        Branch(run_id="r", index=1, cut=Cut(turn=0, position=3))


def test_test_run_ok_needs_exit_zero_and_no_failures():
    base = {"branch_id": "b", "index": 0, "command": "pytest"}
    assert TestRun(**base, exit_code=0, passed=3).ok
    assert not TestRun(**base, exit_code=1, passed=3).ok
    assert not TestRun(**base, exit_code=0, failed=1).ok


def _tree() -> tuple[RunTree, list[Branch], list[Turn]]:
    run = Run(model="m", strategy="s")
    root = Branch(run_id=run.id, index=0)
    child = Branch(run_id=run.id, index=1, parent_id=root.id, cut=Cut(turn=2, position=1))
    grandchild = Branch(run_id=run.id, index=2, parent_id=child.id, cut=Cut(turn=1, position=0))
    turns = [Turn(branch_id=root.id, index=i, text=f"root{i}") for i in range(3)]
    turns += [Turn(branch_id=child.id, index=i, text=f"child{i}") for i in (2, 3)]
    turns += [Turn(branch_id=grandchild.id, index=1, text="grand1")]
    return (
        RunTree(run=run, branches=(root, child, grandchild), turns=tuple(turns)),
        [root, child, grandchild],
        turns,
    )


def test_trajectory_inherits_turns_before_the_cut_without_copies():
    tree, (root, child, grandchild), _ = _tree()
    assert [t.text for t in tree.trajectory(root.id)] == ["root0", "root1", "root2"]
    assert [t.text for t in tree.trajectory(child.id)] == ["root0", "root1", "child2", "child3"]
    assert [t.text for t in tree.trajectory(grandchild.id)] == ["root0", "grand1"]
    assert [t.text for t in tree.own_turns(child.id)] == ["child2", "child3"]


def test_children_and_lookup():
    tree, (root, child, grandchild), _ = _tree()
    assert tree.children(None) == [root]
    assert tree.children(root.id) == [child]
    assert tree.branch(grandchild.id) == grandchild
    with pytest.raises(KeyError):
        tree.branch("nope")
