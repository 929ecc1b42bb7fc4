"""Customer segments: k-means on recency, frequency, value and behaviour, with stable ids and names.

Why k-means on a small, standardised, readable space: care teams need a handful of groups they can
name and act on ("Discount hunters" get promotions, "Loyal high spenders" the VIP desk). The space
is declared in ``schemas/defaults/tags.yaml`` (``segment_features``): each feature log-transformed
if skewed, then standardised. ``k`` is chosen within ``[k_min, k_max]`` by the silhouette on a
sample of customers (higher is better); the previous run's ``k`` is kept unless another beats it
by ``k_stickiness``, so segments do not reshuffle for a rounding difference.

Stable ids: a segment keeps its id (``S3``) across runs. New centroids are matched to the previous
run's centroids (both standardised with this run's scaling) by the Hungarian algorithm on their
distance; a new centroid further than ``match_max_distance`` from its match, or left over when
``k`` grew, gets a fresh id. Names come from ``segment_names`` patterns on the centroids, so they
describe the segment whatever its id.

Every run is logged to MLflow (experiment ``<prefix>-segments``): k, silhouette per k, sizes,
profiles and the report.
"""

from __future__ import annotations

import base64
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from schemas.analytics import (
    CUSTOMER_TAGS_TABLE,
    SEGMENT_CENTROIDS_TABLE,
    SEGMENT_PROFILES_TABLE,
    TAG_HISTORY_TABLE,
    CustomerTags,
    SegmentCentroids,
    SegmentProfiles,
)
from schemas.settings import SegmentSettings, Settings
from tasks.data.warehouse import Warehouse
from tasks.insight.tags import CUSTOMER, TAG, Language, TagBook, tag_strings
from tasks.models.features import as_timestamp
from tasks.models.registry import ensure_experiment
from tasks.templates import markdown_table

SEGMENT = CustomerTags.segment
SEGMENT_NAME = CustomerTags.segment_name
EXPERIMENT = "segments"
EXPERIMENT_DESCRIPTION = ("aftersales customer segments: one run per clustering, with k, the silhouette of each k "
                          "tried, segment sizes and profiles, and the segment report.")


# ---- report helpers (shared by the analytics reports) ------------------------------------------------
def figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    """A figure without pyplot (no global state, no display backend) and its axes."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, ncols)


def embedded_png(fig: Figure, alt: str) -> str:
    """An ``<img>`` tag with the figure as base64 PNG, so one report file carries its plots."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{alt}" src="data:image/png;base64,{data}"/>\n'


# ---- the clustering space ------------------------------------------------------------------------------
def clustering_matrix(features: pd.DataFrame, book: TagBook) -> pd.DataFrame:
    """The transformed (not yet standardised) space, one row per customer with an order.

    Unknown values take the feature's median; a feature unknown for everyone or constant is left
    out (it cannot separate anyone).
    """
    rows = features[features["has_orders"]] if "has_orders" in features else features
    out = {}
    for sf in book.segment_features:
        if sf.feature not in rows:
            continue
        values = pd.to_numeric(rows[sf.feature], errors="coerce").astype(float)
        if values.isna().all():
            continue
        values = values.fillna(values.median())
        if sf.transform == "log":
            values = np.log1p(values.clip(lower=0))
        if values.std() > 0:
            out[sf.feature] = values.to_numpy()
    return pd.DataFrame(out, index=pd.Index(rows[CUSTOMER].to_numpy(), name=CUSTOMER))


@dataclass
class Scaling:
    mean: pd.Series
    std: pd.Series

    @classmethod
    def fit(cls, X: pd.DataFrame) -> Scaling:
        return cls(X.mean(), X.std(ddof=0).replace(0, 1.0))

    def apply(self, X: pd.DataFrame) -> pd.DataFrame:
        cols = [c for c in X.columns if c in self.mean.index]
        return (X[cols] - self.mean[cols]) / self.std[cols]


def fit_k_range(Z: np.ndarray, cfg: SegmentSettings) -> tuple[dict[int, KMeans], dict[int, float]]:
    """K-means for every k of the range (on a sample when large) and the silhouette of each."""
    rng = np.random.default_rng(cfg.seed)
    n = len(Z)
    fit_rows = rng.choice(n, cfg.max_customers, replace=False) if n > cfg.max_customers else np.arange(n)
    sil_rows = rng.choice(n, min(cfg.silhouette_sample, n), replace=False)
    models, silhouettes = {}, {}
    for k in range(max(2, cfg.k_min), min(cfg.k_max, n - 1) + 1):
        km = KMeans(n_clusters=k, n_init=cfg.n_init, random_state=cfg.seed).fit(Z[fit_rows])
        labels = km.predict(Z[sil_rows])
        models[k] = km
        silhouettes[k] = float(silhouette_score(Z[sil_rows], labels)) if len(set(labels)) > 1 else -1.0
    return models, silhouettes


def choose_k(silhouettes: dict[int, float], previous_k: int | None, stickiness: float) -> int:
    """Best silhouette, except the previous k stays while it is within ``stickiness`` of the best."""
    best = max(silhouettes, key=lambda k: (silhouettes[k], -k))
    if previous_k in silhouettes and silhouettes[previous_k] >= silhouettes[best] - stickiness:
        return int(previous_k)
    return best


def match_segments(new: pd.DataFrame, previous: pd.DataFrame | None, scaling: Scaling,
                   max_distance: float, sizes: pd.Series) -> dict[int, str]:
    """Stable ids for the new clusters (index: cluster label, columns: features, raw space).

    ``previous``: index segment id, columns features. Without a previous run, ids follow size
    (S1 = largest). Unmatched or too distant clusters get fresh ids after the highest ever used.
    """
    if previous is None or previous.empty:
        order = sizes.sort_values(ascending=False, kind="stable").index
        return {int(label): f"S{i + 1}" for i, label in enumerate(order)}
    common = [c for c in new.columns if c in previous.columns]
    a = scaling.apply(new[common]).to_numpy()
    b = scaling.apply(previous[common]).to_numpy()
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))
    rows, cols = linear_sum_assignment(dist)
    ids: dict[int, str] = {}
    for r, c in zip(rows, cols, strict=True):
        if dist[r, c] <= max_distance:
            ids[int(new.index[r])] = str(previous.index[c])
    next_id = max(int(s[1:]) for s in previous.index) + 1
    for label in sizes.sort_values(ascending=False, kind="stable").index:
        if int(label) not in ids:
            ids[int(label)] = f"S{next_id}"
            next_id += 1
    return ids


def trait_words(z: pd.Series, book: TagBook, threshold: float, language: Language, top: int = 3) -> list[str]:
    """The segment's strongest traits in words ("mostly buys on discount"), strongest first."""
    words = {sf.feature: sf for sf in book.segment_features}
    strong = z[z.abs() >= threshold].abs().sort_values(ascending=False).index[:top]
    return [(words[f].high if z[f] > 0 else words[f].low)(language) for f in strong]


def name_segments(z_centroids: pd.DataFrame, book: TagBook, threshold: float, language: Language,
                  keep: dict[str, str] | None = None) -> dict[str, str]:
    """A readable, unique name per segment (index: segment id; values: standardised centroid).

    ``segment_names`` patterns are taken in the file's order (earlier = more telling); each goes to
    the still unnamed segment it fits best (all its features beyond ``threshold`` standard
    deviations in the stated direction; fit = mean distance). Segments no pattern fits are named
    after their strongest traits. ``keep``: names already decided (segments carried over).
    """
    names: dict[str, str] = dict(keep or {})
    used: set[str] = set(names.values())
    for pattern in book.segment_names:
        best, best_fit = None, -np.inf
        for seg, z in z_centroids.iterrows():
            signed = [z.get(f, 0.0) * (1 if d == "high" else -1) for f, d in pattern.when.items()]
            if seg not in names and signed and min(signed) >= threshold and np.mean(signed) > best_fit:
                best, best_fit = seg, float(np.mean(signed))
        name = getattr(pattern, language)
        if best is not None and name not in used:
            names[best] = name
            used.add(name)
    for seg, z in z_centroids.iterrows():
        if seg in names:
            continue
        traits = trait_words(z, book, threshold, language, top=2)
        name = (", ".join(traits).capitalize() if traits else ("Average customers" if language == "en" else "普通客户"))
        base, n = name, 2
        while name in used:
            name, n = f"{base} {n}", n + 1
        names[seg] = name
        used.add(name)
    return names


# ---- one segmentation run ----------------------------------------------------------------------------------
@dataclass
class Segmentation:
    run_date: pd.Timestamp
    k: int
    silhouettes: dict[int, float]
    assignments: pd.DataFrame  # customer_id, segment
    profiles: pd.DataFrame  # SegmentProfiles
    centroids: pd.DataFrame  # SegmentCentroids
    z_centroids: pd.DataFrame  # index segment, standardised
    features_used: list[str] = field(default_factory=list)
    matched_previous: int = 0

    @property
    def silhouette(self) -> float:
        return self.silhouettes.get(self.k, float("nan"))


@dataclass
class PreviousRun:
    """What the next run needs of the last one: centroids (index segment, columns features) and names."""

    centroids: pd.DataFrame
    names: dict[str, str]

    @property
    def k(self) -> int:
        return len(self.centroids)


def previous_run(wh: Warehouse, before: Any) -> PreviousRun | None:
    """The latest run dated before ``before``, or None."""
    if not wh.has_table(SEGMENT_CENTROIDS_TABLE):
        return None
    day = as_timestamp(before).to_pydatetime()
    prev = wh.query(f'SELECT * FROM "{SEGMENT_CENTROIDS_TABLE}" WHERE run_date = '
                    f'(SELECT max(run_date) FROM "{SEGMENT_CENTROIDS_TABLE}" WHERE run_date < ?)', [day])
    if prev.empty:
        return None
    wide = prev.pivot(index=SegmentCentroids.segment, columns=SegmentCentroids.feature, values=SegmentCentroids.value)
    names: dict[str, str] = {}
    if wh.has_table(SEGMENT_PROFILES_TABLE):
        profiles = wh.query(f'SELECT segment, segment_name FROM "{SEGMENT_PROFILES_TABLE}" WHERE run_date = ?',
                            [prev["run_date"].iloc[0].to_pydatetime()])
        names = dict(zip(profiles["segment"], profiles["segment_name"], strict=True))
    return PreviousRun(wide, names)


def segment_profiles(features: pd.DataFrame, assignments: pd.DataFrame, z_centroids: pd.DataFrame,
                     tags_long: pd.DataFrame, names: dict[str, str], book: TagBook, cfg: SegmentSettings,
                     language: Language) -> pd.DataFrame:
    """Size, value share, averages, defining traits and over-represented tags of every segment."""
    f = features.merge(assignments, on=CUSTOMER)
    value = f["value_365d"].fillna(0.0)
    total_value = float(value.sum()) or 1.0
    tag_share = pd.Series(dtype=float)
    if len(tags_long):
        t = tags_long.merge(assignments, on=CUSTOMER)
        counts = t.groupby([SEGMENT, TAG]).size()
        tag_share = counts / counts.index.get_level_values(0).map(assignments[SEGMENT].value_counts()).to_numpy()
        overall = tags_long[TAG].value_counts() / max(len(assignments), 1)
    rows = []
    for seg, grp in f.groupby(SEGMENT):
        traits = trait_words(z_centroids.loc[seg], book, cfg.name_threshold, language)
        dominant = []
        if len(tag_share) and seg in tag_share.index.get_level_values(0):
            shares = tag_share.loc[seg].sort_values(ascending=False)
            for tag, share in shares.items():
                if share >= 0.25 and share >= 1.5 * overall.get(tag, 0):
                    dominant.append(f"{book.label(tag, language)} ({share:.0%})")
        rows.append({
            SEGMENT: seg, SEGMENT_NAME: names[seg], "customers": len(grp),
            "customer_share": len(grp) / len(f), "value_share": float(grp["value_365d"].fillna(0).sum()) / total_value,
            "avg_value_365d": float(grp["value_365d"].fillna(0).mean()),
            "avg_orders_365d": float(grp["orders_365d"].fillna(0).mean()),
            "avg_recency_days": float(grp["recency_days"].fillna(0).mean()),
            "defining_features": ", ".join(traits) or "close to average",
            "dominant_tags": ", ".join(dominant[:3]) or "none",
        })
    return pd.DataFrame(rows)


def segment_customers(features: pd.DataFrame, tags_long: pd.DataFrame, book: TagBook, settings: Settings,
                      run_date: Any, previous: PreviousRun | None = None) -> Segmentation | None:
    """Cluster the customers with an order; None when there are too few to segment.

    With the ``previous`` run, matched segments keep their ids and their names (a name does not
    flip because a trait crossed a threshold by a hair); new segments get names of their own.
    """
    cfg = settings.analytics.segments
    language: Language = settings.scoring.language
    day = as_timestamp(run_date).normalize()
    X = clustering_matrix(features, book)
    if len(X) < max(cfg.min_customers, cfg.k_min + 1) or X.shape[1] == 0:
        return None
    scaling = Scaling.fit(X)
    Z = scaling.apply(X).to_numpy()
    models, silhouettes = fit_k_range(Z, cfg)
    k = choose_k(silhouettes, previous.k if previous else None, cfg.k_stickiness)
    labels = models[k].predict(Z)
    sizes = pd.Series(labels).value_counts()
    raw_centroids = pd.DataFrame(models[k].cluster_centers_, columns=X.columns) * scaling.std + scaling.mean
    ids = match_segments(raw_centroids, previous.centroids if previous else None, scaling,
                         cfg.match_max_distance, sizes)
    assignments = pd.DataFrame({CUSTOMER: X.index.to_numpy(), SEGMENT: [ids[int(x)] for x in labels]})
    raw_centroids.index = [ids[i] for i in raw_centroids.index]
    z_centroids = pd.DataFrame(Z, columns=X.columns).groupby(assignments[SEGMENT].to_numpy()).mean()
    kept = {seg: name for seg, name in (previous.names if previous else {}).items() if seg in z_centroids.index}
    names = name_segments(z_centroids, book, cfg.name_threshold, language, kept)
    profiles = segment_profiles(features, assignments, z_centroids, tags_long, names, book, cfg, language)
    profiles.insert(0, SegmentProfiles.run_date, day)
    profiles["k"] = k
    profiles["silhouette"] = silhouettes[k]
    profiles = SegmentProfiles.validate(profiles.sort_values(SEGMENT, key=lambda s: s.str[1:].astype(int)),
                                        lazy=True).reset_index(drop=True)
    centroids = (raw_centroids.rename_axis(SEGMENT).reset_index()
                 .melt(id_vars=SEGMENT, var_name=SegmentCentroids.feature, value_name=SegmentCentroids.value))
    centroids.insert(0, SegmentCentroids.run_date, day)
    matched = 0 if previous is None else sum(1 for s in set(ids.values()) if s in set(previous.centroids.index))
    return Segmentation(day, k, silhouettes, assignments, profiles, SegmentCentroids.validate(centroids, lazy=True),
                        z_centroids, list(X.columns), matched)


# ---- storing -----------------------------------------------------------------------------------------------
def customer_tag_snapshot(features: pd.DataFrame, tags_long: pd.DataFrame, seg: Segmentation | None,
                          book: TagBook, run_date: Any) -> pd.DataFrame:
    """``CustomerTags`` rows: every customer with an order or recent browsing, tags and segment."""
    day = as_timestamp(run_date).normalize()
    customers = features[CUSTOMER].astype(str).reset_index(drop=True)
    out = pd.DataFrame({CustomerTags.run_date: day, CUSTOMER: customers,
                        CustomerTags.tags: tag_strings(tags_long, customers, book)})
    if seg is None:
        out[SEGMENT], out[SEGMENT_NAME] = None, None
    else:
        names = seg.profiles.set_index(SEGMENT)[SEGMENT_NAME]
        out = out.merge(seg.assignments, on=CUSTOMER, how="left")
        out[SEGMENT_NAME] = out[SEGMENT].map(names)
    out = out.astype({CustomerTags.run_date: "datetime64[us]"})
    return CustomerTags.validate(out, lazy=True)


def write_segmentation(wh: Warehouse, snapshot: pd.DataFrame, history: pd.DataFrame, seg: Segmentation | None,
                       run_date: Any) -> None:
    """Store the run's segments, the tag history and the tags snapshot (re-running a date replaces it).

    Each write is atomic on its own (``replace_partition`` runs in a transaction).
    """
    day = as_timestamp(run_date).normalize()
    where = {CustomerTags.run_date: day.to_pydatetime()}
    if seg is not None:  # centroids last: the next run matches against complete runs only
        wh.replace_partition(SEGMENT_PROFILES_TABLE, seg.profiles.astype({"run_date": "datetime64[us]"}), where)
        wh.replace_partition(SEGMENT_CENTROIDS_TABLE, seg.centroids.astype({"run_date": "datetime64[us]"}), where)
    wh.replace_table(TAG_HISTORY_TABLE, history)
    wh.replace_partition(CUSTOMER_TAGS_TABLE, snapshot, where)  # what scoring reads: written last


# ---- MLflow --------------------------------------------------------------------------------------------------
def log_segmentation(seg: Segmentation, settings: Settings, report: str) -> str:
    """Log one run to MLflow (no global MLflow state is touched); returns the run id."""
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    cfg = settings.analytics.segments
    run = client.create_run(ensure_experiment(client, settings, EXPERIMENT, EXPERIMENT_DESCRIPTION),
                            run_name=f"segments {seg.run_date:%Y-%m-%d}", tags={"run_date": f"{seg.run_date:%Y-%m-%d}"})
    run_id = run.info.run_id
    try:
        params = {"k": seg.k, "k_min": cfg.k_min, "k_max": cfg.k_max, "criterion": "silhouette",
                  "silhouette_sample": cfg.silhouette_sample, "seed": cfg.seed, "k_stickiness": cfg.k_stickiness,
                  "features": ",".join(seg.features_used), "customers": len(seg.assignments)}
        for key, value in params.items():
            client.log_param(run_id, key, value)
        client.log_metric(run_id, "silhouette", seg.silhouette)
        client.log_metric(run_id, "matched_previous_segments", seg.matched_previous)
        for k, s in seg.silhouettes.items():
            client.log_metric(run_id, "silhouette_by_k", s, step=k)
        for row in seg.profiles.itertuples():
            client.log_metric(run_id, f"share_{row.segment}", row.customer_share)
        with tempfile.TemporaryDirectory() as tmp:
            seg.profiles.to_csv(Path(tmp) / "segment_profiles.csv", index=False)
            (Path(tmp) / "segments_report.md").write_text(report, encoding="utf-8")
            client.log_artifacts(run_id, tmp)
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


# ---- the report ----------------------------------------------------------------------------------------------
def segments_report(seg: Segmentation | None, changes: pd.DataFrame, skipped: dict[str, str], book: TagBook,
                    settings: Settings, customers: int, images: bool = True) -> str:
    """Markdown for people: tags (holding, gained, lost today), segments with names and traits, k."""
    language: Language = settings.scoring.language
    day = seg.run_date if seg is not None else None
    lines = [f"# Customer segments and behaviour tags{f' — {day:%Y-%m-%d}' if day is not None else ''}", "",
             f"{customers:,} customers with an order or recent browsing."]
    lines += ["", "## Behaviour tags", ""]
    order = {t.name: i for i, t in enumerate(book.tags)}
    changes = changes.sort_values(TAG, key=lambda tags: tags.map(order), kind="stable")
    table = changes.assign(tag=changes[TAG].map(lambda t: book.label(t, language)))
    table = table.rename(columns={"tag": "tag", "holding": "customers", "gained": "gained today",
                                  "lost": "lost today"})[["tag", "customers", "gained today", "lost today"]]
    lines.append(markdown_table(table))
    for name, why in skipped.items():
        lines.append(f"- *{book.label(name, language)}* not computed: {why}.")
    if images and len(changes):
        fig, ax = figure(6, 0.35 * len(table) + 1)
        ax.barh(table["tag"], table["customers"], color="#4c72b0")
        ax.invert_yaxis()
        ax.set_xlabel("customers")
        lines.append(embedded_png(fig, "customers per tag"))
    lines += ["", "## Segments", ""]
    if seg is None:
        lines.append("Too few customers with an order to segment.")
        return "\n".join(lines) + "\n"
    cfg = settings.analytics.segments
    lines.append(f"**{seg.k} segments**, k chosen in {cfg.k_min}–{cfg.k_max} by the silhouette on a sample of "
                 f"{min(cfg.silhouette_sample, len(seg.assignments)):,} customers (higher is better): "
                 f"{seg.silhouette:.3f}. {seg.matched_previous} segment ids carried over from the previous run.")
    lines.append("")
    p = seg.profiles
    show = pd.DataFrame({"segment": p[SEGMENT], "name": p[SEGMENT_NAME], "customers": p["customers"],
                         "share": p["customer_share"].map("{:.0%}".format),
                         "revenue share": p["value_share"].map("{:.0%}".format),
                         "avg spend, last year": p["avg_value_365d"].round(0),
                         "defined by": p["defining_features"], "typical tags": p["dominant_tags"]})
    lines.append(markdown_table(show, floatfmt=",.0f"))
    sil = pd.DataFrame({"k": list(seg.silhouettes), "silhouette": [round(v, 3) for v in seg.silhouettes.values()]})
    lines += ["", "Silhouette by k:", "", markdown_table(sil, floatfmt=".3f")]
    if images:
        fig, axes = figure(11, 3.6, ncols=2)
        x = np.arange(len(p))
        axes[0].bar(x - 0.2, p["customer_share"], 0.4, label="customers")
        axes[0].bar(x + 0.2, p["value_share"], 0.4, label="revenue")
        axes[0].set_xticks(x, [f"{s}\n{n}" for s, n in zip(p[SEGMENT], p[SEGMENT_NAME], strict=True)], fontsize=7)
        axes[0].set_ylabel("share")
        axes[0].legend()
        axes[1].plot(sil["k"], sil["silhouette"], marker="o")
        axes[1].axvline(seg.k, color="grey", linestyle="--")
        axes[1].set_xlabel("k (segments)")
        axes[1].set_ylabel("silhouette")
        lines.append(embedded_png(fig, "segment sizes and silhouette by k"))
    return "\n".join(lines) + "\n"
