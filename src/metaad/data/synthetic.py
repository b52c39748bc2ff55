"""The built-in default dataset: seeded synthetic card fraud, plant sensors and network flows.

Why a synthetic default exists: the pipeline must run end to end with no download, at any
size from a unit test to tens of millions of rows, and give the same bytes for the same seed.
Why it is built the way it is: it is a benchmark for *meta-learning*, so its structure is
chosen to reward what meta-learning can do and simple methods cannot, and that structure is
stated here rather than hidden.

Structure shared by the three domains (honest description of what a model can exploit)
---------------------------------------------------------------------------------------
* **Structured features.** A few latent factors drive a group of features linearly, plus a
  small per-feature noise (``residual_noise``). Normal rows therefore lie close to a
  low-dimensional linear subspace of the structured features: the features are strongly
  correlated and the residual off that subspace is small.
* **Nuisance features.** Other features vary a lot among normals (a mixture over customer
  segments / operating modes, with Student-t tails) but **no anomaly type ever changes
  them**. After per-feature standard scaling they dominate Euclidean distances and dilute
  isolation, so label-free detectors are mediocre by construction. Their names are returned
  by :func:`nuisance_columns`.
* **Anomalies** change 5-6 structured features only (rows; 1-4 sensors), of different kinds:
  ``shift`` (a feature subset moves in a fixed direction), ``sign_flip`` (a fixed pattern with
  a random sign per row: symmetric, so a linear classifier or a prototype built from a few
  examples does poorly), ``random_sign`` (each feature of the subset moves up or down at
  random), ``corr_break`` (features are redrawn from an independent latent: marginals stay
  plausible, only the correlations break), ``variance`` (extra independent noise) and
  ``cluster`` (a tight new cluster inside the marginal ranges but off the subspace). The
  direction-consistent kinds (shift, cluster) are moderate, about 1-1.7 feature stds, so a
  few examples do not make them trivial; the symmetric kinds are larger (added noise of
  3.6-4.8 stds, random signs of 2.8-4.6 stds), or Isolation Forest would sit at chance on
  every type. Sensor
  faults are temporal versions of the same kinds (step, drift, oscillation, stuck, spikes,
  correlation break, noise burst, lag), written into segments of 40-120 steps of some
  series; every row of a segment has label 1 and the fault's type, including rows that
  happen to look normal (between two spikes, say), so sensor data is meant to be windowed.
  :func:`describe_types` lists every type with its kind and features.
* **Categoricals** follow the customer segment (so they are mostly nuisance too); a few
  anomaly types make one value more likely (e.g. ``dns_tunnelling`` and ``service=dns``),
  a weak hint, never a giveaway.

What a meta-learner can discover from the training types and reuse on unseen ones is
therefore: ignore the nuisance features, and measure distance off the normal subspace of
the structured ones (a Mahalanobis-like metric). A detector that knows the nuisance columns
and fits a Mahalanobis distance on the structured ones is the "type-agnostic oracle" in
``bench/synthetic_difficulty.py``. This is a deliberate, simplified world: real data need not
have such a clean split, and results on it say how well a method *can* learn such structure,
not how it will do on a given real set.

Determinism and scale
---------------------
Tables are produced in fixed internal blocks of :data:`BLOCK_ROWS` rows; block ``b`` is
generated from ``np.random.default_rng([seed, domain_id, b])`` (and two sibling streams,
``[seed, domain_id, b, 1]`` for context and nuisance, ``[..., 2]`` for anomalies) alone, so
memory is bounded, the output never depends on how a caller consumes it, and the same
arguments give the same bytes (:func:`write` streams the blocks to one Parquet file). The
nuisance columns do not depend on the anomaly rate at all, and a row that is normal under
two rates is identical under both.

Difficulty
----------
Every difficulty knob is a module-level constant (the ``*_KNOBS`` frozen dataclasses and the
anomaly specs), so the benchmark is retuned in one place; ``bench/synthetic_difficulty.py``
measures it. At the default knobs (seeds 0 and 1; 60k rows, 200 sensor series as 16-step
windows; 5% query contamination, K=5 + 50 normals) macro AUPRC is about: Isolation Forest
0.20 / 0.13-0.18 / 0.16 (card / sensor / network), logistic regression on the support set
0.39 / 0.32 / 0.43, nearest prototype in scaled raw space 0.28 / 0.17 / 0.28, while a
Mahalanobis distance on the structured columns alone (no labels, but told which columns
are nuisance) reaches 0.97 / 0.93 / 0.96 and a per-type supervised oracle 0.99 / 0.97 / 0.99.
The gap between the simple methods and the structured Mahalanobis distance is what a
meta-learner can close; that the zero-shot oracle is already near the ceiling means the
K-shot gain on top of a well-learned metric is small here (largest for the shift types).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from metaad.data.schema import LABEL, NORMAL, SERIES, TIMESTAMP, TYPE
from metaad.errors import ConfigError

log = logging.getLogger(__name__)

DOMAINS: tuple[str, ...] = ("card", "sensor", "network")
#: Rows per internal block. Output depends on it, so it is a constant, never an argument.
BLOCK_ROWS = 100_000
#: Smallest table :func:`generate` accepts: below it some anomaly types would get no rows.
MIN_ROWS = 1000
#: Anomaly rate must lie strictly inside this open interval.
RATE_RANGE = (0.0, 0.5)
_DOMAIN_ID = {"card": 1, "sensor": 2, "network": 3}
#: series_id = block * SERIES_ID_STRIDE + series number within the block (unique, block-local).
SERIES_ID_STRIDE = 10_000

ROW_KINDS = ("shift", "sign_flip", "random_sign", "corr_break", "variance", "cluster")


# --------------------------------------------------------------------------------------
# Specs (the knobs)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowKnobs:
    """Difficulty knobs of a row domain (card, network).

    Attributes:
        residual_noise: std of each structured feature around the latent subspace, in units
            of the feature's std. Smaller makes off-subspace anomalies easier to see for a
            model that learned the correlations (and does not help one that did not).
        segment_latent_shift: how far customer segments move the latent factors (an
            on-subspace multimodality that widens the marginals without hiding residuals).
        nuisance_tail_df: Student-t degrees of freedom of the nuisance noise; lower means
            heavier tails, more normal "outliers", weaker label-free detectors.
        nuisance_tail_scale: multiplies the nuisance noise scale of every nuisance feature.
        size_scale: multiplies every anomaly size (one knob to make the whole domain easier).
        jitter: log-normal sigma of the per-row magnitude of shifts.
    """

    residual_noise: float = 0.3
    segment_latent_shift: float = 0.5
    nuisance_tail_df: float = 2.5
    nuisance_tail_scale: float = 1.0
    size_scale: float = 1.2
    jitter: float = 0.5


@dataclass(frozen=True)
class AnomalySpec:
    """One anomaly type of a row domain.

    ``size`` is in units of the structured feature's std (before ``RowKnobs.size_scale``).
    Its meaning by ``kind``: shift/sign_flip/random_sign: the displacement; variance: the std
    of the added noise; corr_break: scale of the redrawn values (1 keeps the marginals);
    cluster: distance of the cluster centre, with ``pattern`` as direction and ``spread`` as
    the within-cluster std.
    """

    name: str
    kind: str
    features: tuple[str, ...]
    size: float
    pattern: tuple[float, ...] = ()
    spread: float = 0.15
    categorical: tuple[str, str, float] | None = None  # (column, value, probability)
    doc: str = ""


@dataclass(frozen=True)
class NuisanceSpec:
    """A nuisance feature: segment-dependent level plus heavy-tailed noise, in named units.

    ``kind="hour"`` makes two columns ``<name>_sin``/``<name>_cos`` from an hour drawn around
    a segment-specific peak hour (``seg_means`` are the peak hours).
    """

    name: str
    seg_means: tuple[float, ...]
    tail_scale: float
    kind: str = "heavy"  # heavy | hour | exp | positive_int | unit


@dataclass(frozen=True)
class CategoricalSpec:
    """A categorical column whose normal distribution depends on the segment."""

    name: str
    values: tuple[str, ...]
    seg_probs: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class RowDomainSpec:
    """Everything that defines a row domain; see the module docstring for the model."""

    structured: tuple[str, ...]
    units: tuple[tuple[float, float], ...]  # (mean, scale) per structured feature
    loadings: tuple[tuple[float, ...], ...]  # per structured feature, weight per latent
    segment_probs: tuple[float, ...]
    nuisance: tuple[NuisanceSpec, ...]
    categorical: tuple[CategoricalSpec, ...]
    anomalies: tuple[AnomalySpec, ...]
    knobs: RowKnobs

    @property
    def n_latent(self) -> int:
        return len(self.loadings[0])

    @property
    def nuisance_columns(self) -> tuple[str, ...]:
        out: list[str] = []
        for n in self.nuisance:
            out += [f"{n.name}_sin", f"{n.name}_cos"] if n.kind == "hour" else [n.name]
        return tuple(out)


# -- card --------------------------------------------------------------------------------
# Latents: z0 spending level, z1 activity rate, z2 mobility, z3 account maturity.
CARD_KNOBS = RowKnobs()
CARD = RowDomainSpec(
    structured=(
        "log_amount",
        "log_amount_vs_customer_mean",
        "log_distance_home_km",
        "log_distance_last_txn_km",
        "log_minutes_since_last_txn",
        "txn_count_1h",
        "txn_count_24h",
        "merchant_risk_logit",
        "log_account_age_days",
        "log_device_age_days",
        "decline_rate_7d_logit",
        "refund_ratio_30d_logit",
        "log_merchant_volume",
        "card_present_score",
    ),
    units=(
        (3.6, 1.1),
        (0.0, 0.6),
        (2.0, 1.3),
        (1.5, 1.4),
        (5.5, 1.6),
        (1.2, 0.9),
        (4.0, 2.2),
        (-2.5, 0.8),
        (6.5, 1.0),
        (5.0, 1.2),
        (-3.5, 0.7),
        (-3.0, 0.9),
        (8.0, 1.5),
        (0.6, 0.25),
    ),
    loadings=(
        (0.9, 0.0, 0.1, 0.3),
        (0.6, -0.4, 0.0, 0.0),
        (0.2, 0.0, 0.9, 0.0),
        (0.0, 0.3, 0.9, 0.0),
        (0.0, -0.9, 0.3, 0.0),
        (0.0, 0.9, 0.0, -0.2),
        (0.3, 0.8, 0.0, 0.2),
        (0.3, 0.0, 0.4, -0.5),
        (0.0, 0.0, 0.0, 1.0),
        (0.0, 0.0, -0.3, 0.8),
        (0.0, 0.3, 0.0, -0.7),
        (0.5, 0.0, 0.0, -0.4),
        (0.5, 0.4, 0.3, 0.0),
        (0.0, 0.0, -0.7, 0.4),
    ),
    segment_probs=(0.35, 0.25, 0.2, 0.12, 0.08),
    nuisance=(
        NuisanceSpec("hour", (12.5, 19.0, 9.0, 22.0, 15.0), 2.5, kind="hour"),
        NuisanceSpec("log_credit_limit", (7.0, 8.2, 9.0, 9.8, 11.0), 0.35),
        NuisanceSpec("credit_utilisation", (0.1, 0.35, 0.55, 0.75, 0.95), 0.08, kind="unit"),
        NuisanceSpec("log_loyalty_points", (0.5, 3.0, 6.0, 8.0, 10.5), 0.8),
        NuisanceSpec("household_size", (1.0, 2.2, 3.4, 4.6, 2.0), 0.5, kind="positive_int"),
        NuisanceSpec("app_sessions_30d", (1.0, 2.0, 2.8, 3.5, 0.5), 0.45, kind="exp"),
        NuisanceSpec("income_score", (-1.5, -0.3, 0.4, 1.2, 2.5), 0.3),
    ),
    categorical=(
        CategoricalSpec(
            "merchant_category",
            (
                "grocery",
                "fuel",
                "restaurant",
                "travel",
                "electronics",
                "online_retail",
                "entertainment",
                "utilities",
            ),
            (
                (0.30, 0.15, 0.15, 0.02, 0.05, 0.15, 0.08, 0.10),
                (0.20, 0.10, 0.25, 0.05, 0.08, 0.20, 0.10, 0.02),
                (0.25, 0.20, 0.10, 0.10, 0.05, 0.10, 0.05, 0.15),
                (0.10, 0.05, 0.20, 0.25, 0.10, 0.15, 0.13, 0.02),
                (0.15, 0.10, 0.15, 0.15, 0.15, 0.15, 0.10, 0.05),
            ),
        ),
        CategoricalSpec(
            "channel",
            ("chip", "contactless", "online", "atm"),
            (
                (0.35, 0.40, 0.20, 0.05),
                (0.20, 0.35, 0.40, 0.05),
                (0.45, 0.25, 0.20, 0.10),
                (0.25, 0.30, 0.40, 0.05),
                (0.30, 0.30, 0.30, 0.10),
            ),
        ),
    ),
    anomalies=(
        AnomalySpec(
            "card_testing",
            "shift",
            (
                "log_amount",
                "log_amount_vs_customer_mean",
                "decline_rate_7d_logit",
                "txn_count_1h",
                "merchant_risk_logit",
                "card_present_score",
            ),
            1.4,
            pattern=(-1.0, -0.7, 1.0, 0.7, 0.6, -0.6),
            categorical=("channel", "online", 0.5),
            doc="many small probing payments: low amount, declines, a burst in the last hour",
        ),
        AnomalySpec(
            "account_takeover",
            "corr_break",
            (
                "log_device_age_days",
                "log_distance_home_km",
                "card_present_score",
                "log_amount_vs_customer_mean",
                "log_minutes_since_last_txn",
            ),
            1.8,
            doc="device, place, pace and spending no longer fit the account's own history",
        ),
        AnomalySpec(
            "high_value_burst",
            "variance",
            (
                "log_amount",
                "log_amount_vs_customer_mean",
                "txn_count_24h",
                "txn_count_1h",
                "log_merchant_volume",
            ),
            3.0,
            doc="amounts and counts far from the account's usual, in either direction",
        ),
        AnomalySpec(
            "geo_impossible_travel",
            "shift",
            (
                "log_distance_last_txn_km",
                "log_minutes_since_last_txn",
                "card_present_score",
                "log_distance_home_km",
                "txn_count_1h",
            ),
            1.3,
            pattern=(1.0, -1.0, 0.6, 0.6, 0.4),
            doc="far from the previous transaction, too soon after it, card present",
        ),
        AnomalySpec(
            "merchant_collusion",
            "cluster",
            (
                "log_amount",
                "merchant_risk_logit",
                "refund_ratio_30d_logit",
                "log_merchant_volume",
                "log_amount_vs_customer_mean",
            ),
            0.8,
            pattern=(0.6, 0.5, 0.6, -0.8, -0.5),
            categorical=("merchant_category", "electronics", 0.5),
            doc="a ring of merchants: near-identical amounts, risk and refunds, low volume",
        ),
        AnomalySpec(
            "refund_abuse",
            "sign_flip",
            (
                "refund_ratio_30d_logit",
                "log_amount_vs_customer_mean",
                "txn_count_24h",
                "decline_rate_7d_logit",
                "log_merchant_volume",
            ),
            3.0,
            pattern=(1.0, -1.0, 0.7, -0.5, 0.5),
            doc="refund ratio out of line with amounts and counts (sign differs by scheme)",
        ),
        AnomalySpec(
            "synthetic_identity",
            "cluster",
            (
                "log_account_age_days",
                "log_device_age_days",
                "decline_rate_7d_logit",
                "card_present_score",
                "log_distance_home_km",
            ),
            0.8,
            pattern=(0.6, -0.8, -0.5, -0.6, 0.4),
            doc="fabricated profiles: old-looking account, new device, few declines, remote",
        ),
        AnomalySpec(
            "bust_out",
            "random_sign",
            (
                "txn_count_1h",
                "txn_count_24h",
                "log_minutes_since_last_txn",
                "log_distance_last_txn_km",
                "log_merchant_volume",
                "log_amount",
            ),
            2.3,
            doc="erratic velocity and amounts before a credit line is maxed out",
        ),
    ),
    knobs=CARD_KNOBS,
)

# -- network -----------------------------------------------------------------------------
# Latents: z0 flow size, z1 interactivity, z2 fan-out, z3 connection health.
NETWORK_KNOBS = RowKnobs()
NETWORK = RowDomainSpec(
    structured=(
        "log_duration_s",
        "log_bytes_out",
        "log_bytes_in",
        "log_packets_out",
        "log_packets_in",
        "log_bytes_per_packet",
        "syn_ratio_logit",
        "rst_ratio_logit",
        "log_distinct_ports",
        "log_distinct_hosts",
        "payload_entropy",
        "log_iat_mean_ms",
        "log_iat_std_ms",
    ),
    units=(
        (1.0, 1.5),
        (7.5, 2.0),
        (8.5, 2.2),
        (3.0, 1.3),
        (3.2, 1.4),
        (6.0, 0.7),
        (-3.0, 0.8),
        (-4.0, 0.9),
        (0.7, 0.6),
        (0.5, 0.5),
        (5.5, 1.0),
        (3.0, 1.2),
        (2.5, 1.3),
    ),
    loadings=(
        (0.6, -0.5, 0.0, 0.0),
        (0.9, 0.2, 0.0, 0.0),
        (0.8, 0.4, 0.0, 0.0),
        (0.8, 0.0, 0.0, 0.3),
        (0.7, 0.3, 0.0, 0.3),
        (0.4, 0.6, 0.0, 0.0),
        (0.0, 0.0, 0.3, -0.8),
        (0.0, 0.0, 0.4, -0.7),
        (0.0, 0.0, 0.9, 0.0),
        (0.2, 0.0, 0.8, 0.0),
        (0.3, 0.7, 0.0, 0.0),
        (0.3, -0.8, 0.0, 0.0),
        (0.3, -0.6, 0.0, 0.4),
    ),
    segment_probs=(0.3, 0.25, 0.2, 0.15, 0.1),
    nuisance=(
        NuisanceSpec("hour", (10.0, 14.0, 16.5, 21.0, 3.0), 3.0, kind="hour"),
        NuisanceSpec("log_src_uptime_h", (1.0, 3.5, 5.5, 7.0, 9.0), 0.7),
        NuisanceSpec("ttl_initial", (32.0, 64.0, 64.0, 128.0, 255.0), 4.0),
        NuisanceSpec("log_tcp_window", (8.0, 9.5, 10.5, 11.5, 13.0), 0.4),
        NuisanceSpec("link_utilisation", (0.1, 0.3, 0.5, 0.7, 0.9), 0.08, kind="unit"),
        NuisanceSpec("vlan_hosts_active", (2.0, 3.0, 4.0, 5.0, 6.0), 0.4, kind="exp"),
    ),
    categorical=(
        CategoricalSpec(
            "protocol",
            ("tcp", "udp", "icmp"),
            (
                (0.80, 0.18, 0.02),
                (0.70, 0.27, 0.03),
                (0.85, 0.13, 0.02),
                (0.60, 0.35, 0.05),
                (0.75, 0.20, 0.05),
            ),
        ),
        CategoricalSpec(
            "service",
            ("http", "https", "dns", "ssh", "smtp", "ftp", "rdp", "other"),
            (
                (0.15, 0.45, 0.15, 0.05, 0.05, 0.02, 0.03, 0.10),
                (0.10, 0.50, 0.20, 0.03, 0.03, 0.02, 0.02, 0.10),
                (0.20, 0.35, 0.10, 0.10, 0.08, 0.04, 0.05, 0.08),
                (0.05, 0.40, 0.25, 0.05, 0.05, 0.02, 0.08, 0.10),
                (0.10, 0.30, 0.20, 0.10, 0.10, 0.05, 0.05, 0.10),
            ),
        ),
    ),
    anomalies=(
        AnomalySpec(
            "port_scan",
            "shift",
            (
                "log_distinct_ports",
                "rst_ratio_logit",
                "log_bytes_per_packet",
                "log_duration_s",
                "syn_ratio_logit",
                "log_bytes_in",
            ),
            1.4,
            pattern=(1.0, 0.8, -0.8, -0.5, 0.5, -0.5),
            doc="many ports probed with tiny, reset, short-lived flows",
        ),
        AnomalySpec(
            "syn_flood",
            "variance",
            (
                "syn_ratio_logit",
                "rst_ratio_logit",
                "log_packets_out",
                "log_iat_mean_ms",
                "log_iat_std_ms",
                "log_bytes_per_packet",
            ),
            4.0,
            categorical=("protocol", "tcp", 0.5),
            doc="half-open handshakes in floods of very variable intensity",
        ),
        AnomalySpec(
            "brute_force",
            "cluster",
            (
                "log_duration_s",
                "log_bytes_out",
                "log_packets_out",
                "rst_ratio_logit",
                "log_bytes_in",
                "log_iat_mean_ms",
            ),
            0.75,
            pattern=(-0.6, -0.6, 0.5, 0.7, -0.4, -0.5),
            categorical=("service", "ssh", 0.4),
            doc="repeated near-identical short login attempts",
        ),
        AnomalySpec(
            "exfiltration",
            "corr_break",
            (
                "log_bytes_out",
                "log_packets_out",
                "log_bytes_per_packet",
                "payload_entropy",
                "log_duration_s",
            ),
            1.8,
            doc="outbound volume and content no longer match the rest of the flow",
        ),
        AnomalySpec(
            "c2_beaconing",
            "cluster",
            (
                "log_iat_std_ms",
                "log_iat_mean_ms",
                "log_bytes_in",
                "payload_entropy",
                "log_bytes_out",
            ),
            0.75,
            pattern=(-0.9, 0.5, -0.5, 0.6, -0.4),
            doc="regular check-ins: steady inter-arrival, small encrypted replies",
        ),
        AnomalySpec(
            "dns_tunnelling",
            "sign_flip",
            (
                "payload_entropy",
                "log_bytes_per_packet",
                "log_packets_in",
                "log_bytes_out",
                "log_iat_mean_ms",
            ),
            3.8,
            pattern=(1.0, 0.8, -0.7, 0.5, -0.5),
            categorical=("service", "dns", 0.4),
            doc="data in DNS queries: entropy and packet size off (upload or download tunnel)",
        ),
        AnomalySpec(
            "slowloris",
            "shift",
            (
                "log_duration_s",
                "log_iat_mean_ms",
                "log_bytes_in",
                "log_packets_out",
                "log_iat_std_ms",
            ),
            1.5,
            pattern=(1.0, 0.8, -0.8, -0.4, 0.5),
            categorical=("service", "http", 0.4),
            doc="connections held open with a trickle of bytes",
        ),
        AnomalySpec(
            "lateral_movement",
            "random_sign",
            (
                "log_distinct_hosts",
                "log_distinct_ports",
                "log_duration_s",
                "syn_ratio_logit",
                "log_bytes_in",
                "log_packets_in",
            ),
            3.2,
            doc="unusual host and port fan-out inside the network",
        ),
    ),
    knobs=NETWORK_KNOBS,
)

ROW_SPECS: dict[str, RowDomainSpec] = {"card": CARD, "network": NETWORK}


# -- sensor ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SensorKnobs:
    """Difficulty knobs of the sensor plant (sizes in units of a structured sensor's std).

    Attributes:
        series_len: range of series lengths (steps).
        residual_noise: per-sensor noise around the shared latent processes.
        ar_slow, ar_fast: AR(1) coefficients of the two stochastic latent processes.
        period: range of the period of the third, sinusoidal, latent (per series).
        mode_latent_shift: how far operating modes move the slow latent (on-subspace).
        nuisance_scale: multiplies every nuisance sensor's excursions.
        segment_len: range of faulty segment lengths; >= 30 so 16-32 step windows fit inside.
        warmup: steps at the start of a series that never hold a fault (a pre-fault segment).
        gap: minimum steps between two faulty segments of one series.
        size_scale: multiplies every fault size.
    """

    series_len: tuple[int, int] = (400, 1000)
    residual_noise: float = 0.3
    ar_slow: float = 0.95
    ar_fast: float = 0.85
    period: tuple[float, float] = (60.0, 240.0)
    mode_latent_shift: float = 0.8
    nuisance_scale: float = 1.0
    segment_len: tuple[int, int] = (40, 120)
    warmup: int = 32
    gap: int = 16
    size_scale: float = 1.2


@dataclass(frozen=True)
class SensorFaultSpec:
    """A fault type. ``sensors`` are structured sensor numbers (0-7); empty means
    ``n_random`` distinct sensors chosen at random per faulty segment, so the type is defined
    by its temporal shape only (a linear model on raw windows cannot learn "which sensor")."""

    name: str
    kind: str
    sensors: tuple[int, ...]
    size: float
    doc: str = ""
    n_random: int = 1
    #: step, drift, spikes: a random sign per segment (symmetric) instead of always upward.
    symmetric: bool = False


SENSOR_KNOBS = SensorKnobs()
N_SENSOR_STRUCTURED = 8
N_SENSOR_NUISANCE = 4
SENSOR_COLUMNS = tuple(f"s{i:02d}" for i in range(N_SENSOR_STRUCTURED + N_SENSOR_NUISANCE))
#: Loadings of the 8 structured sensors on (slow AR, fast AR, sinusoidal) latents.
SENSOR_LOADINGS: tuple[tuple[float, float, float], ...] = (
    (0.9, 0.3, 0.0),
    (0.8, 0.0, 0.5),
    (0.2, 0.9, 0.0),
    (0.0, 0.8, 0.5),
    (0.6, -0.6, 0.0),
    (0.0, 0.3, 0.9),
    (0.7, 0.0, -0.6),
    (-0.5, 0.5, 0.5),
)
SENSOR_UNITS: tuple[tuple[float, float], ...] = (
    (80.0, 5.0),
    (2.5, 0.4),
    (350.0, 20.0),
    (12.0, 1.5),
    (0.9, 0.05),
    (55.0, 8.0),
    (140.0, 10.0),
    (6.5, 0.8),
    (20.0, 4.0),
    (60.0, 10.0),
    (1.0, 0.3),
    (30.0, 5.0),
)
SENSOR_MODE_PROBS = (0.4, 0.3, 0.2, 0.1)
SENSOR_FAULTS: tuple[SensorFaultSpec, ...] = (
    SensorFaultSpec("step", "step", (1, 4, 6), 1.0, "a level jump in three sensors"),
    SensorFaultSpec("drift", "drift", (3, 5), 2.5, "two sensors ramp away from the others"),
    SensorFaultSpec(
        "oscillation", "oscillation", (2, 6, 7), 2.2, "a fast added oscillation (random phase)"
    ),
    SensorFaultSpec("stuck_sensor", "stuck", (), 0.0, "one sensor freezes at its last value"),
    SensorFaultSpec("spike_train", "spikes", (0, 2), 5.0, "regular short spikes in two sensors"),
    SensorFaultSpec(
        "correlation_break",
        "corr_break",
        (),
        1.0,
        "two sensors follow independent drivers (size scales them; 1 keeps the marginals)",
        n_random=2,
    ),
    SensorFaultSpec("noise_burst", "noise", (0, 3, 5, 7), 2.0, "extra noise in four sensors"),
    SensorFaultSpec(
        "valve_lag", "lag", (), 12.0, "two sensors lag their drivers (size = steps)", n_random=2
    ),
)


# --------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------
def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ConfigError(f"unknown synthetic domain {domain!r}; valid domains: {list(DOMAINS)}")


def categorical_columns(domain: str) -> list[str]:
    """Declared categorical (string) columns of a domain's table."""
    _check_domain(domain)
    if domain == "sensor":
        return []
    return [c.name for c in ROW_SPECS[domain].categorical]


def is_time_series(domain: str) -> bool:
    """Whether rows are time steps of series (``series_id``, ``timestamp``) to be windowed."""
    _check_domain(domain)
    return domain == "sensor"


def anomaly_type_names(domain: str) -> list[str]:
    """Anomaly types the domain generates, in spec order."""
    _check_domain(domain)
    if domain == "sensor":
        return [f.name for f in SENSOR_FAULTS]
    return [a.name for a in ROW_SPECS[domain].anomalies]


def numeric_columns(domain: str) -> list[str]:
    """Numeric feature columns in table order."""
    _check_domain(domain)
    if domain == "sensor":
        return list(SENSOR_COLUMNS)
    spec = ROW_SPECS[domain]
    return [*spec.structured, *spec.nuisance_columns]


def nuisance_columns(domain: str) -> list[str]:
    """Numeric columns that vary among normals but that no anomaly type ever changes.

    Published so the benchmark's structure is checkable (and for the oracle in the bench);
    a detector under evaluation must not be given this list.
    """
    _check_domain(domain)
    if domain == "sensor":
        return list(SENSOR_COLUMNS[N_SENSOR_STRUCTURED:])
    return list(ROW_SPECS[domain].nuisance_columns)


def describe_types(domain: str) -> pd.DataFrame:
    """One row per anomaly type: its kind, the features it changes and what it stands for.

    For documentation and reports, so the benchmark's structure is stated, not hidden.
    """
    _check_domain(domain)
    if domain == "sensor":
        rows = [
            {
                "type": f.name,
                "kind": f.kind,
                "features": ", ".join(SENSOR_COLUMNS[j] for j in f.sensors)
                or f"{f.n_random} random sensor(s) of s00-s07 per segment",
                "size": f.size * SENSOR_KNOBS.size_scale,
                "what": f.doc,
            }
            for f in SENSOR_FAULTS
        ]
    else:
        spec = ROW_SPECS[domain]
        rows = [
            {
                "type": a.name,
                "kind": a.kind,
                "features": ", ".join(a.features),
                "size": a.size * spec.knobs.size_scale,
                "what": a.doc,
            }
            for a in spec.anomalies
        ]
    return pd.DataFrame(rows)


def _validate(domain: str, n_rows: int, seed: int, anomaly_rate: float) -> None:
    _check_domain(domain)
    if isinstance(n_rows, bool) or not isinstance(n_rows, int | np.integer):
        raise ConfigError(f"n_rows must be an integer >= {MIN_ROWS}, got {n_rows!r}")
    if n_rows < MIN_ROWS:
        raise ConfigError(
            f"n_rows must be >= {MIN_ROWS} so every anomaly type gets rows, got {n_rows}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    lo, hi = RATE_RANGE
    if not isinstance(anomaly_rate, int | float | np.floating) or not lo < anomaly_rate < hi:
        raise ConfigError(
            f"anomaly_rate must be a number strictly between {lo} and {hi}, got {anomaly_rate!r}"
        )


# --------------------------------------------------------------------------------------
# Shared sampling helpers
# --------------------------------------------------------------------------------------
def _streams(
    seed: int, domain: str, block: int
) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Three independent generators for one block, all derived from (seed, domain, block).

    ``main`` draws the normal structured data, ``context`` the segments/modes, series
    lengths and nuisance features, ``anomaly`` which rows are anomalous and how. Keeping
    them apart means the nuisance columns do not depend on the anomaly rate at all, and a
    row that is normal under two anomaly rates has the same values under both: a clean,
    testable statement that anomalies never touch the nuisance features.
    """
    main = np.random.default_rng([seed, _DOMAIN_ID[domain], block])
    context = np.random.default_rng([seed, _DOMAIN_ID[domain], block, 1])
    anomaly = np.random.default_rng([seed, _DOMAIN_ID[domain], block, 2])
    return main, context, anomaly


def _type_budgets(total: int, n_types: int, block: int) -> np.ndarray:
    """Split ``total`` anomaly rows over types as evenly as possible; the remainder goes to
    types chosen by block number so that, over many blocks, no type is favoured."""
    base = np.full(n_types, total // n_types, dtype=np.int64)
    rem = total - base.sum()
    for i in range(rem):
        base[(block + i) % n_types] += 1
    return base


def _normalised_loadings(loadings: tuple[tuple[float, ...], ...], noise: float) -> np.ndarray:
    """Rows scaled so each structured feature has unit variance (latent part + noise)."""
    w = np.asarray(loadings, dtype=np.float64)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    return w * np.sqrt(max(1.0 - noise**2, 1e-6))


def _segment_offsets(domain: str, n_seg: int, k: int, scale: float) -> np.ndarray:
    """Fixed latent offsets per segment (same for every seed: they are part of the world)."""
    rng = np.random.default_rng([_DOMAIN_ID[domain], 7919])
    return rng.standard_normal((n_seg, k)) * scale


def _draw_categories(rng: np.random.Generator, probs: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Vectorised draw of one category code per row from segment-dependent probabilities."""
    p = probs / probs.sum(axis=1, keepdims=True)
    cdf = np.cumsum(p, axis=1)[seg]
    u = rng.random(len(seg))
    return np.minimum((u[:, None] > cdf).sum(axis=1), probs.shape[1] - 1)


# --------------------------------------------------------------------------------------
# Row domains
# --------------------------------------------------------------------------------------
def _row_block(domain: str, seed: int, block: int, n: int, rate: float) -> pd.DataFrame:
    spec = ROW_SPECS[domain]
    kn = spec.knobs
    rng, ctx, arng = _streams(seed, domain, block)
    k = spec.n_latent
    d = len(spec.structured)
    col = {name: j for j, name in enumerate(spec.structured)}
    w = _normalised_loadings(spec.loadings, kn.residual_noise)
    seg_p = np.asarray(spec.segment_probs)
    n_seg = len(seg_p)
    offsets = _segment_offsets(domain, n_seg, k, kn.segment_latent_shift)

    seg = _draw_categories(ctx, np.broadcast_to(seg_p, (1, n_seg)), np.zeros(n, np.int64))
    nuisance = _nuisance(ctx, spec, seg)
    z = rng.standard_normal((n, k)) + offsets[seg]
    s = z @ w.T + kn.residual_noise * rng.standard_normal((n, d))

    # anomaly rows and their types
    n_anom = round(rate * n)
    budgets = _type_budgets(n_anom, len(spec.anomalies), block)
    rows = arng.permutation(n)[:n_anom]
    type_of_row = np.full(n, -1, dtype=np.int64)
    start = 0
    for t, b in enumerate(budgets):
        type_of_row[rows[start : start + b]] = t
        start += b

    cat_codes = {
        c.name: _draw_categories(rng, np.asarray(c.seg_probs), seg) for c in spec.categorical
    }

    for t, a in enumerate(spec.anomalies):
        idx = np.sort(rows[np.flatnonzero(type_of_row[rows] == t)])
        if len(idx) == 0:
            continue
        cols = np.asarray([col[f] for f in a.features])
        size = a.size * kn.size_scale
        m = len(idx)
        mag = np.exp(kn.jitter * arng.standard_normal((m, 1)))
        if a.kind == "shift":
            s[np.ix_(idx, cols)] += size * mag * np.asarray(a.pattern)
        elif a.kind == "sign_flip":
            sign = arng.choice(np.array([-1.0, 1.0]), size=(m, 1))
            s[np.ix_(idx, cols)] += size * mag * sign * np.asarray(a.pattern)
        elif a.kind == "random_sign":
            sign = arng.choice(np.array([-1.0, 1.0]), size=(m, len(cols)))
            s[np.ix_(idx, cols)] += size * mag * sign
        elif a.kind == "corr_break":
            seg2 = _draw_categories(arng, np.broadcast_to(seg_p, (1, n_seg)), np.zeros(m, np.int64))
            z2 = arng.standard_normal((m, k)) + offsets[seg2]
            fresh = z2 @ w[cols].T * size
            s[np.ix_(idx, cols)] = fresh + kn.residual_noise * arng.standard_normal((m, len(cols)))
        elif a.kind == "variance":
            s[np.ix_(idx, cols)] += size * arng.standard_normal((m, len(cols)))
        elif a.kind == "cluster":
            pat = np.asarray(a.pattern)
            centre = size * pat / np.linalg.norm(pat) * np.sqrt(len(pat))
            s[np.ix_(idx, cols)] = centre + a.spread * arng.standard_normal((m, len(cols)))
        else:  # pragma: no cover - specs are module constants
            raise ConfigError(f"anomaly kind {a.kind!r} of {a.name!r} is not one of {ROW_KINDS}")
        if a.categorical is not None:
            cname, value, prob = a.categorical
            cspec = next(c for c in spec.categorical if c.name == cname)
            force = arng.random(m) < prob
            cat_codes[cname][idx[force]] = cspec.values.index(value)

    units = np.asarray(spec.units)
    data: dict[str, np.ndarray] = {}
    x = units[:, 0] + units[:, 1] * s
    for j, name in enumerate(spec.structured):
        data[name] = x[:, j].astype(np.float32)
    data.update(nuisance)
    out = pd.DataFrame(data)
    for c in spec.categorical:
        out[c.name] = pd.Series(np.asarray(c.values, dtype=object)[cat_codes[c.name]], dtype="str")
    label = (type_of_row >= 0).astype(np.int64)
    names = np.asarray([NORMAL, *[a.name for a in spec.anomalies]], dtype=object)
    out[LABEL] = label
    out[TYPE] = pd.Series(names[type_of_row + 1], dtype="str")
    return out


def _nuisance(
    rng: np.random.Generator, spec: RowDomainSpec, seg: np.ndarray
) -> dict[str, np.ndarray]:
    """Nuisance columns: segment level plus Student-t noise (heavy tails by design)."""
    kn = spec.knobs
    n = len(seg)
    out: dict[str, np.ndarray] = {}
    for nu in spec.nuisance:
        level = np.asarray(nu.seg_means)[seg]
        noise = rng.standard_t(kn.nuisance_tail_df, size=n) * nu.tail_scale * kn.nuisance_tail_scale
        if nu.kind == "hour":
            hour = np.mod(level + noise, 24.0)
            ang = 2.0 * np.pi * hour / 24.0
            out[f"{nu.name}_sin"] = np.sin(ang).astype(np.float32)
            out[f"{nu.name}_cos"] = np.cos(ang).astype(np.float32)
            continue
        v = level + noise
        if nu.kind == "exp":
            v = np.exp(np.clip(v, -10.0, 12.0))
        elif nu.kind == "positive_int":
            v = np.maximum(np.round(v), 1.0)
        elif nu.kind == "unit":
            v = np.clip(v, 0.0, 1.0)
        out[nu.name] = v.astype(np.float32)
    return out


# --------------------------------------------------------------------------------------
# Sensor domain
# --------------------------------------------------------------------------------------
def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Stationary unit-variance AR(1) path (started from its stationary distribution)."""
    e = rng.standard_normal(n) * np.sqrt(1.0 - phi**2)
    x0 = rng.standard_normal()
    y, _ = lfilter([1.0], [1.0, -phi], e, zi=[phi * x0])
    return y


def _series_lengths(rng: np.random.Generator, n: int, kn: SensorKnobs) -> list[int]:
    lo, hi = kn.series_len
    lengths: list[int] = []
    total = 0
    while total < n:
        ln = int(rng.integers(lo, hi + 1))
        ln = min(ln, n - total)
        lengths.append(ln)
        total += ln
    if len(lengths) > 1 and lengths[-1] < lo // 2:
        last = lengths.pop()
        lengths[-1] += last
    return lengths


def _segments(rng: np.random.Generator, budget: int, kn: SensorKnobs) -> list[int]:
    """Segment lengths in ``segment_len`` summing exactly to ``budget``."""
    lo, hi = kn.segment_len
    out: list[int] = []
    total = 0
    while total < budget:
        ln = min(int(rng.integers(lo, hi + 1)), budget - total)
        out.append(ln)
        total += ln
    if len(out) > 1 and out[-1] < lo:
        last = out.pop()
        out[-1] += last
    return out


def _place(
    rng: np.random.Generator, lengths: list[int], segs: list[tuple[int, int]], kn: SensorKnobs
) -> dict[int, list[tuple[int, int, int]]]:
    """Assign (type, length) segments to series, weighted by free room; returns per series
    a list of (start, end, type). Segments never overlap and never enter the warm-up."""
    free = np.asarray([max(ln - kn.warmup, 0) for ln in lengths], dtype=np.int64)
    assigned: dict[int, list[tuple[int, int]]] = {}
    order = rng.permutation(len(segs))
    for i in order:
        t, ln = segs[i]
        need = ln + kn.gap
        ok = free >= need
        if not ok.any():  # pathological (tiny blocks): shrink into the roomiest series
            j = int(np.argmax(free))
            ln = int(max(free[j] - kn.gap, 0))
            if ln == 0:
                log.debug("no room left for a faulty segment of type %d; dropped", t)
                continue
            need = ln + kn.gap
        else:
            p = np.where(ok, free, 0).astype(np.float64)
            j = int(rng.choice(len(free), p=p / p.sum()))
        free[j] -= need
        assigned.setdefault(j, []).append((t, ln))
    out: dict[int, list[tuple[int, int, int]]] = {}
    for j, items in assigned.items():
        room = lengths[j] - kn.warmup - sum(ln for _, ln in items) - kn.gap * len(items)
        cuts = np.sort(rng.integers(0, room + 1, size=len(items)))
        gaps = np.diff(np.r_[0, cuts])
        pos = kn.warmup
        placed = []
        for (t, ln), g in zip(items, gaps, strict=True):
            pos += int(g)
            placed.append((pos, pos + ln, t))
            pos += ln + kn.gap
        out[j] = placed
    return out


def _apply_fault(
    rng: np.random.Generator,
    f: SensorFaultSpec,
    s: np.ndarray,
    lat: np.ndarray,
    w: np.ndarray,
    a: int,
    b: int,
    kn: SensorKnobs,
) -> None:
    """Write one fault into the structured sensors ``s`` (steps ``a:b``), in place."""
    ln = b - a
    size = f.size * kn.size_scale
    sensors = list(f.sensors) or rng.choice(N_SENSOR_STRUCTURED, f.n_random, replace=False).tolist()
    t = np.arange(ln, dtype=np.float64)
    if f.symmetric and rng.random() < 0.5:
        size = -size
    for j in sensors:
        if f.kind == "step":
            s[a:b, j] += size
        elif f.kind == "drift":
            s[a:b, j] += size * (0.3 + 0.7 * t / max(ln - 1, 1))
        elif f.kind == "oscillation":
            period = rng.uniform(5.0, 9.0)
            s[a:b, j] += size * np.sqrt(2.0) * np.sin(2 * np.pi * t / period + rng.uniform(0, 6.3))
        elif f.kind == "stuck":
            s[a:b, j] = s[a - 1, j]
        elif f.kind == "spikes":
            every = int(rng.integers(4, 8))
            phase = int(rng.integers(0, every))
            s[a + phase : b : every, j] += size
        elif f.kind == "corr_break":
            wave = np.sin(2 * np.pi * t / rng.uniform(*kn.period) + rng.uniform(0, 6.3))
            fresh = np.stack(
                [_ar1(rng, ln, kn.ar_slow), _ar1(rng, ln, kn.ar_fast), np.sqrt(2.0) * wave], axis=1
            )
            s[a:b, j] = size * (fresh @ w[j]) + kn.residual_noise * rng.standard_normal(ln)
        elif f.kind == "noise":
            s[a:b, j] += size * rng.standard_normal(ln)
        elif f.kind == "lag":
            lag = min(int(abs(size)), a)  # the warm-up guarantees a >= lag at default knobs
            s[a:b, j] = lat[a - lag : b - lag] @ w[j] + kn.residual_noise * rng.standard_normal(ln)
        else:  # pragma: no cover - specs are module constants
            raise ConfigError(f"sensor fault kind {f.kind!r} of {f.name!r} is unknown")


def _sensor_block(seed: int, block: int, n: int, rate: float) -> pd.DataFrame:
    kn = SENSOR_KNOBS
    rng, ctx, arng = _streams(seed, "sensor", block)
    w = _normalised_loadings(SENSOR_LOADINGS, kn.residual_noise)
    lengths = _series_lengths(ctx, n, kn)
    mode_p = np.asarray(SENSOR_MODE_PROBS)
    modes = ctx.choice(len(mode_p), size=len(lengths), p=mode_p)
    n_types = len(SENSOR_FAULTS)
    budgets = _type_budgets(round(rate * n), n_types, block)
    segs = [(t, ln) for t in range(n_types) for ln in _segments(arng, int(budgets[t]), kn)]
    placement = _place(arng, lengths, segs, kn)
    mode_levels = _segment_offsets("sensor", len(mode_p), 1 + N_SENSOR_NUISANCE, 1.0)

    values = np.empty((n, len(SENSOR_COLUMNS)), dtype=np.float64)
    type_idx = np.full(n, -1, dtype=np.int64)
    sid = np.empty(n, dtype=np.int64)
    ts = np.empty(n, dtype=np.int64)
    pos = 0
    for i, ln in enumerate(lengths):
        mode = int(modes[i])
        lat = np.stack(
            [
                _ar1(rng, ln, kn.ar_slow) + kn.mode_latent_shift * mode_levels[mode, 0],
                _ar1(rng, ln, kn.ar_fast),
                np.sqrt(2.0)
                * np.sin(2 * np.pi * np.arange(ln) / rng.uniform(*kn.period) + rng.uniform(0, 6.3)),
            ],
            axis=1,
        )
        s = lat @ w.T + kn.residual_noise * rng.standard_normal((ln, N_SENSOR_STRUCTURED))
        for a, b, t in placement.get(i, []):
            _apply_fault(arng, SENSOR_FAULTS[t], s, lat, w, a, b, kn)
            type_idx[pos + a : pos + b] = t
        values[pos : pos + ln, :N_SENSOR_STRUCTURED] = s
        values[pos : pos + ln, N_SENSOR_STRUCTURED:] = _sensor_nuisance(
            ctx, ln, mode_levels[mode, 1:], kn
        )
        sid[pos : pos + ln] = block * SERIES_ID_STRIDE + i
        ts[pos : pos + ln] = np.arange(ln)
        pos += ln

    units = np.asarray(SENSOR_UNITS)
    x = (units[:, 0] + units[:, 1] * values).astype(np.float32)
    out = pd.DataFrame({SERIES: sid, TIMESTAMP: ts})
    for j, name in enumerate(SENSOR_COLUMNS):
        out[name] = x[:, j]
    names = np.asarray([NORMAL, *[f.name for f in SENSOR_FAULTS]], dtype=object)
    out[LABEL] = (type_idx >= 0).astype(np.int64)
    out[TYPE] = pd.Series(names[type_idx + 1], dtype="str")
    return out


def _sensor_nuisance(
    rng: np.random.Generator, ln: int, levels: np.ndarray, kn: SensorKnobs
) -> np.ndarray:
    """Four nuisance sensors with large normal excursions that no fault touches: ambient
    (slow cycle), load (heavy-tailed steps that persist), transients (decaying kicks), and a
    heavy-tailed noisy meter. Each sits at an operating-mode level."""
    sc = kn.nuisance_scale
    t = np.arange(ln)
    out = np.empty((ln, N_SENSOR_NUISANCE))
    out[:, 0] = 2.0 * levels[0] + sc * (
        np.sin(2 * np.pi * t / rng.uniform(200, 900) + rng.uniform(0, 6.3))
        + 0.3 * rng.standard_t(3.0, size=ln)
    )
    jumps = (rng.random(ln) < 1 / 80) * rng.standard_t(2.0, size=ln) * 1.5
    out[:, 1] = (
        2.0 * levels[1]
        + sc * lfilter([1.0], [1.0, -0.995], jumps)
        + 0.1 * (rng.standard_normal(ln))
    )
    kicks = (rng.random(ln) < 1 / 60) * rng.exponential(3.0, size=ln) * rng.choice([-1, 1], ln)
    out[:, 2] = (
        2.0 * levels[2] + sc * lfilter([1.0], [1.0, -0.8], kicks) + 0.2 * (rng.standard_normal(ln))
    )
    out[:, 3] = 2.0 * levels[3] + sc * 0.6 * rng.standard_t(2.0, size=ln)
    return out


# --------------------------------------------------------------------------------------
# Public generation API
# --------------------------------------------------------------------------------------
def _block(domain: str, seed: int, block: int, n: int, rate: float) -> pd.DataFrame:
    if domain == "sensor":
        return _sensor_block(seed, block, n, rate)
    return _row_block(domain, seed, block, n, rate)


def iter_chunks(
    domain: str, n_rows: int, seed: int, anomaly_rate: float = 0.05
) -> Iterator[pd.DataFrame]:
    """Yield the table in blocks of :data:`BLOCK_ROWS` rows (the last one shorter).

    Arguments are checked now, not at the first ``next()``, so a bad call fails where it is
    made. Block ``b`` depends only on ``(seed, domain, b)`` and its own size, so the output
    is identical whatever the caller does with it, and any block can be regenerated alone.
    """
    _validate(domain, n_rows, seed, anomaly_rate)
    block_rows = int(BLOCK_ROWS)

    def gen() -> Iterator[pd.DataFrame]:
        for b, start in enumerate(range(0, n_rows, block_rows)):
            n = min(block_rows, n_rows - start)
            df = _block(domain, int(seed), b, n, float(anomaly_rate))
            df.index = pd.RangeIndex(start, start + n)
            yield df

    return gen()


def generate(domain: str, n_rows: int, seed: int, anomaly_rate: float = 0.05) -> pd.DataFrame:
    """The whole table in memory (for tests and small runs; use :func:`write` for big ones)."""
    chunks = list(iter_chunks(domain, n_rows, seed, anomaly_rate))
    return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]


def write(
    domain: str,
    n_rows: int,
    seed: int,
    path: str | Path,
    anomaly_rate: float = 0.05,
    progress: bool = False,
) -> Path:
    """Stream the table to one Parquet file, a row group per block, in bounded memory.

    The file is byte-identical for the same arguments (same library versions): the schema
    comes from the specs, not from the data, and no timestamp or index is written. The file
    is written next to its destination and renamed at the end, so a crash never leaves a
    truncated file that looks complete.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    chunks = iter_chunks(domain, n_rows, seed, anomaly_rate)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    writer: pq.ParquetWriter | None = None
    bar = tqdm(total=n_rows, unit="rows", desc=f"synthetic {domain}", disable=not progress)
    try:
        for df in chunks:
            table = pa.Table.from_pandas(df, preserve_index=False)
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            writer.write_table(table.cast(schema))
            bar.update(len(df))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    tmp.replace(path)
    log.info("wrote %d synthetic %s rows (seed %d) to %s", n_rows, domain, seed, path)
    return path


__all__ = [
    "BLOCK_ROWS",
    "DOMAINS",
    "MIN_ROWS",
    "anomaly_type_names",
    "categorical_columns",
    "describe_types",
    "generate",
    "is_time_series",
    "iter_chunks",
    "nuisance_columns",
    "numeric_columns",
    "write",
]
