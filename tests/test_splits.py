import pytest

from ldct.splits import SplitError, load_preset, make_splits

RANDOM = {"method": "random", "preset": None, "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "val_as_test": False}


def test_presets_have_the_published_sizes():
    fk = load_preset("featkpn")
    assert (len(fk["train"]), len(fk["val"])) == (40, 10)
    nb = load_preset("ldct_benchmark_neuro")
    assert (len(nb["train"]), len(nb["val"]), len(nb["test"])) == (35, 10, 5)


def test_featkpn_preset_uses_val_as_test():
    fk = load_preset("featkpn")
    subjects = fk["train"] + fk["val"]
    split = make_splits(subjects, {**RANDOM, "method": "preset", "preset": "featkpn", "val_as_test": True}, 0)
    assert split["test"] == fk["val"]
    with pytest.raises(SplitError, match="has no test subjects; set split.val_as_test: true"):  # not silently
        make_splits(subjects, {**RANDOM, "method": "preset", "preset": "featkpn"}, 0)


def test_random_split_is_seeded_and_disjoint():
    subjects = [f"S{i:03d}" for i in range(20)]
    a = make_splits(subjects, RANDOM, 1)
    assert a == make_splits(list(reversed(subjects)), RANDOM, 1)
    assert a != make_splits(subjects, RANDOM, 2)
    assert not (set(a["train"]) & set(a["val"])) and not (set(a["train"]) & set(a["test"]))
    assert sorted(a["train"] + a["val"] + a["test"]) == subjects
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (12, 4, 4)
    with pytest.raises(SplitError, match="named more than once: S001"):  # was "in both train and val"
        make_splits(subjects + ["S001"], RANDOM, 1)


def test_missing_subjects_are_listed():
    with pytest.raises(SplitError, match="N005.*N012|N012.*N005"):
        make_splits(["N090"], {**RANDOM, "method": "preset", "preset": "featkpn"}, 0)
    # none found: a dicom_root one level off; say what was found there
    with pytest.raises(SplitError, match=r"found 1 subject folder\(s\) instead \(LDCT-and-Projection-data\)"):
        make_splits(["LDCT-and-Projection-data"], {**RANDOM, "method": "preset", "preset": "featkpn"}, 0)


def test_subject_in_two_splits_is_an_error(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"train": ["A", "B"], "val": ["B"], "test": ["C"]}')
    with pytest.raises(SplitError, match="B appears in both train and val"):
        make_splits(["A", "B", "C"], {**RANDOM, "method": "preset", "preset": str(path)}, 0)


@pytest.mark.parametrize("content, message", [
    ('{"train": ["A"], "val": ["B"]', "s.json: not valid JSON"),
    ('["A", "B"]', "s.json: expected an object with 'train', 'val' and 'test' subject lists"),
    ('{"val": ["A"], "test": ["B"]}', "s.json: no 'train' subjects"),
    ('{"train": ["A", "C"], "val": ["B"], "test": ["C"]}', "subjects in both train and test: C"),
    ('{"train": ["A"], "vals": ["B"], "test": ["C"]}', "s.json: unknown key\\(s\\) 'vals'; expected"),
    ('{"train": ["A"], "test": ["C"]}', "s.json: no 'val' subjects"),
    ('{"train": "A", "val": ["B"]}', "s.json: 'train' must be a list of subject names \\(strings\\), not 'A'"),
    ('{"train": [1, 2], "val": ["B"]}', "s.json: 'train' must be a list of subject names"),
    ('{"train": ["A", "A"], "val": ["B"]}', "s.json: 'train' names a subject twice: A"),
    ('{"train": ["A"], "val": ["B", "C"], "test": ["C"]}', "subjects in both val and test: C"),
])
def test_bad_preset_file_is_named(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(SplitError, match=message):
        make_splits(["A", "B", "C"], {**RANDOM, "method": "preset", "preset": str(path)}, 0)


def test_misspelt_preset_and_too_few_subjects():
    with pytest.raises(SplitError, match="split preset 'featkpm' is neither one of .*'featkpn'.* nor a JSON file"):
        make_splits(["A"], {**RANDOM, "method": "preset", "preset": "featkpm"}, 0)
    with pytest.raises(SplitError, match="2 subjects are too few for split fractions"):
        make_splits(["A", "B"], RANDOM, 0)


def test_a_preset_whose_test_set_is_its_validation_set_is_the_papers_protocol(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"train": ["A"], "val": ["B", "C"], "test": ["C", "B"]}')
    split = make_splits(["A", "B", "C"], {**RANDOM, "method": "preset", "preset": str(path)}, 0)
    assert set(split["test"]) == set(split["val"]) == {"B", "C"}


def test_val_as_test_does_not_silently_drop_a_presets_own_test_subjects():
    nb = load_preset("ldct_benchmark_neuro")
    subjects = sorted({s for part in nb.values() for s in part})
    with pytest.raises(SplitError, match="has its own test subjects"):
        make_splits(subjects, {**RANDOM, "method": "preset", "preset": "ldct_benchmark_neuro", "val_as_test": True}, 0)
