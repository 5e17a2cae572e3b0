"""localise_eval's reading of a ranking: which changed functions a prompt shows, and its table."""

from decision_retry.bench import localise_eval
from decision_retry.localise.locate import functions_in

SOURCE = '''
class Filter:
    def process(self, stream):
        def comment(token):
            return token
        return [comment(t) for t in stream]


def helper(x):
    return x
'''


def test_a_nested_function_is_shown_with_the_function_around_it():
    process, comment, helper = sorted(functions_in(SOURCE, "f.py"), key=lambda s: s.start)
    assert comment.qualname == "Filter.process.<locals>.comment"
    want = ("f.py", localise_eval._plain(comment.qualname))
    assert want == ("f.py", "Filter.process.comment")  # as the recipes write it
    assert localise_eval._holds(process, want)
    assert localise_eval._holds(comment, want)
    assert not localise_eval._holds(helper, want)
    assert not localise_eval._holds(process, ("g.py", "Filter.process.comment"))
    assert not localise_eval._holds(process, ("f.py", "Filter.processor"))


def test_the_table_counts_fixes_of_several_functions_whole():
    row = {"case": "c", "bug": "f.py::a", "rank": 1, "n_shown": 2, "localise_s": 1.0}
    rows = [row | {"ranks": [1, 2], "shown": True, "all_shown": True},
            row | {"ranks": [1, None], "shown": True, "all_shown": False},
            row | {"ranks": [4], "rank": 4, "shown": False, "all_shown": False}]
    text = localise_eval.table(rows)
    assert "| 3 | 2/3 (67%) | 2/3 (67%) | 3/3 (100%) | 2/3 (67%) | 1/2 |" in text
    assert "| c | `f.py::a` | 1 | 1, - | yes (2) | 1.0 |" in text
