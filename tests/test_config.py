from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_config, write_config
from htx.cli import app
from htx.config import load_config, parse_config
from htx.errors import ConfigError
from htx.plugins import load_registry


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def problems(data, registry) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "t.yaml", registry)
    return info.value.problems


def test_minimal_config_from_issue(registry):
    cfg = parse_config(
        {"name": "q", "model": "demo", "fixtures": ["sine_440"], "surgery": ["full-hybrid"],
         "precision": ["fp32", "all-fp16"], "stft": ["torch"], "compute": ["torch"]},
        registry=registry,
    )
    assert [p.name for p in cfg.precision] == ["fp32", "all-fp16"]
    assert cfg.model.kind == "demo"
    assert cfg.fixtures[0].name == "sine_440"


def test_plugin_entry_with_params(registry, tmp_path):
    cfg = parse_config(make_config(tmp_path, precision=[{"curated-fp32": {"ops": ["softmax"]}}]), registry=registry)
    assert cfg.precision[0].params == {"ops": ["softmax"]}
    assert cfg.precision[0].key() == "curated-fp32[ops=['softmax']]"


def test_unknown_plugin_name_suggests(registry, tmp_path):
    found = problems(make_config(tmp_path, precision=["all-fp61"]), registry)
    assert found == ["precision.0: precision: unknown plugin 'all-fp61'. Did you mean 'all-fp16'? Available: "
                     + ", ".join(registry.names("precision"))]


def test_bad_plugin_params_name_the_field(registry, tmp_path):
    found = problems(make_config(tmp_path, compute=[{"torch": {"device": "tpu"}}]), registry)
    assert len(found) == 1 and found[0].startswith("compute.0.torch.device: Input should be 'auto', 'cpu', 'cuda' or 'mps'")
    found = problems(make_config(tmp_path, compute=[{"torch": {"devcie": "cpu"}}]), registry)
    assert found[0].startswith("compute.0.torch.devcie: unknown key 'devcie'. Did you mean 'device'?")


def test_unknown_top_level_key_and_missing_fields(registry):
    found = problems({"name": "x", "fixtures": ["sine_440"], "precison": ["fp32"]}, registry)
    assert any(p.startswith("precison: unknown key 'precison'. Did you mean 'precision'?") for p in found)
    found = problems({"fixtures": []}, registry)
    assert any(p.startswith("name: Field required") for p in found)
    assert any(p.startswith("fixtures: List should have at least 1 item") for p in found)


def test_unknown_fixture_and_missing_file(registry, tmp_path):
    found = problems(make_config(tmp_path, fixtures=["sine_404", "missing/file.wav"]), registry)
    assert found[0].startswith("fixtures.0: unknown fixture 'sine_404'. Did you mean 'sine_440'?")
    assert found[1] == "fixtures.1: audio file not found: missing/file.wav"


def test_model_forms(registry, tmp_path):
    for model, kind in [("demo", "demo"), ({"path": "x.th"}, "path"), ({"pretrained": "htdemucs"}, "pretrained"),
                        ({"random": {"channels": 8, "seed": 1}}, "random")]:
        assert parse_config(make_config(tmp_path, model=model), registry=registry).model.kind == kind
    assert "model: Value error" not in " ".join(problems(make_config(tmp_path, model="bogus"), registry))
    assert any("unknown model 'bogus'" in p for p in problems(make_config(tmp_path, model="bogus"), registry))
    assert any("unknown HTDemucs argument(s) ['chanels']" in p
               for p in problems(make_config(tmp_path, model={"random": {"chanels": 8}}), registry))
    assert any("expected a demucs checkpoint" in p for p in problems(make_config(tmp_path, model={"path": "x.pt"}), registry))


def test_duplicate_axis_entry(registry, tmp_path):
    found = problems(make_config(tmp_path, precision=["fp32", "fp32"]), registry)
    assert found == ["precision.1: 'fp32' appears twice; remove the duplicate"]


def test_bad_yaml_reports_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nfixtures: [sine_440\nprecision: [fp32]\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "YAML syntax error at line" in info.value.problems[0]
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(empty)


def test_validate_cli_ok_and_errors(tmp_path):
    runner = CliRunner()
    good = write_config(tmp_path, precision=["fp32", "all-fp16"])
    res = runner.invoke(app, ["validate", str(good)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"{good}: OK (1 surgery x 2 precision x 1 stft x 1 compute x 1 fixtures = 2 trials)"
    bad = write_config(tmp_path, "bad.yaml", precision=["all-fp61"], stft=["numpyy"])
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip().startswith("•")]
    assert len(lines) == 2
    assert "unknown plugin 'all-fp61'. Did you mean 'all-fp16'?" in lines[0]
    assert "stft: unknown plugin 'numpyy'" in lines[1]
    res = runner.invoke(app, ["validate", str(Path(tmp_path) / "nope.yaml")])
    assert res.exit_code == 1 and "file not found" in res.output


def test_shipped_configs_validate(registry):
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("*.yaml")):
        load_config(path, registry)


@pytest.mark.parametrize("override, line", [
    ({"precison": ["fp32"]}, "precison: unknown key 'precison'. Did you mean 'precision'?"),
    ({"fixture": ["sine_440"]}, "fixture: unknown key 'fixture'. Did you mean 'fixtures'?"),
    ({"targets": {"snrdb": 60}}, "targets.snrdb: unknown key 'snrdb'. Did you mean 'snr_db'? Allowed: atol, rtol, snr_db, stft_rtol"),
    ({"precision": [{"curated-fp32": {"opps": ["softmax"]}}]}, "precision.0.curated-fp32.opps: unknown key 'opps'. Did you mean 'ops'? Allowed: ops"),
    ({"compute": [{"torch": {"devise": "cpu"}}]}, "compute.0.torch.devise: unknown key 'devise'. Did you mean 'device'?"),
])
def test_unknown_keys_and_options_get_the_closest_name(tmp_path, override, line):
    from htx.plugins import load_registry

    with pytest.raises(ConfigError) as exc:
        parse_config(make_config(tmp_path, **override), registry=load_registry(), check_model=False)
    assert any(p.startswith(line) for p in exc.value.problems), exc.value.problems
