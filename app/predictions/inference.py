"""Running the models: rows of concurrent calls micro-batched into one ensemble call per
release on the inference threads, and the records of their answers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import numpy as np

from app.db.tables import Prediction
from app.errors import AllMembersFailedError
from app.ml.contract import to_matrix
from app.ml.ensemble import Ensemble, Outputs
from app.ml.explain import add_time
from app.ml.task import ReviewPolicy
from app.predictions.batching import InferencePool
from app.predictions.inputs import Inputs
from app.predictions.records import Shape, records
from app.predictions.services import ModelCall, Services
from app.releases.deployment import Deployment


@dataclass
class Ran:
    """One submitter's rows of a micro-batched ensemble call, and the call's timings."""

    results: Outputs
    timings: dict[str, float]


def run_models(pool: InferencePool, items: list[ModelCall]) -> Awaitable[list[Ran | Exception]]:
    """Run a micro-batch on an inference thread: one ensemble call per release."""
    return pool.run(sum(len(X) for _, X in items), _run_groups, items)


def _run_groups(items: list[ModelCall]) -> list[Ran | Exception]:
    by_release: dict[int, list[int]] = {}
    for n, (ensemble, _) in enumerate(items):
        by_release.setdefault(id(ensemble), []).append(n)
    outcomes: list[Ran | Exception] = [RuntimeError("not run")] * len(items)
    for ns in by_release.values():
        ensemble = items[ns[0]][0]
        timings: dict[str, float] = {}
        try:
            results, errors = ensemble.predict_columns(
                np.concatenate([items[n][1] for n in ns]), timings)
        except Exception as exc:  # a bug, not a member failure (those come back in errors)
            for n in ns:
                outcomes[n] = exc
            continue
        offset = 0
        for n in ns:
            rows = len(items[n][1])
            outcomes[n] = (Ran(results.sliced(offset, offset + rows), timings)
                           if results is not None
                           else AllMembersFailedError(ensemble.task.name, errors))
            offset += rows
    return outcomes


async def _run_rows(services: Services, ensemble: Ensemble, X: np.ndarray,
                    timings: dict[str, float]) -> list[Outputs]:
    """Results of one release for these rows, through the micro-batcher: up to
    ``batch_max_rows`` rows per call, submitted one after another so that concurrent
    predictions join a long batch's calls instead of waiting for all of them."""
    step = services.settings.batch_max_rows
    results: list[Outputs] = []
    for start in range(0, len(X), step):
        ran: Ran = await services.model_calls.submit((ensemble, X[start:start + step]))
        results.append(ran.results)
        for stage, seconds in ran.timings.items():
            add_time(timings, stage, seconds)
    return results


@dataclass
class Inference:
    """Records (not yet stored), and what is needed to store and observe them."""

    records: list[Prediction]
    policies: dict[int, ReviewPolicy]  # release id -> review policy of the release
    deployment: Deployment
    X: np.ndarray
    timings: dict[str, float]  # stage -> seconds (infer, explain, route)

    def only(self, positions: Sequence[int]) -> Inference:
        """The records at these positions, with their rows of the model matrix."""
        return Inference([self.records[j] for j in positions], self.policies,
                         self.deployment, self.X[list(positions)], self.timings)


async def infer(services: Services, inputs: Inputs) -> Inference:
    """Each row answered by the LIVE release or, by sticky assignment on its traffic key,
    the CANARY; inputs without traffic keys ask LIVE alone (dry runs)."""
    deployment = await services.registry.deployment(inputs.task.name)
    X = to_matrix(inputs.task, inputs.rows)
    chosen = ([deployment.live] * len(inputs.rows) if inputs.traffic_keys is None
              else [deployment.assign(k) for k in inputs.traffic_keys])
    made: list[Prediction | None] = [None] * len(inputs.rows)
    timings: dict[str, float] = {}
    for ensemble in {e.release_id: e for e in chosen}.values():
        indices = [i for i, e in enumerate(chosen) if e is ensemble]
        results = await _run_rows(services, ensemble, X[indices], timings)
        latency_ms = (time.perf_counter() - inputs.started) * 1000
        routing = time.perf_counter()  # the routing decision and the record it goes into
        answered = _release_records(Shape.of(inputs.task, ensemble), results,
                                    inputs.only(indices), latency_ms)
        for i, record in zip(indices, answered, strict=True):
            made[i] = record
        add_time(timings, "route", time.perf_counter() - routing)
    policies = {e.release_id: e.policy for e in chosen}
    return Inference([r for r in made if r is not None], policies, deployment, X, timings)


def _release_records(shape: Shape, results: list[Outputs], inputs: Inputs,
                     latency_ms: float) -> list[Prediction]:
    """The records of one release's rows (``inputs``) from its results, in row order."""
    made: list[Prediction] = []
    for out in results:
        done = len(made)
        made += records(shape, out, inputs.only(range(done, done + len(out))), latency_ms)
    return made
