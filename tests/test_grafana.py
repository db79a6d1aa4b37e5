"""The Grafana dashboard (deploy/grafana/aqueue.json) and the Prometheus alerting rules
(deploy/prometheus/aqueue-alerts.yml): each has the shape its tool loads, and every
metric either names is one aqueue exports, as collected from the real collectors (the
TaskMetrics middleware after one attempt, the QueueCollector after a refresh against a
real server with a queue and limits) in the Prometheus text format a scrape returns.

PyYAML is not a dependency: the rules file keeps to a small YAML subset (block
mappings and sequences, plain and double-quoted scalars, ``|`` and ``>-`` blocks),
which ``load_yaml`` below reads strictly, refusing anything outside it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

import aqueue
from aqueue import Context, Mux, Worker
from aqueue.metrics import QueueCollector, TaskMetrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "aqueue.json"
RULES = ROOT / "deploy" / "prometheus" / "aqueue-alerts.yml"
METRIC = re.compile(r"\baqueue_[a-z0-9_]+\b")


# -- what aqueue exports --------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(aqueue_server_url: str) -> set[str]:
    """Every sample name the metrics code exports, from a scrape of real collectors."""

    async def collect() -> bytes:
        registry = CollectorRegistry()
        middleware = TaskMetrics(registry)
        ctx = Context(task_id="x", task_type="t", queue="q", retry_count=0, max_retry=0,
                      headers={})  # fmt: skip

        async def call_next() -> None:
            return None

        await middleware(ctx, call_next)  # every series of (q, t) exists from here on

        mux = Mux()

        @mux.task("limited", queue="work", rate_limit="10/s", concurrency_limit=2)
        async def limited(ctx: Context) -> None: ...

        mux.limit_queue("work", concurrency_limit=5)
        async with aqueue.Client(aqueue_server_url) as client:
            await client.enqueue("other", queue="work")
        async with Worker(mux, aqueue_server_url, queues=["work"]):
            pass  # a worker declares its mux's limits when it starts
        collector = QueueCollector(aqueue_server_url, registry=registry)
        try:
            await collector.refresh()
        finally:
            await collector.inspector.close()
        return generate_latest(registry)

    flush = redis.Redis.from_url(aqueue_server_url)
    try:
        flush.flushdb()  # a throwaway server, empty before and after, as aqueue_url's
        text = anyio.run(collect).decode()
        flush.flushdb()
    finally:
        flush.close()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}


def test_the_collected_names_cover_every_family(exported: set[str]) -> None:
    assert {
        "aqueue_queue_tasks", "aqueue_queue_latency_seconds", "aqueue_queue_processed_total",
        "aqueue_queue_failed_total", "aqueue_queue_paused", "aqueue_collector_up",
        "aqueue_tasks_processed_total", "aqueue_tasks_failed_total", "aqueue_tasks_in_flight",
        "aqueue_task_duration_seconds_bucket", "aqueue_task_duration_seconds_sum",
        "aqueue_limit_running", "aqueue_limit_concurrency", "aqueue_limit_rate",
        "aqueue_limit_held_back_total",
    } <= exported  # fmt: skip


# -- the Grafana dashboard -------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def exprs(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: its panels' and its variables'."""
    found = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    found += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return found


def test_dashboard_is_a_grafana_dashboard_of_panels_with_targets() -> None:
    board = dashboard()
    assert isinstance(board["uid"], str) and 0 < len(board["uid"]) <= 40
    assert board["title"] == "aqueue"
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert set(board["time"]) == {"from", "to"}
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels) > 10
    taken: set[tuple[int, int]] = set()
    for p in panels:
        assert p["type"] in {"row", "stat", "timeseries"}, p
        assert p["title"]
        pos = p["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y"))
        assert pos["x"] + pos["w"] <= 24
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & taken, f"panel {p['title']!r} overlaps another"
        taken |= cells
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs)
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            assert t["expr"].strip()
    # Every variable an expression uses is defined.
    for expr in exprs(board):
        assert set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"} <= set(variables), expr
        assert balanced(expr), expr


def test_dashboard_names_only_metrics_aqueue_exports(exported: set[str]) -> None:
    used = {name for expr in exprs(dashboard()) for name in METRIC.findall(expr)}
    assert used - exported == set()
    # And it shows every family of the queues, the task types and the limits.
    assert {"aqueue_queue_tasks", "aqueue_task_duration_seconds_bucket",
            "aqueue_limit_held_back_total", "aqueue_tasks_in_flight"} <= used  # fmt: skip


def test_dashboard_points_to_alerts_that_exist() -> None:
    named = set(re.findall(r"Alert: (Aqueue\w+)", DASHBOARD.read_text()))
    assert named and named <= {r["alert"] for r in rules()}


# -- the alerting rules ----------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    loaded = load_yaml(RULES.read_text())
    assert isinstance(loaded, dict) and list(loaded) == ["groups"]
    found: list[dict[str, Any]] = []
    for group in loaded["groups"]:
        assert set(group) == {"name", "rules"} and group["name"]
        found += group["rules"]
    return found


def test_rules_parse_as_prometheus_alerting_rules() -> None:
    found = rules()
    names = [r["alert"] for r in found]
    assert len(set(names)) == len(names)
    for r in found:
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r
        assert re.fullmatch(r"Aqueue[A-Z][A-Za-z0-9]+", r["alert"])
        assert re.fullmatch(r"\d+[smh]", r["for"])
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        assert balanced(r["expr"]), r["expr"]
    by_name = {r["alert"]: r for r in found}
    # The alerts operators asked for.
    backlog = by_name["AqueueQueueBacklog"]
    assert backlog["for"] == "2m" and 'state="pending"' in backlog["expr"]
    assert "rate(aqueue_queue_processed_total" in by_name["AqueueNotProcessing"]["expr"]
    assert by_name["AqueueArchiveOver50"]["expr"].endswith("> 50")
    slow = by_name["AqueueSlowTaskType"]["expr"]
    assert "histogram_quantile(0.99" in slow and "task_type" in slow


def test_rules_name_only_metrics_aqueue_exports(exported: set[str]) -> None:
    used = {name for r in rules() for name in METRIC.findall(r["expr"])}
    assert used and used - exported == set()


def balanced(expr: str) -> bool:
    """Brackets of a PromQL expression pair up (strings aside)."""
    stack: list[str] = []
    pairs = {")": "(", "}": "{", "]": "["}
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in "({[":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


# -- a strict reader of a small YAML subset --------------------------------------------------


class YamlSubsetError(ValueError):
    pass


def load_yaml(text: str) -> Any:
    """Block mappings and sequences, plain and double-quoted scalars, ``|`` and ``>-``
    block scalars, full-line comments; anything else (flow collections, anchors, tags,
    tabs, single quotes, a plain scalar holding ``": "`` or ``" #"``) is refused."""
    if "\t" in text:
        raise YamlSubsetError("tabs")
    lines = [(len(ln) - len(ln.lstrip(" ")), ln.strip(), ln) for ln in text.splitlines()]
    value, end = _block(lines, _skip(lines, 0), 0)
    if _skip(lines, end) != len(lines):
        raise YamlSubsetError(f"unexpected line {end + 1}: {lines[end][2]!r}")
    return value


def _skip(lines: list[tuple[int, str, str]], i: int) -> int:
    while i < len(lines) and (not lines[i][1] or lines[i][1].startswith("#")):
        i += 1
    return i


def _block(lines: list[tuple[int, str, str]], i: int, indent: int) -> tuple[Any, int]:
    if i >= len(lines) or lines[i][0] != indent:
        raise YamlSubsetError(f"expected a block at indent {indent}, line {i + 1}")
    if lines[i][1].startswith("- "):
        items = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            # The item's content starts two columns in: read it as a block there.
            content, inner = lines[i][1][2:].strip(), indent + 2
            lines[i] = (inner, content, " " * inner + content)
            if re.match(r"[A-Za-z_][A-Za-z0-9_]*:( |$)", content):
                item, i = _block(lines, i, inner)
            else:
                item, i = _scalar(content), i + 1
            items.append(item)
            i = _skip(lines, i)
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
        key, sep, rest = lines[i][1].partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or key in mapping:
            raise YamlSubsetError(f"bad key on line {i + 1}: {lines[i][2]!r}")
        rest = rest.strip()
        if rest in ("|", ">-"):
            body, i = _text(lines, i + 1, indent)
            mapping[key] = body + "\n" if rest == "|" else " ".join(body.split("\n"))
        elif rest:
            mapping[key], i = _scalar(rest), i + 1
        else:
            i = _skip(lines, i + 1)
            # A nested block is deeper, or a sequence at the key's own indent.
            nested = i < len(lines) and (
                lines[i][0] > indent or (lines[i][0] == indent and lines[i][1].startswith("- "))
            )
            if not nested:
                raise YamlSubsetError(f"empty value for {key!r}")
            mapping[key], i = _block(lines, i, lines[i][0])
        i = _skip(lines, i)
    return mapping, i


def _text(lines: list[tuple[int, str, str]], i: int, indent: int) -> tuple[str, int]:
    """A block scalar's lines (more indented than its key), their common indent removed."""
    body: list[str] = []
    while i < len(lines) and (not lines[i][1] or lines[i][0] > indent):
        body.append(lines[i][2])
        i += 1
    while body and not body[-1].strip():
        body.pop()
    if not body:
        raise YamlSubsetError(f"empty block scalar before line {i + 1}")
    cut = min(len(b) - len(b.lstrip(" ")) for b in body if b.strip())
    return "\n".join(b[cut:] for b in body), i


def _scalar(text: str) -> Any:
    if text.startswith('"'):
        value = json.loads(text)  # a double-quoted YAML scalar of this subset is JSON
        if not isinstance(value, str):
            raise YamlSubsetError(text)
        return value
    if text[0] in "[]{}&*!|>'%@`#," or ": " in text or " #" in text:
        raise YamlSubsetError(f"outside the subset: {text!r}")
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


def test_yaml_subset_reader_reads_the_subset_and_refuses_the_rest() -> None:
    text = (
        'a:\n  - b: 1\n    c: "x: {{ y }}"\n  - plain text\nd: |\n  one\n  two\ne: >-\n  f\n  g\n'
    )
    assert load_yaml(text) == {
        "a": [{"b": 1, "c": "x: {{ y }}"}, "plain text"],
        "d": "one\ntwo\n",
        "e": "f g",
    }
    for bad in ("a: {b: 1}", "a: &x 1", "a: 'q'", "a: b: c", "a:\n\tb: 1", "a: 1\na: 2"):
        with pytest.raises(YamlSubsetError):
            load_yaml(bad)
