"""BatchOptions applied to a pipeline: overrides of its `run:` block, values as written or parsed, the shard's
manifest, and OptionError worded with the caller's names for options."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina_batch.errors import ConfigError, OptionError
from lamina_batch.models import FailureLimit, Pipeline, Rate, WebhookSettings
from lamina_batch.options import BatchOptions, apply_options, load_for, prepare_pipeline, shard_manifest_path
from lamina_batch.spec import parse_pipeline_text

SPEC = """\
version: 1
name: opts
matrix:
  rows: [{sku: A}]
steps:
  - id: hero
    app: app_7Hk2
    inputs: {Prompt: "{{ row.sku }}"}
"""


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    """A tiny pipeline parsed as if it lived in tmp_path."""
    return parse_pipeline_text(SPEC, tmp_path / "opts.yaml")


def cli_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_no_options_leave_the_pipeline_as_it_is(pipeline: Pipeline) -> None:
    """Default options change nothing."""
    assert apply_options(pipeline, BatchOptions()) is pipeline
    assert load_for(pipeline, BatchOptions()) == pipeline


def test_values_as_written_on_the_command_line_are_parsed(pipeline: Pipeline) -> None:
    """Rates, durations, failure limits and listen addresses may be given as text; a rate becomes a hard cap."""
    run = apply_options(
        pipeline,
        BatchOptions(
            concurrency=3,
            rate_limit="30/min",
            poll_interval="2s",
            timeout="15m",
            max_starts=7,
            max_failures="10%",
            webhook_url="https://hooks.example/lamina",
            listen="0.0.0.0:9000",
        ),
    ).run
    assert (run.concurrency, run.rate_limit, run.rate_limit_explicit) == (3, Rate(30, 60), True)
    assert (run.poll_interval, run.timeout, run.max_starts) == (2.0, 900.0, 7)
    assert run.max_failures == FailureLimit(fraction=0.1)
    assert run.webhook == WebhookSettings("https://hooks.example/lamina", "0.0.0.0:9000")


def test_parsed_values_are_taken_as_they_are(pipeline: Pipeline) -> None:
    """A Rate, seconds, a FailureLimit, a count and a (host, port) pair work as well as their text."""
    run = apply_options(
        pipeline,
        BatchOptions(
            rate_limit=Rate(5, 1),
            timeout=90.0,
            max_failures=4,
            webhook_url="http://127.0.0.1:1/h",
            listen=("127.0.0.1", 8788),
        ),
    ).run
    assert (run.rate_limit, run.timeout) == (Rate(5, 1), 90.0)
    assert run.max_failures == FailureLimit(fraction=None, count=4)
    assert run.webhook == WebhookSettings("http://127.0.0.1:1/h", "127.0.0.1:8788")


@pytest.mark.parametrize(
    ("options", "library", "cli"),
    [
        (BatchOptions(rate_limit="fast"), "rate_limit 'fast': invalid rate", "--rate-limit 'fast': invalid rate"),
        (BatchOptions(max_failures="lots"), "max_failures 'lots': ", "--max-failures 'lots': "),
        (BatchOptions(timeout="soon"), "timeout 'soon': invalid duration", "--timeout 'soon': invalid duration"),
        (BatchOptions(concurrency=0), "concurrency 0 must be", "--concurrency 0 must be"),
        (BatchOptions(listen="nowhere"), "listen needs webhook_url", "--listen needs --webhook-url"),
        (BatchOptions(webhook_url="ftp://x"), "webhook_url 'ftp://x' must be an http(s) URL", "--webhook-url 'ftp"),
        (BatchOptions(webhook_url="https://x", listen="nowhere"), "listen 'nowhere' is not HOST:PORT", "--listen 'no"),
        (BatchOptions(shard="3/2"), "shard '3/2': need 1 <= I <= N", "--shard '3/2'"),
        (BatchOptions(shard="x"), "shard 'x' is not I/N", "--shard 'x'"),
        (BatchOptions(reports=[("pdf", "x.pdf")]), "reports 'pdf': unknown report format", "--reports 'pdf'"),
        (BatchOptions(max_credits="0"), "max_credits '0' must be a positive number", "--max-credits '0'"),
        (BatchOptions(max_credits=-3), "max_credits -3 must be a positive number", "--max-credits -3"),
        (BatchOptions(max_credits="inf"), "max_credits 'inf' must be a positive", "--max-credits 'inf'"),
        (BatchOptions(redo="failed"), "redo 'failed': the only redo is 'rejected'", "--redo 'failed'"),
        (BatchOptions(redo_set=["Seed"]), "redo_set 'Seed' is not NAME=TEMPLATE", "--redo-set 'Seed'"),
        (BatchOptions(redo_set=["Seed={{ attempt"]), "redo_set Seed='{{ attempt': ", "--redo-set Seed="),
    ],
)
def test_a_bad_value_names_its_option(pipeline: Pipeline, options: BatchOptions, library: str, cli: str) -> None:
    """Each malformed option is an OptionError (a ConfigError, exit 2) naming the option and the value."""
    with pytest.raises(OptionError) as info:
        prepare_pipeline(pipeline, options)
    assert isinstance(info.value, ConfigError)
    assert str(info.value).startswith(library)
    assert info.value.worded(cli_flag).startswith(cli)


def test_braces_in_a_value_are_kept_literally(pipeline: Pipeline) -> None:
    """A value containing braces is quoted as given, not taken for a placeholder."""
    with pytest.raises(OptionError) as info:
        apply_options(pipeline, BatchOptions(rate_limit="{0}/min"))
    assert info.value.worded(cli_flag).startswith("--rate-limit '{0}/min': ")


def test_listen_alone_uses_the_pipelines_webhook_url(tmp_path: Path) -> None:
    """--listen without --webhook-url keeps the URL from the spec's run.webhook."""
    spec = SPEC + "run:\n  webhook: {url: 'https://hooks.example/x', listen: '127.0.0.1:8787'}\n"
    pipeline = parse_pipeline_text(spec, tmp_path / "opts.yaml")
    run = apply_options(pipeline, BatchOptions(listen="127.0.0.1:9999")).run
    assert run.webhook == WebhookSettings("https://hooks.example/x", "127.0.0.1:9999")


def test_manifest_option_and_shard_suffix(pipeline: Pipeline, tmp_path: Path) -> None:
    """`manifest` replaces the pipeline's (resolved); a shard's manifest gets the shard's suffix."""
    assert load_for(pipeline, BatchOptions(shard=(2, 4))).manifest == tmp_path / "opts.shard-2-of-4.lamina.sqlite"
    chosen = load_for(pipeline, BatchOptions(manifest=tmp_path / "mine.db")).manifest
    assert chosen == (tmp_path / "mine.db").resolve()
    assert shard_manifest_path(pipeline, None) == pipeline.manifest


def test_max_credits_overrides_the_pipelines_as_a_number(pipeline: Pipeline) -> None:
    """`max_credits` ("2000" as written, or a number) replaces the pipeline's run.max_credits."""
    assert prepare_pipeline(pipeline, BatchOptions(max_credits="2000")).run.max_credits == 2000.0
    assert prepare_pipeline(pipeline, BatchOptions(max_credits=12.5)).run.max_credits == 12.5


def test_redo_set_entries_become_templates_by_name() -> None:
    """`--redo-set NAME=TEMPLATE` entries (or a mapping) are name -> template; the template may hold `=`."""
    assert BatchOptions(redo="rejected", redo_set=["Seed={{ attempt }}", "Note=a=b"]).redo_templates == {
        "Seed": "{{ attempt }}",
        "Note": "a=b",
    }
    assert BatchOptions(redo_set={"Seed": "7"}).redo_templates == {"Seed": "7"}
    assert BatchOptions(redo="rejected").redo_rejected
    assert not BatchOptions().redo_rejected
