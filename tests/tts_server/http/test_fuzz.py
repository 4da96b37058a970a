"""Schema-driven fuzzing of a real server with schemathesis, from its own /openapi.json.

Every operation, with valid and invalid inputs, then stateful sequences through the
documented links (submit a job -> its status -> its audio -> cancel). The checks: no 5xx,
every status documented, every error body matches the documented error schema, every 2xx
its schema and content type. The example count stays small (FUZZ_EXAMPLES, default 8, about
a minute on two cores); `python -m stress.fuzz --examples 2000` runs the same test larger.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.generation import GenerationMode

from tests.support import ServerProcess, started_server

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
STEPS = int(os.environ.get("FUZZ_STEPS", "4"))
CHECKS = ["no_server_error_but_explicit_refusals", "status_code_conformance",
          "content_type_conformance", "response_schema_conformance", "negative_data_rejection"]
# 503s that are the documented answer to a request, not a fault: a client asking for a
# deadline shorter than the queue (X-Deadline-Ms: 1.9) is told so at once, with Retry-After.
REFUSALS = frozenset({"would_miss_deadline", "shedding", "overloaded", "deadline_exceeded"})
# Short texts keep synthesis (what most valid requests cost) quick: the document's limits
# follow the settings, so generated texts stay within them.
OVERRIDES: dict[str, dict[str, Any]] = {
    "text": {"max_text_chars": 120}, "jobs": {"max_text_chars": 240, "poll_interval_s": 0.1},
    "limits": {"tiers": {"anonymous": {"requests_per_s": 10_000.0, "burst": 10_000,
                                       "chars_per_min": 100_000_000}}},
}


@schemathesis.check
def no_server_error_but_explicit_refusals(ctx: Any, response: Any, case: Any) -> None:
    """Any 5xx fails, except a 503 refusal with its code and Retry-After."""
    if response.status_code < 500:
        return
    code = None
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        pass
    refused = response.status_code == 503 and code in REFUSALS
    if not refused or "retry-after" not in response.headers:  # keys are lowercase here
        raise AssertionError(f"server error {response.status_code} {code}")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("fuzz")
    process = started_server(folder, OVERRIDES)
    yield process
    process.stop()
    log = (folder / "server.log").read_text(errors="replace")
    assert "Traceback" not in log, "the server logged an unhandled error"


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServerProcess) -> Any:
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    schema.config.update(base_url=fuzz_server.url)
    schema.config.checks.update(included_check_names=CHECKS)
    schema.config.generation.update(max_examples=EXAMPLES)
    # Invalid input must get a 4xx; 408 and 413 are how we reject some of it (too slow,
    # longer than maxLength), on top of schemathesis's default list.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = sorted({*rejection.expected_statuses, "408", "413"})
    return schema


SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)


def run_operation(operation: Any, mode: GenerationMode) -> None:
    """`EXAMPLES` generated cases of one operation, each called and checked.

    (Driven by hand: schemathesis's lazy pytest parametrization does not run on pytest 9.)"""

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @SETTINGS
    def check(case: Any) -> None:
        case.call_and_validate()

    try:
        check()
    except hypothesis.errors.Unsatisfiable:
        # No invalid input exists (no parameters, or any string is a valid job id).
        assert mode is GenerationMode.NEGATIVE


def test_every_operation_with_valid_and_invalid_input(api_schema):
    failures = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 17
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                run_operation(operation, mode)
            except (Exception, BaseExceptionGroup) as exc:  # one report for every operation
                failures.append(f"{operation.method.upper()} {operation.path} ({mode}): {exc}")
    assert not failures, "\n\n".join(failures)


def test_stateful_job_sequences(api_schema):
    machine = api_schema.as_state_machine()
    machine.run(settings=hypothesis.settings(
        SETTINGS, max_examples=max(2, EXAMPLES // 2), stateful_step_count=STEPS))
