"""A release's risk control in sentences, for the command line and for reasons."""

from __future__ import annotations

from app.risk.certificates import RiskControl
from app.risk.control import Certificate


def promise(risk: RiskControl) -> str:
    """What is certified, e.g. "AUTO error <= 5.0% at 90% confidence"."""
    return f"AUTO error <= {risk.max_auto_error:.1%} at {risk.risk_confidence:.0%} confidence"


def uncertified(risk: RiskControl, cert: Certificate) -> str:
    """Why a class (or, in overall scope, the task) has no AUTO predictions."""
    whose = f" predicted {cert.label}" if risk.scope == "class" and cert.label else ""
    if cert.rows_needed:
        more = f"; about {cert.rows_needed} rows{whose} would"
    else:
        more = f"; no threshold kept the error of these rows under {risk.max_auto_error:.1%}"
    return f"{cert.calibration_rows} calibration rows{whose} cannot certify {promise(risk)}{more}"


def describe(risk: RiskControl) -> list[str]:
    """One line for the promise, then one per class."""
    scope = "per predicted class" if risk.scope == "class" else "over all predictions"
    overall = risk.overall
    head = (f"{promise(risk)}, {scope} (score: 1 - top probability); expected routing "
            f"{overall.expected_routing_rate:.1%} of {overall.calibration_rows} calibration rows")
    if risk.cross_fitted:
        head += (f" ({risk.cross_fitted} of them out-of-fold from cross-fitted members: an "
                 "approximate bound)")
    if risk.scope == "overall" and not overall.certified:
        return [head, f"  NOT CERTIFIED: {uncertified(risk, overall)}: every prediction is "
                "reviewed"]
    lines = [head]
    for c in risk.classes:
        if c.certified:
            lines.append(f"  {c.label}: certified, threshold {c.threshold:.3f}, "
                         f"{c.calibration_rows} calibration rows, "
                         f"{c.expected_routing_rate:.1%} routed")
        else:
            lines.append(f"  {c.label}: NOT CERTIFIED: {uncertified(risk, c)}: every "
                         "prediction of it is reviewed")
    return lines


def brief(risk: RiskControl | None) -> str:
    """One line: the promise and each class's threshold, or that it is not certified."""
    if risk is None:
        return "-"
    cells = [f"{c.label} {c.threshold:.3f}" if c.certified else f"{c.label} NOT_CERTIFIED"
             for c in risk.classes]
    return f"{promise(risk)} ({risk.scope} scope): thresholds " + ", ".join(cells)
