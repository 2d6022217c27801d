"""The fast DP-SGD engine is Opacus's mechanism: proofs of equivalence, statistics, wiring.

Statistical tests use fixed seeds, so they are deterministic; the false-failure rate stated
with each is the chance that a correct implementation fails it with a random seed.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, Metadata, RecordDict
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from scipy import stats
from torch import nn

from oralfed.client.app import handle_train
from oralfed.client.dp_engines import DP_ENGINES, DpEngine, FastDpEngine, get_dp_engine
from oralfed.client.dp_fast import GhostClipping
from oralfed.client.secure_random import DpRandom
from oralfed.client.training import DpRoundPlan, TrainingConfigError, evaluate
from oralfed.privacy.events import DpSgdEvent
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas import protocol
from oralfed.schemas.features import NUM_FEATURES
from oralfed.schemas.model import build_model
from oralfed.schemas.model_record import model_record
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.settings import DpEngineName, FederationSettings, SettingsError
from oralfed.schemas.synthetic import write_federation
from oralfed.server.report import build_run_report
from tests.client.helpers import plan, toy_data

P_THRESHOLD = 1e-6  # per statistical check


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny matrices gain nothing from intra-op threads, and on a shared 2-core runner
    oversubscribed threads make these tests several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class BiasFreeMlp(nn.Module):
    """Linear layers without bias: the other branch of the ghost norm."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng():  # seeded like build_model: the same start in any order
            torch.manual_seed(seed)
            self.layers = nn.Sequential(
                nn.Linear(NUM_FEATURES, 16, bias=False), nn.ReLU(), nn.Linear(16, 1, bias=False)
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)


MODELS = {
    "default": lambda: build_model(seed=11),
    "wide": lambda: build_model((256, 256), seed=12),
    "linear-only": lambda: build_model((), seed=13),
    "no-bias": lambda: BiasFreeMlp(seed=14),
}


def per_sample_norms(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """The naive oracle: one backward pass per sample."""
    norms = []
    for row, label in zip(features, labels, strict=True):
        loss = nn.functional.binary_cross_entropy_with_logits(model(row[None]), label[None])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        norms.append(float(torch.cat([g.flatten() for g in grads]).norm()))
    return np.array(norms)


def opacus_private_gradient(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    clip_norm: float,
    noise_multiplier: float,
    divisor: float,
    rng: DpRandom,
) -> list[torch.Tensor]:
    """Opacus's hooks mode: per-sample gradients, ``DPOptimizer.pre_step`` (clip, sum, divide
    by the expected batch size), plus Opacus's noise of std σ·C per parameter in
    ``model.parameters()`` order, drawn from ``rng`` and divided by the same."""
    private = GradSampleModule(model)  # grad_sample_mode="hooks", loss_reduction="mean"
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=clip_norm,
        expected_batch_size=divisor,
    )
    nn.BCEWithLogitsLoss()(private(features), labels).backward()
    optimizer.pre_step()
    grads = []
    for parameter in model.parameters():
        assert parameter.grad is not None
        noise = rng.normal_like(parameter, noise_multiplier * clip_norm)
        grads.append(parameter.grad.detach() + noise / divisor)
    private._close()
    return grads


def fast_private_gradient(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    clip_norm: float,
    noise_multiplier: float,
    divisor: float,
    rng: DpRandom,
) -> list[torch.Tensor]:
    clipping = GhostClipping(model)
    clipping.private_gradient(
        features, labels, clip_norm, noise_multiplier * clip_norm, divisor, rng
    )
    clipping.detach()
    return [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]


def assert_relative_close(
    actual: list[torch.Tensor], expected: list[torch.Tensor], tolerance: float = 1e-5
) -> None:
    for a, e in zip(actual, expected, strict=True):
        assert float((a - e).norm() / e.norm()) <= tolerance


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("noise_multiplier", [0.0, 1.3])
def test_private_gradient_equals_opacus_hooks_mode(
    model_name: str, noise_multiplier: float
) -> None:
    x, y = toy_data(48, seed=3)
    features, labels = torch.from_numpy(x * 3.0), torch.from_numpy(y)
    model = MODELS[model_name]()
    norms = per_sample_norms(model, features, labels)
    clip_norm = float(np.median(norms))  # half the samples are clipped, half are not
    assert (norms < clip_norm * 0.9).sum() >= 10 and (norms > clip_norm * 1.1).sum() >= 10
    ours = fast_private_gradient(
        copy.deepcopy(model),
        features,
        labels,
        clip_norm,
        noise_multiplier,
        40,
        DpRandom.from_seed(5),
    )
    reference = opacus_private_gradient(
        copy.deepcopy(model),
        features,
        labels,
        clip_norm,
        noise_multiplier,
        40,
        DpRandom.from_seed(5),
    )
    assert_relative_close(ours, reference)


def test_gradients_differ_when_clipping_is_wrong() -> None:
    """The comparison above can fail: a different C gives a different clipped sum."""
    x, y = toy_data(48, seed=3)
    features, labels = torch.from_numpy(x * 3.0), torch.from_numpy(y)
    model = build_model(seed=11)
    rng = DpRandom.from_seed(0)
    ours = fast_private_gradient(copy.deepcopy(model), features, labels, 0.5, 0.0, 40, rng)
    reference = opacus_private_gradient(model, features, labels, 0.6, 0.0, 40, rng)
    with pytest.raises(AssertionError):
        assert_relative_close(ours, reference)


def test_noise_has_the_stated_standard_deviation() -> None:
    """Noise = noisy gradient - clean gradient, rescaled by E / (σ·C), must be N(0, 1):
    mean (z-test), variance (χ² test) and shape (Kolmogorov-Smirnov), each at p < 1e-6, so a
    correct engine fails with probability below 3e-6."""
    x, y = toy_data(64, seed=4)
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    model = build_model(seed=2)
    clip_norm, sigma, divisor = 0.7, 1.5, 50
    clean = torch.cat(
        [
            g.flatten()
            for g in fast_private_gradient(
                model, features, labels, clip_norm, 0.0, divisor, DpRandom.from_seed(0)
            )
        ]
    )
    rng = DpRandom.from_seed(9)
    samples = []
    for _ in range(40):
        noisy = fast_private_gradient(model, features, labels, clip_norm, sigma, divisor, rng)
        samples.append((torch.cat([g.flatten() for g in noisy]) - clean) * divisor)
    noise = (torch.cat(samples) / (sigma * clip_norm)).double().numpy()
    count = len(noise)
    assert count > 100_000
    assert abs(noise.mean()) * np.sqrt(count) < stats.norm.isf(P_THRESHOLD / 2)
    chi2 = (count - 1) * noise.var(ddof=1)
    assert stats.chi2.ppf(P_THRESHOLD / 2, count - 1) < chi2
    assert chi2 < stats.chi2.isf(P_THRESHOLD / 2, count - 1)
    assert stats.kstest(noise, "norm").pvalue > P_THRESHOLD


@pytest.mark.parametrize("draws_per_step", [None, 3])
def test_poisson_batches_follow_binomial_and_sample_every_record_at_rate_q(
    draws_per_step: int | None,
) -> None:
    """χ² goodness of fit of the batch sizes to Binomial(n, q) and of the per-record counts
    to Binomial(T, q) (independent across records), each at p < 1e-6. ``draws_per_step=3``
    makes nearly every batch take the path that draws more gaps."""
    n, q, draws = 400, 0.03, 4000
    sizes = np.zeros(draws, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    batches = DpRandom.from_seed(21).poisson_batches(n, q, draws, draws_per_step=draws_per_step)
    for step, tensor in enumerate(batches):
        batch = tensor.numpy()
        assert batch.min(initial=0) >= 0 and batch.max(initial=0) < n
        assert np.all(np.diff(batch) > 0)  # sorted, no record twice
        sizes[step] = len(batch)
        counts[batch] += 1
    assert step == draws - 1
    support = np.arange(n + 1)
    expected = stats.binom.pmf(support, n, q) * draws
    observed = np.bincount(sizes, minlength=n + 1)
    low, high = stats.binom.ppf([0.01, 0.99], n, q).astype(int)
    bins = [slice(0, low), *(slice(k, k + 1) for k in range(low, high)), slice(high, n + 1)]
    fit = stats.chisquare([observed[b].sum() for b in bins], [expected[b].sum() for b in bins])
    assert fit.pvalue > P_THRESHOLD
    per_record = ((counts - draws * q) ** 2 / (draws * q * (1 - q))).sum()
    assert stats.chi2.sf(per_record, n) > P_THRESHOLD
    assert stats.chi2.cdf(per_record, n) > P_THRESHOLD


def test_poisson_sampling_takes_everyone_at_rate_one() -> None:
    batches = list(DpRandom.from_seed(0).poisson_batches(7, 1.0, 2))
    assert [b.tolist() for b in batches] == [list(range(7))] * 2


def recorded_training(
    name: str, round_plan: DpRoundPlan, seed: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[list[int]], list[torch.Tensor], torch.Tensor]:
    """Train engine ``name`` on 300 toy rows; return the Poisson batches and the noise
    tensors it drew from its :class:`DpRandom`, in order, and the trained weights."""
    batches: list[list[int]] = []
    noise: list[torch.Tensor] = []
    poisson_batches, normal_like = DpRandom.poisson_batches, DpRandom.normal_like

    def recording_batches(rng: DpRandom, *args: object, **kwargs: object) -> Iterator[torch.Tensor]:
        for batch in poisson_batches(rng, *args, **kwargs):  # type: ignore[arg-type]
            batches.append(batch.tolist())
            yield batch

    def recording_noise(rng: DpRandom, tensor: torch.Tensor, std: float) -> torch.Tensor:
        noise.append(normal_like(rng, tensor, std))
        return noise[-1].clone()

    x, y = toy_data(300)
    model = build_model(seed=8)
    with monkeypatch.context() as patch:
        patch.setattr(DpRandom, "poisson_batches", recording_batches)
        patch.setattr(DpRandom, "normal_like", recording_noise)
        get_dp_engine(name).train(model, x, y, round_plan, seed=seed)
    return batches, noise, flat_weights(model)


def flat_weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_one_seed_gives_both_engines_the_same_batches_noise_and_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both engines draw from :class:`DpRandom` in one order, so one seed gives them the same
    batches and noise (the fast engine draws it pre-divided by E) and, up to rounding, the
    same model. E is the plan's q·N = 40 for this public size; make_private's own rule,
    int(rows / len(loader)) = int(300 / 8) = 37, would make the models differ."""
    round_plan = plan(public_size=320, batch_size=40, local_epochs=2)
    assert round_plan.expected_batch_size == 40 and round_plan.steps == 16
    fast_batches, fast_noise, fast_model = recorded_training("fast", round_plan, 7, monkeypatch)
    batches, noise, model = recorded_training("opacus", round_plan, 7, monkeypatch)
    assert fast_batches == batches and len(batches) == round_plan.steps
    assert len(fast_noise) == len(noise) == round_plan.steps * len(list(build_model().parameters()))
    for fast_draw, draw in zip(fast_noise, noise, strict=True):
        torch.testing.assert_close(fast_draw * 40, draw)
    update = float((fast_model - flat_weights(build_model(seed=8))).norm())
    assert float((fast_model - model).norm()) < 1e-4 * update  # seen: below 2e-7


@pytest.mark.parametrize("name", list(DpEngineName))
@pytest.mark.parametrize("bit", [40, 70])
def test_seeds_that_differ_only_above_bit_32_or_64_give_other_batches_and_noise(
    name: str, bit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's generator kept the low 32 bits of a seed, so seeds s and s + 2**40 trained the
    same model: a search over 2**32 seeds found the noise. Now every key bit counts."""
    round_plan = plan(public_size=300, local_epochs=1)
    batches, noise, model = recorded_training(name, round_plan, 123_456_789, monkeypatch)
    other_batches, other_noise, other_model = recorded_training(
        name, round_plan, 123_456_789 + 2**bit, monkeypatch
    )
    assert batches != other_batches
    assert not any(torch.equal(a, b) for a, b in zip(noise, other_noise, strict=True))
    assert not torch.allclose(model, other_model)


def test_both_engines_spend_exactly_the_charged_plan(tmp_path: Path) -> None:
    x, y = toy_data(600)
    round_plan = plan(public_size=600, batch_size=50, local_epochs=2)
    epsilons = []
    for name in DpEngineName:
        result = get_dp_engine(name).train(build_model(seed=1), x, y, round_plan, seed=3)
        assert result.engine == name and result.steps == round_plan.steps == 24
        event = DpSgdEvent(round_plan.noise_multiplier, round_plan.sample_rate, result.steps)
        assert event == round_plan.event
        with PrivacyLedger.in_state_dir(tmp_path / name) as ledger:
            ledger.ensure_dataset("clinic", 10.0, 1e-5, "rdp")
            epsilons.append(ledger.charge("clinic", event, run_id="r", round=1).epsilon_after)
    assert epsilons[0] == epsilons[1] > 0


def test_an_engine_that_strays_from_the_plan_withholds_the_update() -> None:
    class Sloppy(FastDpEngine):
        def _run(self, model, x, y, plan, seed):  # type: ignore[no-untyped-def]
            return 0.5, plan.steps - 1

    x, y = toy_data(100)
    with pytest.raises(RuntimeError, match="withheld"):
        Sloppy().train(build_model(seed=1), x, y, plan(public_size=100), seed=1)


def test_fast_engine_learns() -> None:
    x, y = toy_data(2000)
    model = build_model(seed=1)
    before = evaluate(model, x, y)
    result = FastDpEngine().train(
        model, x, y, plan(public_size=2000, noise_multiplier=0.8, local_epochs=3), seed=1
    )
    after = evaluate(model, x, y)
    assert before.auc is not None and after.auc is not None
    assert after.auc > 0.85 > before.auc
    assert 0 < result.mean_loss < 1.0


def test_fast_engine_applies_the_fedprox_pull() -> None:
    x, y = toy_data(500)
    start = build_model(seed=6)

    def distance_after(mu: float) -> float:
        model = copy.deepcopy(start)
        FastDpEngine().train(model, x, y, plan(public_size=500, proximal_mu=mu), seed=4)
        return sum(
            float((p - q).detach().pow(2).sum())
            for p, q in zip(model.parameters(), start.parameters(), strict=True)
        )

    assert distance_after(2.0) < 0.7 * distance_after(0.0)


@pytest.mark.parametrize("engine", [FastDpEngine(), get_dp_engine("opacus")])
def test_seeded_runs_repeat_and_unseeded_runs_use_a_secret_seed(
    engine: DpEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    requested: list[int] = []
    system_randbits = secrets.randbits

    def recording_randbits(bits: int) -> int:
        requested.append(bits)
        return system_randbits(bits)

    monkeypatch.setattr(secrets, "randbits", recording_randbits)
    x, y = toy_data(300)
    round_plan = plan(public_size=300, local_epochs=1)

    def weights(seed: int | None) -> torch.Tensor:
        model = build_model(seed=8)
        engine.train(model, x, y, round_plan, seed=seed)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(weights(5), weights(5), rtol=0, atol=0)
    assert requested == []  # a seeded run draws no secret
    assert not torch.allclose(weights(None), weights(None))
    assert requested == [128, 128]  # one 128-bit key from the OS per unseeded run


class WithLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(NUM_FEATURES)
        self.out = nn.Linear(NUM_FEATURES, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(features)).squeeze(-1)


class SharedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(NUM_FEATURES, NUM_FEATURES)
        self.out = nn.Linear(NUM_FEATURES, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.hidden(features))).squeeze(-1)


class SequenceInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(NUM_FEATURES, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(features[:, None, :]).mean(dim=(1, 2))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (WithLayerNorm(), "norm.weight belongs to a LayerNorm"),
        (SharedLinear(), "each nn.Linear used once"),
        (SequenceInput(), "2-D inputs"),
        (build_model(seed=1).requires_grad_(False), "layers.0.weight is frozen"),
    ],
)
def test_fast_engine_refuses_models_it_cannot_clip_exactly(model: nn.Module, message: str) -> None:
    x, y = toy_data(100)
    with pytest.raises(TrainingConfigError, match=message):
        FastDpEngine().train(model, x, y, plan(public_size=100), seed=1)


def test_engines_are_chosen_by_the_protocol_names() -> None:
    assert set(DP_ENGINES) == set(DpEngineName)  # one registry, every name has its engine
    assert get_dp_engine().name == DpEngineName.FAST == "fast"
    with pytest.raises(TrainingConfigError, match="unknown DP engine 'turbo'; choose one of fast"):
        get_dp_engine("turbo")


def test_settings_send_the_engine_and_the_report_names_it() -> None:
    settings = FederationSettings.from_run_config({"dp-engine": "opacus", "target-epsilon": 3.0})
    assert settings.train_config()[protocol.CFG_DP_ENGINE] == "opacus"
    assert FederationSettings().dp_engine == "fast"
    with pytest.raises(SettingsError, match="dp-engine must be one of fast, opacus"):
        FederationSettings(dp_engine="turbo")
    report = build_run_report(
        run_id="r",
        status="completed",
        message=None,
        settings=settings.public_dict(),
        rounds=[],
    )
    assert report["dp_engine"] == "opacus"


def train_message(settings: FederationSettings) -> Message:
    config = settings.train_config()
    config[protocol.CFG_ROUND] = 1
    arrays = model_record(build_model(seed=1))
    metadata = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})
    return Message(content=content, metadata=metadata)


def test_clinic_refuses_an_unknown_engine_before_charging_and_trains_with_the_named_one(
    tmp_path: Path,
) -> None:
    (data_path,) = write_federation(tmp_path / "data", 1, seed=3)
    node = ClinicNode("c1", data_path, tmp_path / "state", "c1", accountant="rdp")
    settings = FederationSettings(
        rounds=2,
        local_epochs=1,
        batch_size=32,
        target_epsilon=None,
        noise_multiplier=1.0,  # calibrating a target ε would dominate this test's time
        dp_engine="fast",
    )
    bad = train_message(settings)
    bad.content["config"][protocol.CFG_DP_ENGINE] = "turbo"
    with pytest.raises(TrainingConfigError, match="unknown DP engine 'turbo'"):
        handle_train(bad, node)
    assert not node.state_dir.exists()  # the ledger was never opened, nothing was charged
    reply = handle_train(train_message(settings), node)
    metrics = reply.content[protocol.REPLY_METRICS]
    with PrivacyLedger.in_state_dir(node.state_dir) as ledger:  # beside the size estimate's
        (charge,) = [c for c in ledger.history("c1") if isinstance(c.event, DpSgdEvent)]
    assert charge.event == DpSgdEvent(
        metrics[protocol.NOISE_MULTIPLIER],
        metrics[protocol.SAMPLE_RATE],
        int(metrics[protocol.DP_STEPS]),
    )
    assert metrics[protocol.EPSILON_SPENT] == pytest.approx(charge.epsilon_after)
