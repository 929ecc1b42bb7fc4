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

from pydantic import BaseModel, Field
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


class IngestSettings(BaseModel):
    chunk_rows: int = Field(500_000, description="rows validated at a time; bounds memory")
    max_future_skew_hours: float = Field(
        24.0, description="timestamps later than batch time + this are rejected as future"
    )
    report_examples: int = Field(20, description="failure examples shown per check in the report")


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
    return_population_days: int = Field(
        14, description="return model scores orders delivered this recently (must be < return window)"
    )
    review_population_days: int = Field(
        14, description="negative-review model scores orders delivered this recently, not yet reviewed"
    )


class SplitSettings(BaseModel):
    n_cutoffs: int = Field(6, description="rolling cutoffs used to build training sets")
    cutoff_step_days: int = 30
    gap_days: int = Field(
        30, description="gap between train, validation and test windows (at least the label window)"
    )
    latest_cutoff: str | None = Field(
        None, description="newest cutoff (ISO date); default: the latest with a matured label"
    )


class XGBSettings(BaseModel):
    max_depth: int = 5
    learning_rate: float = 0.08
    n_estimators: int = 400
    early_stopping_rounds: int = 30
    min_child_weight: float = 5.0
    subsample: float = 0.85
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    nthread: int = 2
    max_bin: int = 256


class TrainingSettings(BaseModel):
    seed: int = 7
    models: list[str] = ["return", "negative_review", "churn"]
    xgb: XGBSettings = XGBSettings()
    calibration: Literal["isotonic", "sigmoid"] = "isotonic"
    top_k: int = Field(200, description="cases a care team can contact per day; precision/lift@k")
    shap_sample_rows: int = 2_000
    promotion_metric: Literal["pr_auc", "roc_auc", "brier"] = "pr_auc"
    promotion_margin: float = Field(0.005, description="challenger must beat champion by this much")
    registered_model_prefix: str = "aftersales-"


class MlflowSettings(BaseModel):
    tracking_uri: str | None = Field(None, description="default sqlite:///<home>/mlflow.db")
    registry_uri: str | None = None
    artifact_location: str | None = Field(None, description="default <home>/mlartifacts")
    experiment_prefix: str = "aftersales"


class ScoringSettings(BaseModel):
    queue_capacity: dict[str, int] = {
        "returns": 60,
        "delivery": 60,
        "retention": 60,
        "vip": 20,
        "default": 40,
    }
    margin_rate: float = Field(0.35, description="gross margin used for value at stake")
    customer_value_months: int = Field(12, description="horizon of a customer's expected value")
    cooldown_days: int = 14
    cooldown_override_increase: float = Field(
        0.25, description="absolute rise in risk that lifts a cool-down"
    )
    control_share: float = 0.10
    min_probability: float = Field(0.15, description="rows below this never make the list")
    review_candidate_days: int = Field(14, description="delivered this recently and not reviewed")
    churn_active_days: int = 180
    language: Literal["en", "zh"] = "en"
    seed: int = 11


class PrefectSettings(BaseModel):
    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = Field(None, description="scheduler address of an existing Dask cluster")


class Settings(BaseSettings):
    """Effective configuration of one run."""

    model_config = SettingsConfigDict(
        env_prefix="AFTERSALES_", env_nested_delimiter="__", extra="ignore"
    )

    paths: PathSettings = PathSettings()
    ingest: IngestSettings = IngestSettings()
    generator: GeneratorSettings = GeneratorSettings()
    labels: LabelSettings = LabelSettings()
    split: SplitSettings = SplitSettings()
    training: TrainingSettings = TrainingSettings()
    mlflow: MlflowSettings = MlflowSettings()
    scoring: ScoringSettings = ScoringSettings()
    prefect: PrefectSettings = PrefectSettings()
    playbook_file: Path = DEFAULTS_DIR / "playbook.yaml"
    reason_phrases_file: Path = DEFAULTS_DIR / "reasons.yaml"

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
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{(self.paths.home / 'mlflow.db').resolve()}"

    @property
    def artifact_location(self) -> str:
        return self.mlflow.artifact_location or (self.paths.home / "mlartifacts").resolve().as_uri()

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
