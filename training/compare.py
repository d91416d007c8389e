"""Champion vs challenger: score both models on the same images, decide whether to promote.

``imageiq retrain`` trains a challenger and asks whether it should replace the model being
served (the champion). :func:`compare_models` scores both on named evaluation sets through
the serving path (:func:`training.report.predict_data`: decoding, preprocessing, the
card's temperature), :func:`decide` applies a :class:`PromotionPolicy`, and
:func:`write_report` writes ``comparison.json``, ``comparison.md`` and confusion matrices.

The promotion rule
------------------
Only the main head (``label``) decides; attribute heads are reported. The sets that decide
are those of the policy's ``decisive_sets`` (default ``held_out`` and ``golden``) that the
comparison has; any other set is reported only, and with none of them nothing is promoted.
"The primary metric" is macro-F1 (or top-1, ``primary_metric``) on the images whose true
class the champion knew, averaged over those classes: a like-for-like figure, since the
champion cannot predict classes collected after it was trained.

With a champion, the challenger is promoted when every check below passes on every
decisive set:

1. **Better**: its primary metric is at least the champion's + ``margin`` (0.01).
   **Or, new classes**: it knows classes the champion did not, each of them evaluated on at
   least ``min_class_support`` (5) images in some decisive set, and its primary metric is at
   least the champion's - ``margin`` (not worse beyond the margin).
2. **No class regresses**: no class both know loses more than ``class_tolerance`` (0.05) of
   recall (champion's recall - challenger's). Recall, not F1: a class's recall depends on
   that class's images alone, so it is not moved by the images of new classes that the
   champion must get wrong; a class that starts swallowing another's images shows up as
   the other's recall drop. Classes with fewer than ``min_class_support`` images in a set
   are reported there but do not decide: one image of four is 0.25 of recall.
3. **No class is lost**: a class the champion knew and the challenger does not is a
   regression, whatever the images.
4. **New classes work**: a new class evaluated on at least ``min_class_support`` images has
   a recall of at least ``new_class_min_recall`` (0.5) there, whichever way 1 passed.

Without a champion (the first model), the challenger is promoted when on every decisive set
its primary metric is at least ``first_model_min_lift`` (0.2) above chance: the better of
always answering the set's commonest class and answering uniformly at random.

A boundary value passes (a gain of exactly the margin, a drop of exactly the tolerance).
A decisive set with no images of the champion's classes cannot show check 1 and is left out
of it. On small sets these thresholds are a few images: at 45 images a class, 0.05 of recall
is 2 images; raise ``min_class_support`` or pin a larger golden set rather than chase noise.

What the figures are
--------------------
Per set, head and model: top-1 and macro-F1 (scikit-learn) on all images (an image of a
class the model does not know counts as wrong) and on the champion's classes; per class
precision, recall, F1 and support over all the set's images (what that model would do in
production on them); the confusion matrix. Per class both models know: the changes
(challenger - champion), worst recall change first.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.metrics import precision_recall_fscore_support as prfs

from imageiq.architectures import MAIN_HEAD
from imageiq.errors import ConfigurationError
from imageiq.inference import Classifier
from training.report import plot_confusion, predict_data
from training.sources import LabelledData

Metric = Literal["macro_f1", "top1"]
METRICS: tuple[Metric, ...] = ("macro_f1", "top1")
_EPS = 1e-9  # boundary values pass despite float rounding (0.83 - 0.82 < 0.01 in floats)


@dataclass(frozen=True)
class ClassScore:
    precision: float
    recall: float
    f1: float
    support: int  # images of this class in the set
    correct: int  # of them, predicted as this class


@dataclass(frozen=True)
class Scores:
    images: int
    top1: float
    macro_f1: float  # averaged over the classes present among the images

    def metric(self, name: Metric) -> float:
        return self.top1 if name == "top1" else self.macro_f1


@dataclass(frozen=True)
class ModelScores:
    """One model on one set and head."""

    overall: Scores  # every image; a class the model does not know counts as wrong
    champion_classes: Scores | None  # the images of classes the champion knew; None: none
    per_class: dict[str, ClassScore]  # every class in the set
    confusion_labels: list[str]
    confusion: list[list[int]]  # rows: true, columns: predicted


@dataclass(frozen=True, kw_only=True)
class ClassDelta:
    """A class both models know: challenger - champion."""

    label: str
    support: int
    champion: ClassScore
    challenger: ClassScore
    recall: float
    precision: float
    f1: float


@dataclass(frozen=True)
class HeadComparison:
    images: int  # with a known true value
    support: dict[str, int]
    shared: list[str]  # classes in the set that both models know
    new: list[str]  # ... that only the challenger knows
    dropped: list[str]  # ... that only the champion knows
    unknown: list[str]  # ... that neither knows
    champion: ModelScores | None
    challenger: ModelScores
    deltas: list[ClassDelta]  # shared classes, worst recall change first


@dataclass(frozen=True)
class SetComparison:
    name: str
    source: str
    images: int
    heads: dict[str, HeadComparison]  # the main head first


@dataclass(frozen=True)
class ModelSummary:
    tag: str
    architecture: str
    labels: list[str]
    heads: dict[str, list[str]]

    @classmethod
    def of(cls, classifier: Classifier) -> ModelSummary:
        card = classifier.model.card
        return cls(classifier.model.tag, card.architecture, list(card.labels), dict(card.heads))


@dataclass(frozen=True)
class Comparison:
    champion: ModelSummary | None
    challenger: ModelSummary
    sets: dict[str, SetComparison]

    @property
    def new_classes(self) -> list[str]:
        """The challenger's classes the champion did not know (all, without a champion)."""
        before = set(self.champion.labels) if self.champion else set()
        return [c for c in self.challenger.labels if c not in before]

    @property
    def dropped_classes(self) -> list[str]:
        if self.champion is None:
            return []
        return [c for c in self.champion.labels if c not in self.challenger.labels]


def compare_models(
    champion: Classifier | None,
    challenger: Classifier,
    sets: Mapping[str, tuple[LabelledData, Sequence[int]]],
    *,
    batch_size: int,
    max_pixels: int,
    progress: Callable[[int], None] | None = None,
) -> Comparison:
    """Both models on the same images of each named set (``progress`` gets image counts)."""
    if not sets:
        raise ConfigurationError("A comparison needs at least one evaluation set.")
    results = {}
    for name, (data, indices) in sets.items():
        if not indices:
            raise ConfigurationError(f"The evaluation set {name!r} ({data.source}) is empty.")
        predicted = {
            role: _predict(model, data, indices, batch_size, max_pixels, progress)
            for role, model in (("champion", champion), ("challenger", challenger))
            if model is not None
        }
        heads = {}
        for head in [MAIN_HEAD, *(h for h in challenger.heads if h in data.heads)]:
            truth = [
                s.label if head == MAIN_HEAD else s.attributes.get(head, "")
                for s in (data.samples[i] for i in indices)
            ]
            old = predicted.get("champion", {}).get(head)
            heads[head] = compare_predictions(
                truth,
                champion_labels=_vocab(champion, head) if champion and old is not None else None,
                champion_predictions=old,
                challenger_labels=_vocab(challenger, head),
                challenger_predictions=predicted["challenger"][head],
            )
        results[name] = SetComparison(name, data.source, len(indices), heads)
    return Comparison(
        ModelSummary.of(champion) if champion else None, ModelSummary.of(challenger), results
    )


def _vocab(model: Classifier, head: str) -> list[str]:
    return list(model.labels if head == MAIN_HEAD else model.heads[head])


def _predict(
    model: Classifier,
    data: LabelledData,
    indices: Sequence[int],
    batch_size: int,
    max_pixels: int,
    progress: Callable[[int], None] | None,
) -> dict[str, list[str]]:
    """The predicted label (value) per image and head: the serving path's argmax."""
    arrays = predict_data(
        model,
        data,
        list(indices),
        batch_size=batch_size,
        max_pixels=max_pixels,
        progress=progress,
        unknown="ignore",
    )
    return {
        head: [_vocab(model, head)[i] for i in probs.argmax(axis=1)]
        for head, (_, probs, _) in arrays.items()
    }


def compare_predictions(
    truth: Sequence[str],
    *,
    champion_labels: Sequence[str] | None,
    champion_predictions: Sequence[str] | None,
    challenger_labels: Sequence[str],
    challenger_predictions: Sequence[str],
) -> HeadComparison:
    """The figures of one head from the true and predicted labels (values) of each image,
    and each model's vocabulary; an empty true value (an attribute not labelled for that
    image) leaves the image out. The pure core of :func:`compare_models`."""
    keep = [i for i, t in enumerate(truth) if t]
    truth = [truth[i] for i in keep]
    support = dict(sorted(Counter(truth).items()))
    classes = list(support)
    old = set(champion_labels or ())
    new = set(challenger_labels)
    scope = [i for i, t in enumerate(truth) if t in old]  # the champion's classes

    def scores(labels: Sequence[str], given: Sequence[str]) -> ModelScores:
        predicted = [given[i] for i in keep]
        matrix_labels = sorted(set(classes) | set(labels))
        return ModelScores(
            overall=_scores(truth, predicted),
            champion_classes=(
                _scores([truth[i] for i in scope], [predicted[i] for i in scope]) if scope else None
            ),
            per_class=_per_class(truth, predicted, classes),
            confusion_labels=matrix_labels,
            confusion=confusion_matrix(truth, predicted, labels=matrix_labels).tolist(),
        )

    champion = None
    if champion_labels is not None and champion_predictions is not None:
        champion = scores(champion_labels, champion_predictions)
    challenger = scores(challenger_labels, challenger_predictions)
    shared = [c for c in classes if c in new and c in old]
    deltas = _deltas(champion, challenger, shared) if champion is not None else []
    return HeadComparison(
        images=len(truth),
        support=support,
        shared=shared,
        new=[c for c in classes if c in new and c not in old],
        dropped=[c for c in classes if c in old and c not in new],
        unknown=[c for c in classes if c not in old and c not in new],
        champion=champion,
        challenger=challenger,
        deltas=deltas,
    )


def _deltas(champion: ModelScores, challenger: ModelScores, shared: list[str]) -> list[ClassDelta]:
    """Challenger - champion per shared class, worst recall change first."""
    out = []
    for c in shared:
        x, y = champion.per_class[c], challenger.per_class[c]
        recall, precision, f1 = y.recall - x.recall, y.precision - x.precision, y.f1 - x.f1
        out.append(
            ClassDelta(
                label=c,
                support=x.support,
                champion=x,
                challenger=y,
                recall=recall,
                precision=precision,
                f1=f1,
            )
        )
    return sorted(out, key=lambda d: (d.recall, d.f1, d.label))


def _scores(truth: list[str], predicted: list[str]) -> Scores:
    present = sorted(set(truth))
    return Scores(
        images=len(truth),
        top1=float(accuracy_score(truth, predicted)),
        macro_f1=float(
            f1_score(truth, predicted, labels=present, average="macro", zero_division=0)
        ),
    )


def _per_class(truth: list[str], predicted: list[str], classes: list[str]) -> dict[str, ClassScore]:
    precision, recall, f1, support = prfs(truth, predicted, labels=classes, zero_division=0)
    hits = Counter(t for t, p in zip(truth, predicted, strict=True) if t == p)
    return {
        c: ClassScore(float(precision[k]), float(recall[k]), float(f1[k]), int(support[k]), hits[c])
        for k, c in enumerate(classes)
    }


# --- the decision -------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionPolicy:
    """The thresholds of the rule in this module's docstring."""

    primary_metric: Metric = "macro_f1"
    margin: float = 0.01  # absolute
    class_tolerance: float = 0.05  # the largest recall drop allowed to a shared class
    min_class_support: int = 5  # fewer images of a class in a set: reported, not decisive
    new_class_min_recall: float = 0.5
    first_model_min_lift: float = 0.2  # above chance, for a first model
    decisive_sets: tuple[str, ...] = ("held_out", "golden")

    def __post_init__(self) -> None:
        if self.primary_metric not in METRICS:
            raise ConfigurationError(
                f"Invalid primary metric {self.primary_metric!r}. Only {', '.join(METRICS)} "
                "are supported."
            )
        for name in ("margin", "class_tolerance", "new_class_min_recall", "first_model_min_lift"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigurationError(f"The promotion {name} must be within 0..1.")
        if self.min_class_support < 1:
            raise ConfigurationError("The promotion min_class_support must be at least 1.")
        if not self.decisive_sets:
            raise ConfigurationError("The promotion policy needs at least one decisive set.")


Figure = float | int | str


@dataclass(frozen=True, kw_only=True)
class Check:
    """One test of the rule on one set (or on the models' vocabularies: ``set`` None)."""

    kind: Literal["first model", "primary", "class recall", "new class", "lost class"]
    set: str | None
    subject: str  # the metric or the class
    passed: bool
    decisive: bool
    reason: str
    figures: dict[str, Figure] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    promote: bool
    rule: str  # which way it passed ("better", "new classes", "first model"), or "" when not
    reasons: list[str]  # the verdict first, then each check with its numbers
    checks: list[Check]
    policy: PromotionPolicy


def decide(comparison: Comparison, policy: PromotionPolicy | None = None) -> Decision:
    """Apply the rule of this module's docstring."""
    policy = policy or PromotionPolicy()
    decisive = [name for name in comparison.sets if name in policy.decisive_sets]
    if not decisive:
        reason = (
            f"keep the champion: none of the decisive sets ({', '.join(policy.decisive_sets)}) "
            f"is among those compared ({', '.join(comparison.sets)})"
        )
        return Decision(False, "", [reason], [], policy)
    mains = {name: comparison.sets[name].heads[MAIN_HEAD] for name in decisive}
    if comparison.champion is None:
        checks = [_first_model_check(name, head, policy) for name, head in mains.items()]
        promote = all(c.passed for c in checks)
        verdict = (
            f"promote: a first model, {policy.first_model_min_lift:.3f} or more above chance "
            "on every decisive set"
            if promote
            else "do not promote: a first model must be clearly above chance on every decisive set"
        )
        return Decision(
            promote, "first model" if promote else "", [verdict, *_reasons(checks)], checks, policy
        )

    checks = [_lost_class_check(c, mains) for c in comparison.dropped_classes]
    for name, head in mains.items():
        checks.append(_primary_check(name, head, policy))
        checks += _class_checks(name, head, policy)
        checks += _new_class_checks(name, head, policy)
    primary = [c for c in checks if c.kind == "primary" and c.decisive]
    gains = [float(c.figures["change"]) for c in primary]
    better = bool(gains) and all(g >= policy.margin - _EPS for g in gains)
    holds = bool(gains) and all(g >= -policy.margin - _EPS for g in gains)
    new = comparison.new_classes
    unproven = [
        c
        for c in new
        if not any(k.kind == "new class" and k.subject == c and k.decisive for k in checks)
    ]
    failed = [c for c in checks if c.decisive and not c.passed and c.kind != "primary"]
    with_new = bool(new) and not unproven and holds
    promote = not failed and (better or with_new)
    rule = "" if not promote else "better" if better else "new classes"
    verdict = _verdict(
        promote, rule, policy, failed=failed, new=new, unproven=unproven, better=better, holds=holds
    )
    notes = [
        f"new class {c!r} has fewer than {policy.min_class_support} images in every decisive "
        "set: it cannot be vouched for"
        for c in unproven
    ]
    return Decision(promote, rule, [verdict, *_reasons(checks), *notes], checks, policy)


def _verdict(
    promote: bool,
    rule: str,
    policy: PromotionPolicy,
    *,
    failed: list[Check],
    new: list[str],
    unproven: list[str],
    better: bool,
    holds: bool,
) -> str:
    metric = policy.primary_metric
    if rule == "better":
        return (
            f"promote: {metric} on the champion's classes at least {policy.margin:.3f} better "
            "on every decisive set, and no class regressed"
        )
    if rule == "new classes":
        return (
            f"promote: adds {', '.join(new)} (recall at least "
            f"{policy.new_class_min_recall:.2f}), {metric} on the champion's classes within "
            f"{policy.margin:.3f} of the champion's, and no class regressed"
        )
    why = []
    if failed:
        why.append(
            f"{len(failed)} check(s) failed ("
            + ", ".join(
                f"{c.kind} {c.subject!r}" + (f" on {c.set}" if c.set else "") for c in failed
            )
            + ")"
        )
    if not better:
        gap = (
            f"{metric} on the champion's classes is not {policy.margin:.3f} better on every "
            "decisive set"
        )
        if not new:
            why.append(gap + " and the challenger adds no classes")
        elif unproven:
            why.append(gap + f" and the new classes {', '.join(unproven)} lack evaluation images")
        elif not holds:
            why.append(gap + f", nor within {policy.margin:.3f} of the champion's")
    return "keep the champion: " + "; ".join(why)


def _reasons(checks: list[Check]) -> list[str]:
    """Every check's reason; class checks that held or do not decide: one line per set."""
    out: list[str] = []
    for check in checks:
        if check.kind == "class recall" and (check.passed or not check.decisive):
            continue
        out.append(check.reason)
        if check.kind == "primary":
            out.extend(_class_summary(check.set, checks))
    return out


def _class_summary(set_name: str | None, checks: list[Check]) -> list[str]:
    mine = [c for c in checks if c.kind == "class recall" and c.set == set_name]
    held = [c for c in mine if c.decisive and c.passed]
    small = [c for c in mine if not c.decisive]
    out = []
    if held:
        worst = min(held, key=lambda c: float(c.figures["change"]))
        out.append(
            f"{set_name}: {len(held)} shared classes within the recall tolerance "
            f"{worst.figures['tolerance']:.3f} (worst: {worst.subject!r} "
            f"{float(worst.figures['change']):+.3f})"
        )
    if small:
        listed = ", ".join(
            f"{c.subject!r} ({c.figures['images']} images, {float(c.figures['change']):+.3f})"
            for c in small
        )
        out.append(
            f"{set_name}: classes with fewer than {small[0].figures['min_support']} images, "
            f"reported but not decisive: {listed}"
        )
    return out


def _primary_check(name: str, head: HeadComparison, policy: PromotionPolicy) -> Check:
    metric = policy.primary_metric
    old = head.champion.champion_classes if head.champion else None
    new = head.challenger.champion_classes
    if old is None or new is None:
        reason = f"{name}: no images of the champion's classes, so no {metric} to compare"
        return Check(
            kind="primary", set=name, subject=metric, passed=True, decisive=False, reason=reason
        )
    a, b = old.metric(metric), new.metric(metric)
    change = b - a
    better = change >= policy.margin - _EPS
    verdict = "better" if better else "not worse" if change >= -policy.margin - _EPS else "worse"
    return Check(
        kind="primary",
        set=name,
        subject=metric,
        passed=better,
        decisive=True,
        reason=f"{name}: {metric} on the champion's classes ({old.images} images) {a:.4f} -> "
        f"{b:.4f} ({change:+.4f}): {verdict} (better: +{policy.margin:.3f} or more; not worse: "
        f"-{policy.margin:.3f} or more)",
        figures={"champion": a, "challenger": b, "change": change, "images": old.images},
    )


def _class_checks(name: str, head: HeadComparison, policy: PromotionPolicy) -> list[Check]:
    out = []
    for d in head.deltas:
        decisive = d.support >= policy.min_class_support
        passed = -d.recall <= policy.class_tolerance + _EPS
        reason = (
            f"{name}: class {d.label!r} recall {d.champion.recall:.3f} -> "
            f"{d.challenger.recall:.3f} ({d.recall:+.3f}; {d.champion.correct} -> "
            f"{d.challenger.correct} of {d.support} images)"
        )
        if not passed:
            reason += f": drops more than the tolerance {policy.class_tolerance:.3f}"
        figures: dict[str, Figure] = {
            "champion": d.champion.recall,
            "challenger": d.challenger.recall,
            "change": d.recall,
            "images": d.support,
            "tolerance": policy.class_tolerance,
            "min_support": policy.min_class_support,
        }
        out.append(
            Check(
                kind="class recall",
                set=name,
                subject=d.label,
                passed=passed,
                decisive=decisive,
                reason=reason,
                figures=figures,
            )
        )
    return out


def _new_class_checks(name: str, head: HeadComparison, policy: PromotionPolicy) -> list[Check]:
    out = []
    for c in head.new:
        score = head.challenger.per_class[c]
        decisive = score.support >= policy.min_class_support
        passed = score.recall >= policy.new_class_min_recall - _EPS
        reason = (
            f"{name}: new class {c!r} recall {score.recall:.3f} ({score.correct} of "
            f"{score.support} images), precision {score.precision:.3f}: "
            f"{'at least' if passed else 'below'} the floor {policy.new_class_min_recall:.2f}"
        )
        if not decisive:
            reason += f" (fewer than {policy.min_class_support} images: not decisive)"
        figures: dict[str, Figure] = {
            "recall": score.recall,
            "precision": score.precision,
            "images": score.support,
            "floor": policy.new_class_min_recall,
        }
        out.append(
            Check(
                kind="new class",
                set=name,
                subject=c,
                passed=passed,
                decisive=decisive,
                reason=reason,
                figures=figures,
            )
        )
    return out


def _lost_class_check(label: str, mains: Mapping[str, HeadComparison]) -> Check:
    seen = [
        f"champion recall {head.champion.per_class[label].recall:.3f} on {name}"
        for name, head in mains.items()
        if head.champion is not None and label in head.champion.per_class
    ]
    return Check(
        kind="lost class",
        set=None,
        subject=label,
        passed=False,
        decisive=True,
        reason=f"class {label!r} is known to the champion but not to the challenger"
        + (f" ({', '.join(seen)})" if seen else "")
        + ": a regression",
    )


def chance_level(support: Mapping[str, int], metric: Metric) -> float:
    """The better of two guessers that never look at the image: always the commonest class,
    and uniformly at random (expected per-class F1 ``2 p / (1 + k p)`` for a class of share
    ``p`` among ``k``)."""
    total = sum(support.values())
    shares = [n / total for n in support.values()]
    k, top = len(shares), max(shares)
    if metric == "top1":
        return top  # uniform guessing scores 1/k <= the commonest share
    uniform = float(np.mean([2 * p / (1 + k * p) for p in shares]))
    return max(uniform, 2 * top / (1 + top) / k)


def _first_model_check(name: str, head: HeadComparison, policy: PromotionPolicy) -> Check:
    metric = policy.primary_metric
    value = head.challenger.overall.metric(metric)
    chance = chance_level(head.support, metric)
    lift = value - chance
    passed = lift >= policy.first_model_min_lift - _EPS
    return Check(
        kind="first model",
        set=name,
        subject=metric,
        passed=passed,
        decisive=True,
        reason=f"{name}: {metric} {value:.4f} against chance {chance:.4f} "
        f"({len(head.support)} classes, {head.images} images): {lift:+.4f}, "
        f"{'at least' if passed else 'less than'} the {policy.first_model_min_lift:.3f} required",
        figures={"challenger": value, "chance": chance, "lift": lift, "images": head.images},
    )


# --- the report ---------------------------------------------------------------------------


def write_report(comparison: Comparison, decision: Decision, out_dir: Path) -> dict[str, Path]:
    """``comparison.json`` (everything), ``comparison.md`` and a confusion matrix PNG per set
    and model (main head). Returns the paths by name: json, markdown, confusion_<set>_<role>."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "comparison.json", "markdown": out_dir / "comparison.md"}
    for name, result in comparison.sets.items():
        head = result.heads[MAIN_HEAD]
        for role, scores in (("champion", head.champion), ("challenger", head.challenger)):
            if scores is None:
                continue
            key = f"confusion_{_slug(name)}_{role}"
            paths[key] = out_dir / f"{key}.png"
            section = {
                "confusion_matrix": {"labels": scores.confusion_labels, "matrix": scores.confusion}
            }
            plot_confusion(section, paths[key])
    document = {"comparison": asdict(comparison), "decision": asdict(decision)}
    paths["json"].write_text(json.dumps(document, indent=2) + "\n")
    paths["markdown"].write_text(_markdown(comparison, decision, paths))
    return paths


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "set"


def _markdown(comparison: Comparison, decision: Decision, paths: Mapping[str, Path]) -> str:
    policy = decision.policy
    verdict = "promote the challenger" if decision.promote else "keep the champion"
    models = [
        [role, "none (first model)", "", ""]
        if m is None
        else [role, f"`{m.tag}`", m.architecture, f"{len(m.labels)}: {', '.join(m.labels)}"]
        for role, m in (("champion", comparison.champion), ("challenger", comparison.challenger))
    ]
    sets = [
        [
            name,
            "yes" if name in policy.decisive_sets else "no",
            f"`{r.source}`",
            r.images,
            len(r.heads[MAIN_HEAD].shared),
            *(", ".join(getattr(r.heads[MAIN_HEAD], k)) or "-" for k in _KINDS),
        ]
        for name, r in comparison.sets.items()
    ]
    lines = [
        "# Champion vs challenger",
        "",
        f"**Decision: {verdict}**" + (f" ({decision.rule})" if decision.rule else ""),
        "",
        *_table(["role", "model", "architecture", "classes"], models),
        "",
        f"New classes: {', '.join(comparison.new_classes) or 'none'}. "
        f"Classes lost: {', '.join(comparison.dropped_classes) or 'none'}.",
        "",
        "## Evaluation sets",
        "",
        *_table(["set", "decisive", "source", "images", "shared classes", *_KINDS.values()], sets),
        "",
        "## Metrics",
        "",
        f"Decided on `{policy.primary_metric}` over the images of the champion's classes.",
        "",
        *_table(
            ["set", "head", "scope", "images", "metric", "champion", "challenger", "change"],
            _metric_rows(comparison),
        ),
    ]
    for name, r in comparison.sets.items():
        deltas = r.heads[MAIN_HEAD].deltas
        if deltas:
            rows = [
                [d.label, d.support, f"{d.champion.recall:.3f}", f"{d.challenger.recall:.3f}"]
                + [f"{v:+.3f}" for v in (d.recall, d.precision, d.f1)]
                + ["yes" if d.support >= policy.min_class_support else "no"]
                for d in deltas
            ]
            header = ["class", "images", "champion recall", "challenger recall", "change"]
            header += ["precision change", "F1 change", "decisive"]
            lines += ["", f"## Per class, {name} (worst recall change first)", ""]
            lines += _table(header, rows)
    for title, role, kind in (
        ("New classes (the challenger's figures)", "challenger", "new"),
        ("Classes the challenger lost (the champion's figures)", "champion", "dropped"),
    ):
        rows = [
            [name, c, s.support, f"{s.recall:.3f}", f"{s.precision:.3f}", f"{s.f1:.3f}"]
            for name, r in comparison.sets.items()
            if comparison.champion is not None
            and (scores := getattr(r.heads[MAIN_HEAD], role)) is not None
            for c in getattr(r.heads[MAIN_HEAD], kind)
            for s in [scores.per_class[c]]
        ]
        if rows:
            header = ["set", "class", "images", "recall", "precision", "F1"]
            lines += ["", f"## {title}", "", *_table(header, rows)]
    lines += ["", "## Decision", "", *(f"- {r}" for r in decision.reasons), ""]
    lines.append(
        f"Policy: primary metric `{policy.primary_metric}`, margin {policy.margin}, class "
        f"recall tolerance {policy.class_tolerance}, minimum class support "
        f"{policy.min_class_support}, new-class recall floor {policy.new_class_min_recall}, "
        f"first-model lift {policy.first_model_min_lift}, decisive sets "
        f"{', '.join(policy.decisive_sets)}."
    )
    lines += ["", "## Confusion matrices (rows: true, columns: predicted)", ""]
    lines += [
        f"- {key.removeprefix('confusion_')}: [{path.name}]({path.name})"
        for key, path in paths.items()
        if key.startswith("confusion_")
    ]
    return "\n".join(lines) + "\n"


_KINDS = {"new": "new", "dropped": "champion only", "unknown": "unknown to both"}


def _metric_rows(comparison: Comparison) -> list[list[object]]:
    """Per set and head: the champion's classes, then all images where those differ."""
    rows: list[list[object]] = []
    for name, r in comparison.sets.items():
        for head, h in r.heads.items():
            scopes = [("champion's classes", "champion_classes"), ("all images", "overall")]
            for label, scope in scopes:
                new: Scores | None = getattr(h.challenger, scope)
                old: Scores | None = getattr(h.champion, scope) if h.champion else None
                if new is None or (
                    scope == "overall"
                    and h.challenger.champion_classes
                    and (h.challenger.champion_classes.images == new.images)
                ):
                    continue
                for metric in METRICS:
                    a, b = (old.metric(metric) if old else None), new.metric(metric)
                    change = "-" if a is None else f"{b - a:+.4f}"
                    a_text = "-" if a is None else f"{a:.4f}"
                    rows.append([name, head, label, new.images, metric, a_text, f"{b:.4f}", change])
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A Markdown table; a "|" in a label is escaped so it cannot split a cell."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows),
    ]
