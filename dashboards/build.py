"""Writes every board to `dashboards/generated/<uid>.json` (sorted keys, stable uids and
panel ids), or checks that the committed JSON matches what the sources generate."""

from __future__ import annotations

import json
from pathlib import Path

from grafanalib._gen import DashboardEncoder

GENERATED = Path(__file__).resolve().parent / "generated"

# Fields grafanalib 0.7.1 still writes from Grafana's pre-schema JSON model (fixed-height
# rows, spans); Grafana ignores them and its dashboard schema has no such fields.
_LEGACY_PANEL_FIELDS = ("editable", "error", "height", "span", "minSpan")


def _without_nulls(value):
    """grafanalib writes every unset field as null, where Grafana's schema wants it absent.
    Threshold steps keep theirs: the first step's null value is -Infinity."""
    if isinstance(value, dict):
        return {k: v if k == "steps" else _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def grafana_json(board) -> dict:
    """A board's JSON model, as Grafana's dashboard schema has it."""
    data = _without_nulls(json.loads(json.dumps(board.data, cls=DashboardEncoder)))
    for panel in data["panels"]:
        for name in _LEGACY_PANEL_FIELDS:
            panel.pop(name, None)
    return data


def render() -> dict[str, str]:
    """{file name: JSON text} for every board, exactly as `build` writes them."""
    from dashboards.boards import dashboards

    out: dict[str, str] = {}
    for board in dashboards():
        assert board.uid, board.title
        data = grafana_json(board)
        out[f"{board.uid}.json"] = json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    return out


def build(out_dir: Path = GENERATED) -> list[Path]:
    """Writes the boards to `out_dir`, removing generated files of boards that no longer exist."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = render()
    for stale in out_dir.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in sorted(files.items()):
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def differences(out_dir: Path = GENERATED) -> list[str]:
    """File names whose content in `out_dir` differs from the sources (missing, changed or extra)."""
    out_dir = Path(out_dir)
    files = render()
    present = {p.name for p in out_dir.glob("*.json")} if out_dir.is_dir() else set()
    diff = [n for n in sorted(present - files.keys())]
    for name, text in sorted(files.items()):
        path = out_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            diff.append(name)
    return diff
