"""One typed settings object for every path, window, threshold and hyper-parameter.

Sources, highest priority first: keyword arguments, environment variables ``AFTERSALES_*``
(nested with ``__``, e.g. ``AFTERSALES_LABELS__RETURN_WINDOW_DAYS=14``), the TOML file named by
``AFTERSALES_CONFIG`` or ``./aftersales.toml``, then the defaults below.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULTS_DIR = Path(__file__).parent / "defaults"


class PathSettings(BaseModel):
    """Where things live; relative paths are resolved against the working directory."""

    home: Path = Path(".aftersales")
    warehouse: Path | None = Field(None, description="DuckDB file; default <home>/warehouse.duckdb")
    data: Path | None = Field(None, description="generated shop data; default <home>/data")
    reports: Path | None = Field(None, description="validation reports, task lists; default <home>/reports")

    def resolved_warehouse(self) -> Path:
        return self.warehouse or self.home / "warehouse.duckdb"

    def resolved_data(self) -> Path:
        return self.data or self.home / "data"

    def resolved_reports(self) -> Path:
        return self.reports or self.home / "reports"


class WarehouseSettings(BaseModel):
    memory_limit: str | None = Field("4GB", description="DuckDB memory limit; beyond it DuckDB spills to disk")
    threads: int | None = Field(None, description="DuckDB threads; default: all cores")
    open_retries: int = Field(3, description="tries after the first to open a warehouse another program has locked")
    open_retry_seconds: float = Field(2.0, description="first wait between those tries; doubles each try")


class IngestSettings(BaseModel):
    chunk_rows: int = Field(500_000, description="rows validated at a time; bounds memory")
    max_future_skew_hours: float = Field(
        24.0, description="timestamps later than batch time + this are rejected as future"
    )
    report_examples: int = Field(20, description="failure examples shown per check in the report")
    max_line_quantity: int = Field(
        1_000_000, description="order lines with more units are quarantined (a wholesale line has thousands)")
    earliest_timestamp: str = Field(
        "1990-01-01", description="earlier timestamps are placeholders (0001-01-01, 1970-01-01), not facts")
    max_promise_days: int = Field(
        730, description="a timestamp allowed in the future (a delivery promise) may lie at most this many days "
                         "after the batch; later ones are placeholders (9999-12-31)")
    ambiguous_time: Literal["earliest", "latest"] = Field(
        "earliest", description="a local time that occurs twice when DST ends: its earlier or later instant "
                                "(a mapping's ambiguous_time overrides)")
    nonexistent_time: Literal["shift_forward", "shift_backward"] = Field(
        "shift_forward", description="a local time skipped when DST starts: the first instant after the gap or "
                                     "the last before it (a mapping's nonexistent_time overrides)")
    csv_block_bytes: int = Field(64 << 20, description="CSV read block; grown (x4 per retry) for larger fields")
    max_csv_block_bytes: int = Field(1 << 30, description="largest read block before the line-by-line reader")
    empty_column_min_expected: float = Field(
        5.0, description="warn when an optional column is absent or empty in a file although the stored table "
                         "would lead one to expect at least this many values in it")


class GeneratorSettings(BaseModel):
    customers: int = 5_000
    seed: int = 42
    months: int = 18
    end_date: str = Field("2026-11-01", description="last day of generated history (UTC)")
    dirty_share: float = Field(0.003, description="share of rows made invalid on purpose")
    file_format: Literal["csv", "parquet"] = "parquet"


class LabelSettings(BaseModel):
    return_window_days: int = 30
    review_window_days: int = 30
    negative_review_max_score: int = 2
    churn_activity_days: int = 180
    churn_horizon_days: int = 90
    moment_window_days: float = Field(
        1.0, description="an order is at a moment (shipped, delivered, overdue, ordered) when that happened this "
        "many days before the cutoff: the time between two scoring runs, so each order is scored once per moment")
    overdue_repeat_days: int = Field(
        7, description="an order still overdue is scored again every this many days, while it is overdue by at "
        "most review_window_days (0: only when it becomes overdue)")
    return_moments: list[Literal["shipped", "delivered", "overdue", "ordered"]] = Field(
        ["delivered", "ordered"], description="moments the return model scores an order at; 'ordered' only occurs "
        "in a shop without shipment or delivery dates (invoice lines), where the label is a return or cancellation "
        "within return_window_days of the order")
    review_moments: list[Literal["shipped", "delivered", "overdue", "ordered"]] = Field(
        ["shipped", "delivered", "overdue", "ordered"],
        description="moments the negative-review model scores an order at (overdue rows are the late-delivery watch)")


class SplitSettings(BaseModel):
    """How training rows are laid out in time: cutoffs, rolling origins with purged gaps, the refit.

    Every training row is (entity, cutoff c) with features as of c and a label decided by
    c + horizon. Training "as of D" uses only rows with c + horizon <= D. Steps, minimum history
    and origin spacing left empty (None) are derived from the data's span and the label horizon.
    """

    as_of: str | None = Field(
        None, description="train as of this date (ISO): no label closing after it is used; default: the latest data")
    backtest_origins: int = Field(
        4, description="rolling origins: the older ones choose hyper-parameters, the newest is the honest test")
    origin_spacing_days: int | None = Field(
        None, description="days between origins; default max(evaluation window, 2 cutoff steps, 7)")
    customer_step_days: int | None = Field(
        None, description="days between customer-model cutoffs; default 7 on up to two years of data, else 14")
    order_step_days: int = Field(1, description="days between order-model cutoffs (daily: every moment is seen)")
    max_cutoffs: int = Field(
        150, description="most cutoffs per training frame; beyond it customer models widen their step, order "
        "models keep the newest cutoffs at their own step (a scoring day's moments); said in the run")
    min_history_days: int | None = Field(
        None, description="first cutoff this long after the first order; default span/12, at least a step, "
        "at most 30")
    order_eval_window_days: int = Field(
        14, description="order models: each origin evaluates the pooled cutoffs of this many days ending at it")
    max_training_rows: int = Field(
        1_000_000, description="more rows: a stable sample of entities is kept (said in the run)")
    frame_threads: int | None = Field(
        None, ge=1, description="batches of cutoffs (split.feature_batch_rows) whose labels and features are "
        "built side by side, each on its own DuckDB cursor; default: the machine's cores")
    feature_batch_rows: int = Field(
        5_000_000, ge=1, description="cutoffs whose labels or features one query builds (a LATERAL join "
        "DuckDB plans once): as many as keep cutoffs x the largest source table's rows under this, one at least")


class XGBSettings(BaseModel):
    """Booster settings shared by every grid point (the grid sets depth, learning rate, leaf size)."""

    max_depth: int = Field(4, description="used when a booster is fitted outside the grid (train_model)")
    learning_rate: float = Field(0.08, description="used when a booster is fitted outside the grid")
    n_estimators: int = Field(400, description="most rounds when a booster is fitted outside the grid")
    early_stopping_rounds: int = Field(
        50, description="rounds without improvement of the folds' mean curve before a configuration stops")
    min_child_weight: float = Field(20.0, description="used when a booster is fitted outside the grid")
    subsample: float = 0.85
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    nthread: int = 2
    max_bin: int = 256


class BoosterConfig(BaseModel):
    """One point of the hyper-parameter grid; the number of rounds is chosen on the folds' curves.

    ``gblinear`` is XGBoost's linear booster on log-scaled, standardised features: on exports whose
    signal is additive and smooth in log terms (recency, frequency, spend) it ranks like a logistic
    regression, where trees lose about .01 ROC-AUC (docs/real-exports-findings.md).
    """

    booster: Literal["gbtree", "gblinear"] = "gbtree"
    max_depth: int = Field(0, description="trees: 1-2 behave like an additive model, 4-6 learn interactions")
    learning_rate: float
    min_leaf_share: float = Field(
        0.0, description="trees: min_child_weight as this share of the training rows' total hessian (scales "
        "with the data)")
    l2: float = Field(0.0, description="gblinear: ridge penalty on the coefficients, per unit of row weight")

    @model_validator(mode="after")
    def _tree_needs_depth(self) -> BoosterConfig:
        if self.booster == "gbtree" and self.max_depth < 1:
            raise ValueError("a gbtree grid point needs max_depth >= 1")
        return self

    def describe(self) -> str:
        if self.booster == "gblinear":
            return f"linear (gblinear), learning rate {self.learning_rate:g}, l2 {self.l2:g}"
        return f"depth {self.max_depth}, learning rate {self.learning_rate:g}, leaf share {self.min_leaf_share:g}"

    def short(self) -> str:
        return (f"linear/lr{self.learning_rate:g}/l2{self.l2:g}" if self.booster == "gblinear" else
                f"d{self.max_depth}/lr{self.learning_rate:g}/leaf{self.min_leaf_share:g}")


class TrainingSettings(BaseModel):
    seed: int = 7
    models: list[str] = ["return", "negative_review", "churn"]
    xgb: XGBSettings = XGBSettings()
    grid: list[BoosterConfig] = Field(
        [BoosterConfig(booster="gblinear", learning_rate=0.5, l2=0.03),
         BoosterConfig(booster="gblinear", learning_rate=0.5, l2=0.003),
         BoosterConfig(max_depth=1, learning_rate=0.1, min_leaf_share=0.005),
         BoosterConfig(max_depth=2, learning_rate=0.05, min_leaf_share=0.005),
         BoosterConfig(max_depth=4, learning_rate=0.05, min_leaf_share=0.01),
         BoosterConfig(max_depth=6, learning_rate=0.05, min_leaf_share=0.02)],
        description="booster configurations compared on the older rolling origins (rounds chosen on their curves)")
    max_rounds: int = Field(800, description="most boosting rounds a configuration may use")
    linear_tolerance: float = Field(
        1e-4, description="gblinear: converged when no fold's training log loss falls by more than this in a "
        "round (its l2 regularises, not its rounds)")
    linear_min_level_share: float = Field(
        0.01, description="gblinear: a category level needs this share of the training rows for its own "
        "column; rarer levels share one (a 292-level region column overfitted without it)")
    selection_metric: Literal["roc_auc", "pr_auc", "log_loss"] = Field(
        "roc_auc", description="what the older origins' mean evaluation curve maximises (log loss: minimises)")
    calibration: Literal["auto", "isotonic", "sigmoid"] = Field(
        "auto", description="auto: isotonic with isotonic_min_positives positives out of time, else Platt (sigmoid)")
    isotonic_min_positives: int = Field(
        500, description="positives in the calibration rows needed before an isotonic map is trusted")
    recentre_calibration: bool = Field(
        True, description="re-anchor the registered model's calibration map on its newest matured window (the map "
        "is learnt on fold models trained on fewer, older rows; on a real grocer it doubled the refit's mean)")
    calibration_decay: float = Field(
        0.5, description="weight of each older origin's predictions in the registered model's calibrator, per "
        "origin back (1: all equal)")
    class_weighting: Literal["balanced", "sqrt", "none"] = Field(
        "none", description="scale_pos_weight: negatives/positives, its square root, or 1 (calibration undoes it)"
    )
    min_positives: int = Field(
        30, description="fewer positive labels in the training rows, the calibration rows or the test window: "
        "the model is not registered")
    bootstrap_resamples: int = Field(1000, description="resamples of the bootstrap intervals of every test metric")
    confidence: float = Field(0.95, description="level of the bootstrap intervals")
    logistic_max_rows: int = Field(
        300_000, description="the logistic-regression baseline is fitted on a seeded sample this large (said in "
        "the run)")
    top_k: int = Field(200, description="cases a care team can contact per day; precision/lift@k")
    shap_sample_rows: int = 2_000
    promotion_metric: Literal["pr_auc", "roc_auc", "brier"] = "pr_auc"
    promotion_margin: float = Field(
        0.005, description="the lower end of the interval of challenger - champion must clear this")
    promotion_windows: int = Field(
        3, description="latest matured cutoffs champion and challenger are both scored on (pooled)")
    promotion_confidence: float = Field(0.95, description="two-sided level of the paired bootstrap intervals")
    promotion_bootstrap: int = Field(1000, description="paired bootstrap draws (customers resampled, clusters)")
    promotion_calibration_margin: float = Field(
        0.03, description="non-inferiority: the upper end of challenger ECE - champion ECE must stay below this")
    registered_model_prefix: str = "aftersales-"
    baseline_rules: dict[str, str] = Field(
        {"return": "max_product_return_rate", "negative_review": "days_late", "churn": "recency_days"},
        description="one-line rule per model: rank by this feature (higher = riskier)",
    )
    reference_sample_rows: int = Field(
        20_000, description="training rows kept with each model as the drift reference"
    )


class MlflowSettings(BaseModel):
    tracking_uri: str | None = Field(None, description="default sqlite:///<home>/mlflow.db")
    registry_uri: str | None = None
    artifact_location: str | None = Field(None, description="default <home>/mlartifacts")
    experiment_prefix: str = "aftersales"
    request_retries: int = Field(2, description="tries after the first of an HTTP call to the MLflow server "
                                 "(MLflow's default of 7 with back-off waits minutes on a dead server)")
    request_timeout_seconds: float = Field(10.0, description="time limit of one HTTP call to the MLflow server")
    request_backoff_seconds: float = Field(1.0, description="first wait between tries; doubles each try")
    dedupe_significant_digits: int = Field(
        6, description="training data equal to this many significant digits is the same data: a retrain on it "
        "registers no new version (DuckDB's parallel sums differ in the last bits from run to run)")


class ScoringSettings(BaseModel):
    queue_capacity: dict[str, int] = {
        "returns": 60,
        "delivery": 60,
        "retention": 60,
        "vip": 20,
        "default": 40,
    }
    margin_rate: float = Field(0.35, description="gross margin used for value at stake")
    churn_value_days: int = Field(
        365, description="a customer who stops buying loses the shop this many days of their margin (a lower bound "
        "of their remaining value; the 90-day label horizon only says when the loss shows)")
    value_cap_quantile: float = Field(
        0.95, description="value at stake is capped at this quantile of the shop's values (per risk: the last "
        "year's orders, the day's churn population), so a wholesale outlier cannot outrank likely losses")
    cooldown_days: int = 14
    cooldown_override_increase: float = Field(
        0.25, description="absolute rise in risk that lifts a cool-down"
    )
    control_share: float = Field(0.10, description="share of customers held out per risk and assignment period")
    holdout: Literal["per_risk", "universal"] = Field(
        "per_risk", description="per_risk: a control customer is not contacted for that risk during its outcome "
        "window; universal: not contacted at all (no proactive task of any risk) during the longest window")
    assignment_period_days: int = Field(
        28, description="control assignment is a seeded hash of customer, risk and this period; it then holds for "
        "the whole outcome window")
    value_cap_multiple: float = Field(
        5.0, description="value at stake used for expected value is capped at this multiple of the day's median "
        "(a low-probability big spender cannot outrank a likely loss on value alone)")
    min_probability: float = Field(0.15, description="rows below this never make the list")
    explain_headroom: float = Field(
        3.0, description="per risk, explain at most this many times the day's total capacity"
    )
    language: Literal["en", "zh"] = "en"
    seed: int = 11
    constant_check_min_rows: int = Field(
        20, description="a model giving this many or more scored rows one and the same probability is refused")


class PrefectSettings(BaseModel):
    task_runner: Literal["threads", "dask"] = "threads"
    max_workers: int = Field(1, description="parallel tasks with the thread runner (models trained at once)")
    dask_address: str | None = Field(
        None, description="scheduler of an existing Dask cluster, e.g. tcp://dask:8786; none: a local cluster"
    )
    limit_prefix: str = Field("aftersales-", description="global concurrency limits on a Prefect server: "
                              "<prefix>warehouse (every warehouse writer) and <prefix>registry (alias moves)")
    warehouse_slots: int = Field(4, description="slots of the warehouse limit: readers take one, a writer all")
    lock_wait_seconds: float = Field(3600.0, description="a run waits this long for the warehouse or the "
                                     "registry before it fails (it says who holds it)")
    lock_lease_seconds: float = Field(120.0, description="a killed run's slots return after this long")
    retries: int = Field(2, description="retries of a task after a transient failure (a lock, an unreachable "
                         "registry, a webhook)")
    retry_delay_seconds: list[float] = Field([10.0, 60.0], description="wait before each retry (back-off)")
    inbox: Path | None = Field(None, description="folder the daily-ingest deployment reads; checked at deploy time")
    notify_url: str | None = Field(None, description="Apprise URL (slack://, msteams://, mailto://, json://...) the "
                                   "deploy step's automations notify of flagged/held lists and failed runs")


class TagSettings(BaseModel):
    rules_file: Path = Field(DEFAULTS_DIR / "tags.yaml", description="tag rules and segment vocabulary")
    behaviour_window_days: int = Field(180, description="look-back of the behaviour features tags read")
    new_product_days: int = Field(30, description="a purchase this soon after a product's launch is 'new'")
    churn_score_tables: list[str] = Field(
        ["scores", "scored_rows"], description="tables searched for churn probabilities (risk = churn)")
    churn_score_max_age_days: int = Field(14, description="older churn scores are ignored")


class SegmentSettings(BaseModel):
    k_min: int = 3
    k_max: int = 8
    silhouette_sample: int = Field(3_000, description="customers the silhouette of each k is measured on")
    k_stickiness: float = Field(0.02, description="keep the previous k unless another beats its silhouette by this")
    n_init: int = 8
    seed: int = 13
    min_customers: int = Field(30, description="fewer customers with orders: no segmentation")
    max_customers: int = Field(200_000, description="k-means is fitted on a sample this large; all are assigned")
    name_threshold: float = Field(0.5, description="standard deviations from average that make a segment's name")
    match_max_distance: float = Field(
        1.5, description="a new centroid further than this (standard deviations) from every previous one gets a new id")


class JourneySettings(BaseModel):
    quiet_days: int = Field(120, description="no order this long after delivery: the customer went quiet")
    test_window_days: int = Field(120, description="deliveries of this later window evaluate the models")
    markov_order: int = Field(2, description="steps of history the next-step model conditions on")
    min_context_count: int = Field(20, description="fewer transitions from a state: back off to a shorter one")
    max_tickets_per_order: int = 3
    top_paths: int = 15
    min_stage_count: int = Field(15, description="fewer transitions: no stage time for that channel/category")
    slow_stage_factor: float = Field(1.5, description="median this many times the stage's overall median: slow")
    bad_steps: list[str] = ["review_bad", "return_requested", "gone_quiet"]


class ServiceScoreSettings(BaseModel):
    scores_file: Path = Field(DEFAULTS_DIR / "service_scores.yaml", description="dimensions, weights, targets")
    window_days: int = Field(180, description="tickets opened this recently are scored and ranked")
    settle_days: int = Field(7, description="tickets younger than this are not scored yet (facts still arriving)")
    trend_weeks: int = 12
    min_tickets: int = Field(20, description="groups with fewer tickets are shown but not ranked")
    repeat_days: int = Field(7, description="another ticket this soon counts as a repeat complaint")
    confidence: float = Field(0.9, description="level of the score intervals")
    min_prior_strength: float = Field(
        20.0, description="pseudo-tickets pulling every group to the mean at least (one outlying group must not "
                          "make the data look so spread that three tickets count as proof)")
    max_prior_strength: float = Field(500.0, description="cap of the pseudo-tickets pulling a group to the mean")


class AnalyticsSettings(BaseModel):
    """Behaviour tags, segments, journeys and service scores (flows segments/journeys/service-scores)."""

    tags: TagSettings = TagSettings()
    segments: SegmentSettings = SegmentSettings()
    journeys: JourneySettings = JourneySettings()
    service: ServiceScoreSettings = ServiceScoreSettings()


class TextSettings(BaseModel):
    """Sentiment and complaint-reason models over review, ticket and return texts (flow ``text``)."""

    lexicon_file: Path = Field(DEFAULTS_DIR / "complaint_lexicon.yaml",
                               description="complaint categories, weak-label maps and keyword lexicon")
    eval_file: Path | None = Field(
        DEFAULTS_DIR.parent.parent / "tests" / "data" / "complaint_eval.csv",
        description="hand-checked texts (text, language, category) the classifier is scored on; skipped if absent",
    )
    experiment: str = Field("text", description="MLflow experiment <mlflow.experiment_prefix>-<this>")
    analyzer: Literal["word+char", "char", "word"] = Field(
        "word+char", description="TF-IDF features: word n-grams and character n-grams side by side, or one of them")
    compare_analyzers: tuple[str, ...] = Field(
        ("word", "char", "word+char"), description="analyzers whose time-split sentiment ROC-AUC is logged each run")
    ngram_min: int = Field(1, description="character n-grams: works for Chinese without segmentation")
    ngram_max: int = 4
    word_ngram_max: int = Field(2, description="word n-grams 1..this")
    min_df: int = Field(2, description="n-grams seen in fewer texts are ignored")
    max_features: int = Field(200_000, description="character n-gram vocabulary cap")
    word_max_features: int = Field(100_000, description="word n-gram vocabulary cap")
    sentiment_c: float = Field(4.0, description="inverse L2 strength of the sentiment logistic regression")
    complaint_c: float = Field(4.0, description="inverse L2 strength of the complaint logistic regression")
    sentiment_test_days: int = Field(90, description="reviews of the last N days are the later test window")
    negative_threshold: float = Field(0.5, description="P(negative) at or above this makes a text negative")
    min_confidence: float = Field(0.5, description="below this classifier probability the lexicon decides")
    min_chars: int = Field(4, description="shorter texts are left to the lexicon")
    max_train_texts: int = Field(200_000, description="training sample cap per model (speed on big shops)")
    validation_share: float = Field(0.2, description="latest share of weakly labelled texts held out")
    train_until: str | None = Field(None, description="train only on texts created by this date (backtests)")
    crossfit: bool = Field(True, description="store each text's prediction from models of earlier texts only")
    crossfit_freq: str = Field("QS", description="cross-fitting periods (pandas start alias: MS, QS, YS)")
    crossfit_min_reviews: int = Field(50, description="labelled reviews a fold needs before it has a sentiment model")
    crossfit_min_class: int = Field(5, description="bad and good reviews each a fold's sentiment model needs")
    crossfit_min_weak_labels: int = Field(30, description="weakly labelled texts a fold needs for a classifier")
    seed: int = 13


class AlertSettings(BaseModel):
    """Product early warning: weekly rates per product tested against history and category (flow ``alerts``)."""

    history_weeks: int = Field(12, description="weeks before the tested week that form the product's baseline")
    prior_strength: float = Field(
        20.0, description="pseudo-units pulling a product's thin history towards its category's rate")
    exposure_weeks: int = Field(3, description="return rate = returns / mean weekly deliveries over this many weeks")
    min_units: int = Field(8, description="units at risk in the week needed to test its return rate")
    min_history_units: int = Field(30, description="units in the history window needed for a spike-vs-history test")
    min_history_reviews: int = Field(10, description="reviews in the history window needed for a spike-vs-history test")
    min_reviews: int = Field(5, description="reviews in the week needed to test its negative-review rate")
    min_events: int = Field(3, description="returns / negative reviews in the week needed to alert")
    min_rate_ratio: float = Field(1.5, description="rate must be at least this multiple of the baseline")
    fdr_alpha: float = Field(0.05, description="Benjamini-Hochberg false discovery rate per week")
    weeks: int = Field(8, description="latest complete weeks evaluated per run; 0 = every week with history")
    forecast_half_life_weeks: float = Field(2.0, description="exponential weighting of past weeks in the forecast")
    forecast_prior_strength: float = Field(10.0, description="pseudo-reviews of the category's rate in the forecast")
    forecast_interval: float = Field(0.8, description="coverage of the forecast interval")
    quotes: int = Field(3, description="customer texts quoted per alert")
    quote_chars: int = Field(160, description="quoted texts are cut to this length")
    top_complaints: int = Field(3, description="complaint categories named per alert")
    webhook_url: str | None = Field(None, description="POST alerts as JSON here; none: no webhook")
    webhook_timeout_seconds: float = 10.0
    min_testable_share: float = Field(
        0.2, description="below this share of product-weeks with enough volume to test, the run says so")


class ReportSettings(BaseModel):
    """The after-sales KPI report (flow ``report``)."""

    recent_days: int = Field(28, description="headline figures cover this window, compared with the one before")
    breakdown_days: int = Field(90, description="breakdowns by product, category, region, reason cover this window")
    trend_weeks: int = Field(52, description="weeks shown in the trend charts")
    min_product_units: int = Field(30, description="products with fewer delivered units are left out of rankings")
    top_products: int = Field(10, description="rows in product rankings")
    response_target_hours: float = Field(24.0, description="first-response target shown as a share met")
    max_alerts: int = Field(15, description="early-warning alerts listed in the report")
    min_count: int = Field(20, description="a figure resting on fewer rows (reviews, tickets, items, orders) is "
                                           "marked too thin and not compared with the period before")
    data_end_day_share: float = Field(0.25, description="a source ends on its last day with at least this share "
                                                        "of a typical day's rows (stray late rows do not count)")
    data_end_lookback_days: int = Field(56, description="days before a source's last row that define a typical day")


class MonitoringSettings(BaseModel):
    """Drift checks, realised performance, the scoring run's drift gate and retrain triggers (flow ``monitor``)."""

    psi_bins: int = Field(10, description="equal-frequency bins of the reference per numeric feature")
    resolution: float = Field(
        0.1, description="bin edges stay this share of the reference's 1-99% range away from a frequent reference "
        "value, so a smoothed rate (a few values that creep day by day) only changes bins when it really moves")
    psi_warn: float = Field(0.1, description="PSI from which a feature is worth a look")
    psi_drift: float = Field(0.25, description="PSI from which a feature has drifted, if its test agrees")
    p_value: float = Field(0.01, description="KS (numeric) / chi-square (categorical) p-value below which a shift "
                           "is not chance")
    ks_exact_max_rows: int = Field(
        1000, description="KS p-values are exact while both samples have at most this many values, asymptotic "
        "above (within ~.002 of exact there; exact costs 5-20 ms a feature on ties-heavy counts)")
    missing_delta: float = Field(0.1, description="change in a feature's missing share that counts as drift")
    unseen_share: float = Field(0.02, description="share of rows with a category the reference never had that "
                                "counts as drift")
    score_psi_drift: float = Field(0.25, description="PSI of the probabilities vs the reference's that counts as drift")
    min_rows: int = Field(50, description="fewer scored rows: drift is not judged")
    drift_pool_days: int = Field(
        14, description="an order model's drift is judged on the populations of this many run dates up to the "
        "day (each order is scored once per moment, so one day is small and its mix follows the weekday)")
    severe_features: int = Field(3, description="this many drifted features, or drifted scores, make drift severe")
    gate: Literal["flag", "hold", "off"] = Field(
        "flag", description="severe drift at scoring: ship the list flagged, hold it (empty, with the reason), or off")
    top_k: list[int] = Field([10, 25, 50], description="precision of each model's first k listed tasks, once "
                             "labels mature")
    performance_runs: int = Field(7, description="latest matured scoring runs averaged for the performance check")
    min_labelled_rows: int = Field(100, description="fewer labelled rows in those runs: performance is not judged")
    max_roc_auc_drop: float = Field(0.05, description="realised ROC-AUC this far below the version's test ROC-AUC "
                                    "triggers a retrain")
    max_pr_auc_drop: float = Field(0.3, description="realised PR-AUC below (1 - this) x the version's test PR-AUC "
                                   "triggers a retrain")
    calibration_alpha: float = Field(
        0.01, description="pooled realised ECE is tested against its null (a perfectly calibrated model at the same "
        "n and probabilities); a p-value below this, with the excess below, triggers a retrain")
    ece_excess: float = Field(
        0.02, description="realised ECE must also exceed the null's mean ECE by this much (a material miscalibration)")
    performance_alpha: float = Field(
        0.05, description="ROC-AUC / PR-AUC trigger only when the upper end of their one-sided bootstrap interval "
        "(1 - this) is below the limit")
    bootstrap_draws: int = Field(400, description="draws of the realised-performance bootstrap and calibration null")
    retrain: Literal["auto", "subflow", "deployment", "off"] = Field(
        "auto", description="auto: the deployment when it exists on a Prefect server, else a subflow")
    retrain_deployment: str = Field("retrain/weekly-retrain", description="flow/deployment started in deployment mode")
    cooldown_days: float = Field(7.0, description="no second triggered retrain of a model this soon after one")


class CareSettings(BaseModel):
    """Uplift of care tasks, the effect used in expected value, contamination (flows ``uplift``, ``outcomes``)."""

    confidence: float = Field(0.95, description="level of the uplift intervals")
    power: float = Field(0.8, description="power of the minimum detectable effect")
    volume_weeks: int = Field(8, description="recent weeks whose new units measure the weekly volume")
    contact_outcomes: list[str] = Field(
        ["contacted", "resolved", "returned_anyway", "declined"],
        description="outcomes that mean the customer was reached (no_answer is an attempt)")
    match_days: int = Field(
        30, description="an imported outcome without a task id belongs to the customer's latest task or control "
        "row at most this many days before it")
    effects_table: str = Field("uplift_effects", description="warehouse table of the measured effects per risk "
                               "and action that the scoring run shrinks the playbook's priors towards")
class BoardAccount(BaseModel):
    """One person who signs in to the care board (passwords only ever stored hashed, argon2)."""

    name: str = Field("", description="shown on the board; default: the user name")
    role: Literal["agent", "lead"] = Field("agent", description="a lead sees every queue and reassigns")
    queues: list[str] = Field([], description="queues an agent works (a lead sees all)")
    language: Literal["en", "zh"] = Field("en", description="interface language until the person picks another")
    password_hash: str = Field(description="argon2 hash: `aftersales board add-account` writes it")


class BoardSettings(BaseModel):
    """The care team's board (``aftersales board``): where it listens, who signs in, how it shows time."""

    host: str = Field("127.0.0.1", description="interface to bind; anything but loopback is a deliberate choice")
    port: int = 8765
    timezone: str = Field("UTC", description="the shop's time zone (IANA name): due times are shown in it")
    accounts_file: Path | None = Field(None, description="accounts (YAML); default <home>/board/accounts.yaml")
    accounts: dict[str, BoardAccount] = Field({}, description="accounts given in settings, besides the file")
    secret_key_file: Path | None = Field(
        None, description="key that signs session cookies; default <home>/board/secret.key, created on first use")
    session_hours: float = Field(12.0, description="a sign-in lasts this long")
    https_only: bool = Field(False, description="send the session cookie over HTTPS only (set behind TLS)")
    page_size: int = Field(50, description="tasks per page of the list")
    history_days: int = Field(365, description="a task shows the customer's orders, tickets, ... of this many days")
    history_rows: int = Field(10, description="rows shown per kind of history (latest first)")
    default_language: Literal["en", "zh"] = Field(
        "en", description="customers whose language is missing or neither en nor zh are addressed in this one")
    phrases_dir: Path = Field(DEFAULTS_DIR / "board", description="templates, static files, phrases.<lang>.yaml")
    lock_retries: int = Field(40, description="tries to get the warehouse while another process writes to it")
    lock_wait_seconds: float = Field(0.25, description="first wait between those tries (doubles, capped at 2 s)")


class DaskSettings(BaseModel):
    """Data-parallel scoring and training on a Dask cluster (``prefect.dask_address``, else a local one)."""

    data_parallel: bool = Field(False, description="score (predict over partitions of the day's frame) and fit "
                                "the boosters (xgboost.dask) on the Dask cluster; needs the dask extra")
    local_workers: int = Field(2, description="worker processes of the local cluster when no dask_address is set")
    partitions_per_worker: int = Field(2, description="partitions of a frame per Dask worker")
    snapshot_dir: Path | None = Field(None, description="where the day's feature frames are written as Parquet for "
                                      "the workers (storage every worker reads); default <home>/snapshots")


class Settings(BaseSettings):
    """Effective configuration of one run."""

    model_config = SettingsConfigDict(
        env_prefix="AFTERSALES_", env_nested_delimiter="__", extra="ignore"
    )

    paths: PathSettings = PathSettings()
    warehouse: WarehouseSettings = WarehouseSettings()
    ingest: IngestSettings = IngestSettings()
    generator: GeneratorSettings = GeneratorSettings()
    labels: LabelSettings = LabelSettings()
    split: SplitSettings = SplitSettings()
    training: TrainingSettings = TrainingSettings()
    mlflow: MlflowSettings = MlflowSettings()
    scoring: ScoringSettings = ScoringSettings()
    prefect: PrefectSettings = PrefectSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    playbook_file: Path = DEFAULTS_DIR / "playbook.yaml"
    reason_phrases_file: Path = DEFAULTS_DIR / "reasons.yaml"
    text: TextSettings = TextSettings()
    alerts: AlertSettings = AlertSettings()
    report: ReportSettings = ReportSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    care: CareSettings = CareSettings()
    board: BoardSettings = BoardSettings()
    dask: DaskSettings = DaskSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("AFTERSALES_CONFIG", "aftersales.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    # derived locations, so code never joins paths by hand
    @property
    def warehouse_path(self) -> Path:
        return self.paths.resolved_warehouse()

    @property
    def reports_dir(self) -> Path:
        return self.paths.resolved_reports()

    @property
    def data_dir(self) -> Path:
        return self.paths.resolved_data()

    @property
    def board_dir(self) -> Path:
        """The board's own files: accounts and the session key."""
        return self.paths.home / "board"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{(self.paths.home / 'mlflow.db').resolve()}"

    @property
    def artifact_location(self) -> str:
        """Local files next to a local store; through the tracking server when there is one."""
        if self.mlflow.artifact_location:
            return self.mlflow.artifact_location
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"mlflow-artifacts:/{self.mlflow.experiment_prefix}"
        return (self.paths.home / "mlartifacts").resolve().as_uri()

    def registered_model_name(self, model: str) -> str:
        return f"{self.training.registered_model_prefix}{model.replace('_', '-')}"

    def effective(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["derived"] = {
            "warehouse_path": str(self.warehouse_path),
            "reports_dir": str(self.reports_dir),
            "data_dir": str(self.data_dir),
            "tracking_uri": self.tracking_uri,
            "artifact_location": self.artifact_location,
        }
        return data


@lru_cache(maxsize=1)
def _cached() -> Settings:
    return Settings()


def get_settings(**overrides: Any) -> Settings:
    """Settings for this process; overrides build a fresh object (tests, CLI flags)."""
    return Settings(**overrides) if overrides else _cached()


def reset_settings_cache() -> None:
    _cached.cache_clear()
